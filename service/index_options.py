"""How indexes are chosen, built and searched (index.py builds them): kept apart from FAISS, so
that choosing the number of workers, before FAISS loads and reads its thread count, can ask
which kind a gallery's size calls for."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from service.config import Settings

IVF_MIN_VECTORS = 1024  # fewer: an index asked to be `ivf` is `flat` (too few to train on)
IndexKind = Literal["flat", "hnsw", "ivf"]


@dataclass(frozen=True)
class IndexOptions:
    """How every index is chosen, built and searched; made once from the settings."""

    kind: IndexKind | Literal["auto"] = "auto"
    approximate_min_vectors: int = 100_000  # auto: HNSW from this size
    compressed_min_vectors: int = 2_000_000  # auto: IVF from this size
    hnsw_m: int = 32
    ef_construction: int = 80
    ef_search: int = 192
    ivf_nprobe: int = 32
    brute_force_max_matches: int | None = None  # a fixed limit instead of search_plan's model
    oversample_min_share: float = 0.25

    @classmethod
    def from_settings(cls, settings: Settings) -> IndexOptions:
        return cls(
            kind=settings.index_kind,
            approximate_min_vectors=settings.approximate_index_min_vectors,
            compressed_min_vectors=settings.compressed_index_min_vectors,
            hnsw_m=settings.hnsw_m,
            ef_construction=settings.hnsw_ef_construction,
            ef_search=settings.hnsw_ef_search,
            ivf_nprobe=settings.ivf_nprobe,
            brute_force_max_matches=settings.filter_brute_force_max_matches,
            oversample_min_share=settings.filter_oversample_min_share,
        )

    def kind_for(self, count: int) -> IndexKind:
        """The kind an index of `count` vectors should be."""
        kind = self.kind
        if kind == "auto":
            if count >= self.compressed_min_vectors:
                kind = "ivf"
            else:
                kind = "hnsw" if count >= self.approximate_min_vectors else "flat"
        return "flat" if kind == "ivf" and count < IVF_MIN_VECTORS else kind

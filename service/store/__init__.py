"""The gallery's truth (see base.py): SQLite in the data dir, or a shared PostgreSQL."""

from __future__ import annotations

from service.config import Settings
from service.store.base import (
    CONTENT_TYPES,
    DEFAULT_COLLECTION,
    ApiKeyRecord,
    Change,
    ImageRecord,
    KeyNameTaken,
    LogTruncated,
    ModelMismatch,
    NewImage,
    StorageFullError,
    Store,
    StoreUnavailable,
    UnknownCollection,
)

__all__ = [
    "CONTENT_TYPES",
    "DEFAULT_COLLECTION",
    "ApiKeyRecord",
    "Change",
    "ImageRecord",
    "KeyNameTaken",
    "LogTruncated",
    "ModelMismatch",
    "NewImage",
    "StorageFullError",
    "Store",
    "StoreUnavailable",
    "UnknownCollection",
    "open_store",
]


def open_store(settings: Settings) -> Store:
    """The store the settings name: PostgreSQL with LOOKALIKE_DATABASE_URL, else SQLite."""
    if settings.database_url is not None:
        from service.store.postgres import PostgresStore

        return PostgresStore(
            settings.database_url.get_secret_value(),
            pool_size=settings.database_pool_size,
            pool_timeout_s=settings.database_timeout_s,
        )
    from service.store.sqlite import SQLiteStore

    settings.data_dir.mkdir(parents=True, exist_ok=True)
    return SQLiteStore(settings.data_dir)

"""API keys: who may read, write or administer which collections.

A key is `lk_<id>_<secret>`. The store keeps its id, name, scope, collections, expiry and the
SHA-256 of the whole key, never the key: `python -m service keys create` prints it once. Scopes
nest: `read` (search, embed, list, download), `write` (+ upload and delete images), `admin`
(+ create and delete collections). A key may be limited to some collections; any other
collection looks to it as if it did not exist (404).

Each process keeps the keys in memory (`Keyring`) and reloads them when the store's key version
moves, which a thread checks every `follow_interval_s`: a key created or revoked through any
process or replica is honoured everywhere within about a second, with no restart. Expiry is
checked on every request. `LOOKALIKE_API_KEY` stays valid as a bootstrap admin key.

Until a key exists (the bootstrap key, or one stored, even revoked), the service is open, as it
always was on a laptop. Once one exists, every route that reads or computes needs a key, unless
`PUBLIC_READS` opens reads on purpose.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import secrets
import threading
import time
from dataclasses import dataclass
from typing import Literal, get_args

from service.store import ApiKeyRecord, Store, StoreUnavailable

log = logging.getLogger(__name__)

Scope = Literal["read", "write", "admin"]
SCOPES: tuple[Scope, ...] = get_args(Scope)  # each allows what the ones before it allow
KEY_PATTERN = re.compile(r"^lk_([0-9a-f]{12})_[A-Za-z0-9_-]{43}$")


@dataclass(frozen=True)
class Principal:
    """Who a request acts as: a key's name (for logs), its scope and its collections."""

    name: str
    scope: Scope
    collections: frozenset[str] | None = None  # None: every collection

    def allows(self, needed: Scope) -> bool:
        return SCOPES.index(self.scope) >= SCOPES.index(needed)

    def sees(self, collection: str) -> bool:
        return self.collections is None or collection in self.collections


ANYONE = Principal("anonymous", "admin")  # no key exists: the service is open
PUBLIC_READER = Principal("anonymous", "read")  # PUBLIC_READS, without a key


class AuthError(Exception):
    """A request's key is missing, unknown, revoked or expired; `reason` labels the metric."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def new_key(
    name: str,
    scope: Scope,
    collections: tuple[str, ...] | None = None,
    expires_at: float | None = None,
) -> tuple[str, ApiKeyRecord]:
    """A fresh random key (256 bits of secret) and the record the store keeps of it."""
    key_id = secrets.token_hex(6)
    key = f"lk_{key_id}_{secrets.token_urlsafe(32)}"
    record = ApiKeyRecord(
        key_id, name, hash_key(key), scope, collections, time.time(), expires_at=expires_at
    )
    return key, record


class Keyring:
    def __init__(
        self,
        store: Store,
        *,
        bootstrap_key: str | None = None,
        public_reads: bool = False,
        refresh_interval_s: float = 1.0,
    ) -> None:
        self._store = store
        self._bootstrap = (
            hash_key(bootstrap_key) if bootstrap_key else None
        )  # a digest, as stored keys
        self.public_reads = public_reads
        self._refresh_interval_s = refresh_interval_s
        self._keys: dict[str, ApiKeyRecord] = {}
        self._version = -1
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def required(self) -> bool:
        """Whether requests need a key: one exists, the bootstrap key or a stored one."""
        return self._bootstrap is not None or bool(self._keys)

    # --- following the store ----------------------------------------------------------------
    def start(self) -> None:
        """Load the keys (blocking), then follow their changes in a thread."""
        self.refresh()
        self._thread = threading.Thread(target=self._follow, name="key-follower", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join()

    def refresh(self) -> None:
        """Reload the keys if the store's key version moved."""
        version = self._store.keys_version()
        if version != self._version:
            self._keys = {key.id: key for key in self._store.api_keys()}
            self._version = version

    def _follow(self) -> None:
        while not self._stopping.wait(self._refresh_interval_s):
            try:
                self.refresh()
            except StoreUnavailable:
                pass  # the keys as last loaded stay in force; the gallery logs the outage
            except Exception:
                log.exception("reloading the API keys failed; retrying")

    # --- checking a request's key -----------------------------------------------------------
    def authenticate(self, key: str | None) -> Principal:
        """The principal a request's bearer key (or its absence) stands for; AuthError if none."""
        if not self.required:
            return ANYONE
        if not key:
            if self.public_reads:
                return PUBLIC_READER
            raise AuthError("missing", "this service needs an API key: Authorization: Bearer <key>")
        digest = hash_key(key)  # digests of equal length: the comparisons leak no key length
        if self._bootstrap is not None and hmac.compare_digest(digest, self._bootstrap):
            return Principal("LOOKALIKE_API_KEY", "admin")
        match = KEY_PATTERN.match(key)
        record = self._keys.get(match.group(1)) if match else None
        if record is None or not hmac.compare_digest(digest, record.secret_sha256):
            raise AuthError("unknown", "wrong API key")
        if record.revoked_at is not None:
            raise AuthError("revoked", f"API key {record.name!r} was revoked")
        if record.expires_at is not None and record.expires_at <= time.time():
            raise AuthError("expired", f"API key {record.name!r} has expired")
        collections = None if record.collections is None else frozenset(record.collections)
        return Principal(record.name, record.scope, collections)  # type: ignore[arg-type]

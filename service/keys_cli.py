"""python -m service keys create|list|revoke: manage API keys in the store (service/keys.py).

Every running worker and replica honours a change within about a second, with no restart.
"""

from __future__ import annotations

import argparse
import datetime as dt
import re
import sys
from collections.abc import Callable

from service.config import Settings
from service.keys import SCOPES, new_key
from service.routes.deps import COLLECTION_PATTERN, COLLECTION_RULE
from service.store import ApiKeyRecord, KeyNameTaken, Store, StoreUnavailable, open_store

DURATION = re.compile(r"^(\d+)([mhdw])$")
UNIT_S = {"m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def expiry(text: str) -> float:
    """`30d`, `12h`, `90m`, `2w` from now, or an ISO date or time (UTC unless it says)."""
    if match := DURATION.match(text):
        return dt.datetime.now(dt.UTC).timestamp() + int(match[1]) * UNIT_S[match[2]]
    try:
        when = dt.datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r}: give a duration (30d, 12h, 90m, 2w) or an ISO date (2027-01-31)"
        ) from None
    when = when if when.tzinfo else when.replace(tzinfo=dt.UTC)
    if when.timestamp() <= dt.datetime.now(dt.UTC).timestamp():
        raise argparse.ArgumentTypeError(f"{text!r} is in the past")
    return when.timestamp()


def collection(text: str) -> str:
    if not COLLECTION_PATTERN.match(text):
        raise argparse.ArgumentTypeError(f"{text!r} is not a collection name: {COLLECTION_RULE}")
    return text


def _when(epoch: float | None) -> str:
    if epoch is None:
        return "never"
    return dt.datetime.fromtimestamp(epoch, dt.UTC).strftime("%Y-%m-%d %H:%M UTC")


def _status(key: ApiKeyRecord) -> str:
    if key.revoked_at is not None:
        return f"revoked {_when(key.revoked_at)}"
    if key.expires_at is not None and key.expires_at <= dt.datetime.now(dt.UTC).timestamp():
        return "expired"
    return "active"


def create(store: Store, args: argparse.Namespace) -> int:
    collections = tuple(sorted(set(args.collection))) if args.collection else None
    key, record = new_key(args.name, args.scope, collections, args.expires)
    try:
        store.add_key(record)
    except KeyNameTaken as exc:
        raise SystemExit(f"error: {exc}; choose another --name") from None
    where = ", ".join(collections) if collections else "every collection"
    print(
        f"created key {record.name!r} (id {record.id}): scope {record.scope}, {where}, "
        f"expires {_when(record.expires_at)}. It is shown once; keep it now:",
        file=sys.stderr,
    )
    print(key)
    return 0


def list_keys(store: Store, args: argparse.Namespace) -> int:
    rows = [("ID", "NAME", "SCOPE", "COLLECTIONS", "CREATED", "EXPIRES", "STATUS")]
    for key in store.api_keys():
        collections = ",".join(key.collections) if key.collections else "*"
        created, expires = _when(key.created_at), _when(key.expires_at)
        rows.append((key.id, key.name, key.scope, collections, created, expires, _status(key)))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        )
    return 0


def revoke(store: Store, args: argparse.Namespace) -> int:
    key = store.revoke_key(args.key)
    if key is None:
        raise SystemExit(f"error: no key with the id or name {args.key!r} (see `keys list`)")
    print(f"revoked key {key.name!r} (id {key.id}); every worker refuses it within ~1 s")
    return 0


def main(argv: list[str], settings_factory: Callable[[], Settings]) -> int:
    parser = argparse.ArgumentParser(prog="python -m service keys", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    made = commands.add_parser("create", help="make a key; it is printed once")
    made.add_argument("--name", required=True, help="who or what uses it, e.g. shop-frontend")
    made.add_argument("--scope", required=True, choices=SCOPES, help="read < write < admin")
    made.add_argument(
        "--collection",
        action="append",
        type=collection,
        help="limit the key to this collection (repeat for more; default: every collection)",
    )
    made.add_argument("--expires", type=expiry, help="30d, 12h, 90m, 2w, or an ISO date")
    made.set_defaults(run=create)
    commands.add_parser("list", help="every key, without the keys themselves").set_defaults(
        run=list_keys
    )
    revoked = commands.add_parser("revoke", help="refuse a key from now on, everywhere")
    revoked.add_argument("key", help="its id or name")
    revoked.set_defaults(run=revoke)
    args = parser.parse_args(argv)

    store = open_store(settings_factory())
    try:
        store.migrate()
        return args.run(store, args)
    except StoreUnavailable as exc:
        raise SystemExit(f"error: {exc}") from None
    finally:
        store.close()

"""Key revocation: how long until every worker refuses a key revoked by `keys revoke`.

    python -m reliability.key_revocation [--model models/fashion-mnist] [--rounds 5] [--workers 2]

Each round: `python -m service keys create` makes a read key; once it reads on every worker,
`keys revoke` revokes it and, from the command's return, requests on fresh connections (spread
over the workers by the kernel) poll until 16 in a row are refused. Prints one JSON line per
round and a summary; writes reliability/results/key_revocation.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from testkit.server import Server

IN_A_ROW = 16


def keys_command(server: Server, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "service", "keys", *args],
        env=server.env,
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout.strip()


def seconds_until(url: str, key: str, status: int, timeout_s: float = 30) -> float:
    """Seconds until IN_A_ROW requests on fresh connections in a row answer `status`."""
    started, in_a_row = time.monotonic(), 0
    while in_a_row < IN_A_ROW:
        if time.monotonic() - started > timeout_s:
            raise TimeoutError(f"still not {status} after {timeout_s} s")
        answer = httpx.get(url + "/images", headers={"Authorization": f"Bearer {key}"})
        in_a_row = in_a_row + 1 if answer.status_code == status else 0
    return time.monotonic() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", type=Path, default=Path("models/fashion-mnist"))
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    rounds = []
    with tempfile.TemporaryDirectory() as tmp:
        server = Server(
            args.model,
            Path(tmp) / "data",
            LOOKALIKE_WORKERS=str(args.workers),
            LOOKALIKE_PUBLIC_READS="false",
        )
        server.start()
        try:
            for n in range(args.rounds):
                key = keys_command(server, "create", "--name", f"round-{n}", "--scope", "read")
                accepted_s = seconds_until(server.url, key, 200)
                keys_command(server, "revoke", f"round-{n}")  # returns once it has committed
                refused_s = seconds_until(server.url, key, 401)
                rounds.append(
                    {"round": n, "accepted_s": accepted_s, "refused_everywhere_s": refused_s}
                )
                print(json.dumps(rounds[-1]), flush=True)
        finally:
            server.stop()
    refused = [r["refused_everywhere_s"] for r in rounds]
    summary = {
        "workers": args.workers,
        "rounds": len(rounds),
        "refused_everywhere_s_mean": sum(refused) / len(refused),
        "refused_everywhere_s_max": max(refused),
        "results": rounds,
    }
    print(json.dumps({k: v for k, v in summary.items() if k != "results"}))
    out = Path(__file__).parent / "results" / "key_revocation.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()

"""Single-image /embed of the service with N workers, as a share of one bare FastAPI process.

    python bench/embed_ratio.py [--model models/fashion-mnist] [--workers 2] [--rounds 7]
        [--seconds 5] [--connections 32] [--variant KEY=VALUE ...]

Issue 20's step 3 asks for ≥ 0.6 with 2 workers. The servers all run at once (idle but for the
one under load) and wrk loads each in turn, in `--rounds` rounds of `--seconds` whose order
rotates (bench/serve.py's `interleaved`); a row is the median round. The bare server is
bench/bare_app.py's `/fastapi/embed` (`files: list[UploadFile]`, a dict answer), one process,
answering the service's own response bytes with no decoding and no model. With `--variant`,
a second service with those LOOKALIKE_ settings (or any environment variable) is measured in
the same rounds: an A/B of one setting. Writes RESULTS/embed_ratio.json.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from contextlib import ExitStack
from pathlib import Path

import httpx
from report import ROOT, add_results_argument, table, write
from serve import BareServer, embed_targets, fastapi_path, interleaved, requests, running

from service.fashion_mnist import load_split
from testkit.server import Server

REQUEST = "embed 1 image, multipart"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", type=Path, default=ROOT / "models" / "fashion-mnist")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--seconds", type=float, default=5.0, help="per wrk run")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a second service with this environment too (repeat for several)",
    )
    add_results_argument(parser)
    args = parser.parse_args()
    variant = dict(item.split("=", 1) for item in args.variant)
    bodies = {REQUEST: requests(load_split("test")[0])[REQUEST]}
    wrk_args = argparse.Namespace(connections=args.connections, batch_connections=1)
    with tempfile.TemporaryDirectory() as tmp, ExitStack() as stack:
        folder = Path(tmp)
        services = {
            "service": Server(args.model, folder / "a", LOOKALIKE_WORKERS=str(args.workers))
        }
        if variant:
            services["variant"] = Server(
                args.model, folder / "b", LOOKALIKE_WORKERS=str(args.workers), **variant
            )
        stack.enter_context(running(*services.values()))
        responses = folder / "responses"
        responses.mkdir()
        body, kind, count = bodies[REQUEST]
        answer = httpx.post(
            f"{services['service'].url}/embed", content=body, headers={"Content-Type": kind}
        )
        (responses / f"{count}.json").write_bytes(answer.raise_for_status().content)
        bare = BareServer(responses)
        stack.enter_context(running(bare))
        targets = [
            target
            for label, server in services.items()
            for target in embed_targets(
                label, server.url, lambda _: "/embed", bodies, wrk_args, server.worker_pids()
            )
        ]
        targets += embed_targets(
            "bare FastAPI", bare.url, fastapi_path, bodies, wrk_args, {bare.process.pid}
        )
        rows = interleaved(targets, args.rounds, args.seconds)
    bare_rate = rows[-1]["requests_per_s"]
    for row in rows:
        row["of_bare_fastapi"] = round(row["requests_per_s"] / bare_rate, 3)
    print(
        table(
            rows,
            [
                ("server", "server"),
                ("requests_per_s", "req/s"),
                ("rounds_requests_per_s", "rounds"),
                ("of_bare_fastapi", "÷ bare FastAPI"),
            ],
        )
    )
    config = {**vars(args), "model": str(args.model), "results": str(args.results)}
    write(args.results, "embed_ratio", {"config": config, "variant": variant, "rows": rows})


if __name__ == "__main__":
    sys.exit(main())

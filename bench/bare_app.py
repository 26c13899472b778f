"""The HTTP ceiling: a bare endpoint on the service's framework and server, no decoding, no model.

    python bench/bare_app.py --port 8001 --responses DIR

DIR/<n>.json is the service's own answer for n images, so response sizes match. Two variants:
- POST /minimal/embed reads the request the way the service does — a multipart body parsed into
  its files by Starlette's form parser, or a raw image body read whole — and answers those bytes;
- POST /fastapi/embed (`files: list[UploadFile]`) and /fastapi/embed-raw are the endpoints a
  FastAPI user writes first: they answer the same document as a dict, encoded by FastAPI.
uvicorn is started by the service's own `run_uvicorn`.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from fastapi import FastAPI, Request, Response, UploadFile

from service.__main__ import run_uvicorn


def create_app(responses: dict[int, bytes]) -> FastAPI:
    app = FastAPI()

    @app.get("/readyz")
    async def readyz() -> dict:
        return {"status": "ready"}

    @app.post("/minimal/embed")
    async def minimal(request: Request) -> Response:
        if request.headers.get("content-type", "").startswith("multipart/form-data"):
            form = await request.form(max_files=1024, max_fields=2064)
            count = len([await part.read() for part in form.getlist("files")])  # type: ignore[union-attr]
        else:
            await request.body()
            count = 1
        return Response(responses[count], media_type="application/json")

    documents = {count: json.loads(body) for count, body in responses.items()}

    @app.post("/fastapi/embed")
    async def idiomatic(files: list[UploadFile]) -> dict:
        for part in files:
            await part.read()
        return documents[len(files)]

    @app.post("/fastapi/embed-raw")
    async def idiomatic_raw(request: Request) -> dict:
        await request.body()
        return documents[1]

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--responses", type=Path, required=True)
    args = parser.parse_args()
    responses = {int(p.stem): p.read_bytes() for p in args.responses.glob("*.json")}
    run_uvicorn(create_app(responses), args.host, args.port)


if __name__ == "__main__":
    main()

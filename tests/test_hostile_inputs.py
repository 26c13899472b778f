"""Every hostile or odd file to every endpoint that takes images, against a real server:
the specified status with a JSON error, never a 5xx or a hang, and bounded memory."""

from __future__ import annotations

import base64
from pathlib import Path

import httpx
import pytest
from PIL import Image

from testkit.hostile_corpus import Specimen, encode, specimens
from testkit.images import png_bytes
from testkit.server import AUTH, Server

PEAK_RSS_LIMIT_MB = 512  # the server's high-water mark after the whole corpus


def _calls(specimen: Specimen) -> dict[str, dict]:
    good = png_bytes(1)
    part = ("files", (specimen.name, specimen.data, "image/png"))
    return {
        "embed multipart": {"url": "/embed", "files": [part]},
        "embed raw body": {
            "url": "/embed",
            "content": specimen.data,
            "headers": {"Content-Type": "image/jpeg"},
        },
        "embed base64": {
            "url": "/embed",
            "json": {"images": [base64.b64encode(specimen.data).decode()]},
        },
        "similarity": {"url": "/similarity", "files": [part, ("files", ("good.png", good))]},
        "nearest": {"url": "/nearest", "files": [("file", part[1])], "data": {"k": "3"}},
        "upload": {"url": "/images", "files": [part], "headers": AUTH},
    }


@pytest.mark.parametrize("specimen", specimens(), ids=lambda s: s.name)
def test_every_endpoint_answers_the_specified_status(
    module_server: Server, specimen: Specimen
) -> None:
    with httpx.Client(base_url=module_server.url, timeout=30, headers=AUTH) as client:
        for call, kwargs in _calls(specimen).items():
            response = client.post(**kwargs)
            expected = specimen.status
            if expected == 200 and call == "upload":
                expected = 201
            assert response.status_code == expected, (call, response.text[:300])
            if expected >= 400:
                error = response.json()["error"]
                assert error["code"] and error["message"], call


def test_server_memory_stays_bounded_after_the_corpus(module_server: Server) -> None:
    with httpx.Client(base_url=module_server.url, timeout=30, headers=AUTH) as client:
        for specimen in specimens():
            client.post("/embed", files=[("files", (specimen.name, specimen.data))])
        assert client.get("/healthz").status_code == 200
    status = Path(f"/proc/{module_server.process.pid}/status").read_text()
    peak_kb = int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM")))
    assert peak_kb / 1024 < PEAK_RSS_LIMIT_MB


def test_a_request_over_the_pixel_budget_gets_413_naming_it(module_server: Server) -> None:
    flat = encode(Image.new("L", (6000, 6500)), "PNG")  # 39 M pixels: within the image limit
    files = [("files", (f"flat{i}.png", flat, "image/png")) for i in range(6)]
    with httpx.Client(base_url=module_server.url, timeout=30) as client:
        response = client.post("/embed", files=files)
    assert response.status_code == 413
    message = response.json()["error"]["message"]
    assert "6 images decode to 234000000 pixels together; the budget is 200000000" in message

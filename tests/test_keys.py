"""API keys: once one exists, every data or compute route needs one; scopes, collections,
revocation across workers, PUBLIC_READS, /metrics, and refusals counted without key material."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import openai
import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.keys import new_key
from service.store import open_store
from testkit.app import make_settings, wait_ready
from testkit.images import png_bytes
from testkit.server import API_KEY, AUTH, NO_KEY, running

OPEN_PATHS = {"/healthz", "/readyz"}
PATH_VALUES = {"collection": "default", "name": "default", "image_id": "x", "model_id": "m"}


def _files(*blobs: bytes, field: str = "files") -> list:
    return [(field, (f"{i}.png", b, "image/png")) for i, b in enumerate(blobs)]


@contextmanager
def _app(artifact: Path, data_dir: Path, **overrides: object) -> Iterator[TestClient]:
    settings = make_settings(artifact, data_dir, follow_interval_s=0.2, **overrides)
    with TestClient(create_app(settings)) as client:
        wait_ready(client)
        yield client


def _stored_key(data_dir: Path, artifact: Path, scope: str, **options) -> str:
    """A key made as `keys create` makes it, stored straight into the gallery's store."""
    store = open_store(make_settings(artifact, data_dir))
    try:
        store.migrate()
        key, record = new_key(f"{scope}-{time.monotonic_ns()}", scope, **options)  # type: ignore[arg-type]
        store.add_key(record)
    finally:
        store.close()
    return key


def _bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def _every_route(client: TestClient) -> list[tuple[str, str]]:
    schema = client.get("/openapi.json").json()
    routes = []
    for template, methods in schema["paths"].items():
        path = re.sub(r"\{(\w+)\}", lambda m: PATH_VALUES[m.group(1)], template)
        routes += [(method.upper(), path) for method in methods]
    return routes


def test_with_a_key_configured_every_data_or_compute_route_needs_one(
    artifact: Path, tmp_path: Path
) -> None:
    with _app(artifact, tmp_path / "data", api_key=API_KEY) as client:
        routes = _every_route(client)
        assert len(routes) >= 20
        for method, path in routes:
            answer = client.request(method, path)
            if path in OPEN_PATHS:
                assert answer.status_code == 200, (method, path)
            else:
                assert answer.status_code == 401, (method, path, answer.text)
                assert answer.headers["www-authenticate"] == "Bearer"
        for page in ("/", "/web/app.js", "/docs", "/openapi.json"):
            assert client.get(page).status_code == 200, page
        upload = client.post("/images", files=_files(png_bytes(0)), headers=AUTH)
        assert upload.status_code == 201
        assert client.get("/images", headers=AUTH).status_code == 200


def test_no_key_anywhere_leaves_the_service_open(artifact: Path, tmp_path: Path) -> None:
    with _app(artifact, tmp_path / "data") as client:
        assert client.get("/info").json()["auth_required"] is False
        assert client.post("/images", files=_files(png_bytes(0))).status_code == 201
        assert client.get("/images").status_code == 200


def test_a_read_key_reads_and_cannot_write(artifact: Path, tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    with _app(artifact, data_dir, api_key=API_KEY) as client:
        assert client.post("/images", files=_files(png_bytes(0)), headers=AUTH).status_code == 201
        read = _bearer(_stored_key(data_dir, artifact, "read"))
        time.sleep(0.6)  # the keyring reloads within follow_interval_s
        assert client.get("/images", headers=read).status_code == 200
        assert client.get("/images/0", headers=read).status_code in (200, 404)
        nearest = client.post("/nearest", files=_files(png_bytes(0), field="file"), headers=read)
        assert nearest.status_code == 200
        assert client.post("/embed", files=_files(png_bytes(1)), headers=read).status_code == 200
        assert client.get("/info", headers=read).status_code == 200
        for method, path, kwargs in [
            ("POST", "/images", {"files": _files(png_bytes(2))}),
            ("DELETE", "/images/x", {}),
            ("PUT", "/collections/shoes", {}),
            ("DELETE", "/collections/shoes", {}),
        ]:
            refused = client.request(method, path, headers=read, **kwargs)
            assert refused.status_code == 403, (method, path)
            assert refused.json()["error"]["code"] == "forbidden"
            assert "scope" in refused.json()["error"]["message"]
        write = _bearer(_stored_key(data_dir, artifact, "write"))
        time.sleep(0.6)
        assert client.post("/images", files=_files(png_bytes(3)), headers=write).status_code == 201
        assert client.put("/collections/shoes", headers=write).status_code == 403
        assert client.put("/collections/shoes", headers=AUTH).status_code == 201


def test_a_collection_scoped_key_sees_only_its_collections(artifact: Path, tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    with _app(artifact, data_dir, api_key=API_KEY) as client:
        for name in ("shoes", "hats"):
            assert client.put(f"/collections/{name}", headers=AUTH).status_code == 201
            upload = client.post(
                f"/collections/{name}/images",
                files=_files(png_bytes(0)),
                data={"ids": "a"},
                headers=AUTH,
            )
            assert upload.status_code == 201
        shoes = _bearer(_stored_key(data_dir, artifact, "write", collections=("shoes",)))
        time.sleep(0.6)
        listed = client.get("/collections", headers=shoes).json()["items"]
        assert [item["name"] for item in listed] == ["shoes"]
        assert client.get("/collections/shoes/images/a", headers=shoes).status_code == 200
        for other in ("hats", "default", "nowhere"):
            for method, path, kwargs in [
                ("GET", f"/collections/{other}", {}),
                ("GET", f"/collections/{other}/images", {}),
                ("GET", f"/collections/{other}/images/a", {}),
                ("GET", f"/collections/{other}/images/a/content", {}),
                ("POST", f"/collections/{other}/nearest", {"json": {"id": "a"}}),
                ("POST", f"/collections/{other}/images", {"files": _files(png_bytes(1))}),
                ("DELETE", f"/collections/{other}/images/a", {}),
            ]:
                answer = client.request(method, path, headers=shoes, **kwargs)
                assert answer.status_code == 404, (method, path, answer.text)
                assert answer.json()["error"]["message"] == f"no collection named {other!r}"
        assert client.get("/images", headers=shoes).status_code == 404  # `default` too
        assert client.get("/collections/hats/images/a", headers=AUTH).status_code == 200


def test_revoked_and_expired_keys_are_refused_and_refusals_are_counted_without_key_material(
    artifact: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    data_dir = tmp_path / "data"
    with _app(artifact, data_dir, api_key=API_KEY) as client:
        short = _stored_key(data_dir, artifact, "read", expires_at=time.time() + 1.5)
        revoked = _stored_key(data_dir, artifact, "read")
        time.sleep(0.6)
        assert client.get("/images", headers=_bearer(short)).status_code == 200
        assert client.get("/images", headers=_bearer(revoked)).status_code == 200
        store = open_store(make_settings(artifact, data_dir))
        store.revoke_key(revoked[3:15])
        store.close()
        time.sleep(1.6)
        for key, why in [(short, "has expired"), (revoked, "was revoked")]:
            answer = client.get("/images", headers=_bearer(key))
            assert answer.status_code == 401 and why in answer.json()["error"]["message"]
        wrong = revoked[:-4] + "AAAA"
        assert client.get("/images", headers=_bearer(wrong)).status_code == 401
        assert client.get("/images", headers=NO_KEY).status_code == 401
        metrics = client.get("/metrics", headers=AUTH).text
        for reason in ("expired", "revoked", "unknown", "missing"):
            assert f'lookalike_auth_failures_total{{reason="{reason}"}} 1.0' in metrics
        assert "request refused" in caplog.text
        for key in (short, revoked, wrong):
            assert key[16:] not in caplog.text  # the secret part never reaches the log


def test_public_reads_open_reads_only_and_metrics_have_their_own_setting(
    artifact: Path, tmp_path: Path
) -> None:
    with _app(artifact, tmp_path / "data", api_key=API_KEY, public_reads=True) as client:
        info = client.get("/info").json()
        assert info["auth_required"] is True and info["public_reads"] is True
        assert client.get("/images").status_code == 200
        assert client.post("/embed", files=_files(png_bytes(0))).status_code == 200
        assert client.post("/images", files=_files(png_bytes(0))).status_code == 401
        assert client.put("/collections/x").status_code == 401
        assert client.get("/images", headers=_bearer("lk_wrong")).status_code == 401
        assert client.get("/metrics").status_code == 200  # a read, public here
    with _app(artifact, tmp_path / "data2", api_key=API_KEY, public_metrics=True) as client:
        assert client.get("/metrics").status_code == 200
        assert client.get("/images").status_code == 401


def _answers(url: str, key: str, count: int = 24) -> set[int]:
    """Statuses over fresh connections, so that both workers answer some."""
    return {
        httpx.get(url + "/images", headers=_bearer(key), timeout=10).status_code
        for _ in range(count)
    }


def test_keys_made_and_revoked_by_the_command_reach_every_worker_within_2_s(
    artifact: Path, tmp_path: Path
) -> None:
    private = {"LOOKALIKE_WORKERS": "2", "LOOKALIKE_PUBLIC_READS": "false"}
    with running(artifact, tmp_path / "data", **private) as server:
        assert len(server.worker_pids()) == 2
        key = server.run_command("keys", "create", "--name", "app", "--scope", "read")
        assert re.fullmatch(r"lk_[0-9a-f]{12}_[A-Za-z0-9_-]{43}", key)
        time.sleep(2)
        assert _answers(server.url, key) == {200}
        listed = server.run_command("keys", "list")
        assert "app" in listed and key[16:] not in listed
        server.run_command("keys", "revoke", "app")
        revoked_at = time.monotonic()
        while _answers(server.url, key, count=8) != {401}:
            assert time.monotonic() - revoked_at < 2.0, "a worker still takes the revoked key"
        assert _answers(server.url, key) == {401}
        with openai.OpenAI(base_url=server.url + "/v1", api_key=API_KEY, max_retries=0) as sdk:
            assert sdk.models.list().data[0].id
        revoked_sdk = openai.OpenAI(base_url=server.url + "/v1", api_key=key, max_retries=0)
        with revoked_sdk, pytest.raises(openai.AuthenticationError):
            revoked_sdk.models.list()

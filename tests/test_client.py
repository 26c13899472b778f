"""The Python client (client/, import name `lookalike`) against real servers.

The round trips live in testkit/client_scenarios.py, so that the slow test here can run them
again from a fresh venv that has nothing but `pip install ./client`.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TypeVar

import httpx
import lookalike
import numpy as np
import pytest
from lookalike import (
    AsyncClient,
    Client,
    CollectionInfo,
    Conflict,
    ConnectionFailed,
    CreatedCollection,
    Forbidden,
    Invalid,
    NotFound,
    Overloaded,
    TooLarge,
    Unauthorized,
    Unsupported,
    _calls,
)
from PIL import Image

from testkit import client_scenarios
from testkit.images import png_bytes
from testkit.proxy import LOSE, Action, Proxy, Script
from testkit.server import API_KEY, AUTH, Server, free_port

ROOT = Path(__file__).resolve().parent.parent
T = TypeVar("T")
HEAVY = {"numpy", "onnxruntime", "faiss-cpu", "fastapi", "torch", "starlette", "pillow"}


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("images")
    for i in range(8):
        (folder / f"img{i}.png").write_bytes(png_bytes(100 + i))
    return folder


@pytest.fixture(scope="module")
def tiny_queue_server(artifact: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A real server whose model queue holds one image: concurrent calls get 503s."""
    running = Server(
        artifact, tmp_path_factory.mktemp("tiny") / "data", LOOKALIKE_QUEUE_MAX_IMAGES="1"
    )
    running.start()
    yield running
    running.stop()


def test_client_round_trip(module_server: Server, image_dir: Path) -> None:
    client_scenarios.sync_round_trip(module_server.url, API_KEY, image_dir)


def test_async_client_round_trip(module_server: Server, image_dir: Path) -> None:
    asyncio.run(client_scenarios.async_round_trip(module_server.url, API_KEY, image_dir))


def _embed_503s(server: Server) -> float:
    metrics = httpx.get(server.url + "/metrics").text
    found = re.findall(
        r'lookalike_requests_total\{method="POST",route="/embed",status="503"\} (\S+)', metrics
    )
    return sum(float(n) for n in found)


def test_32_threads_of_embed_calls_all_succeed_against_a_one_image_queue(
    tiny_queue_server: Server, image_dir: Path
) -> None:
    assert client_scenarios.many_threads(tiny_queue_server.url, image_dir) == 320
    assert _embed_503s(tiny_queue_server) > 0  # the server did refuse: the retries carried them


def test_images_may_be_bytes_paths_file_objects_or_pil_images(
    module_server: Server, image_dir: Path
) -> None:
    path = image_dir / "img0.png"
    with Client(module_server.url) as client, open(path, "rb") as file:
        kinds = [path.read_bytes(), str(path), path, file, Image.open(path)]
        embedded = client.embed(kinds)
        single = client.embed(path)  # one image, not a list
    assert embedded.numpy().shape == (5, embedded.dim)
    np.testing.assert_allclose(embedded.numpy(), embedded.numpy()[:1].repeat(5, 0), atol=1e-6)
    np.testing.assert_allclose(single.numpy(), embedded.numpy()[:1], atol=1e-6)


def test_similarity_and_dimensions(module_server: Server, image_dir: Path) -> None:
    paths = sorted(image_dir.glob("*.png"))[:3]
    with Client(module_server.url) as client:
        scores = client.similarity(paths).numpy()
        full = client.embed(paths).numpy()
        short = client.embed(paths, dimensions=8)
    assert scores.shape == (3, 3)
    np.testing.assert_allclose(np.diag(scores), 1.0, atol=1e-6)
    prefix = full[:, :8] / np.linalg.norm(full[:, :8], axis=1, keepdims=True)
    assert short.dim == 8
    np.testing.assert_allclose(short.numpy(), prefix, atol=1e-5)


def test_upload_goes_in_batches_and_reports_progress(
    module_server: Server, image_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    paths = sorted(image_dir.glob("*.png"))[:5]
    seen: list[tuple[int, int]] = []
    with Client(module_server.url, api_key=API_KEY) as client:
        items = client.upload(paths, batch_size=2, progress=lambda *p: seen.append(p))
        client.upload(paths[:3], batch_size=2, progress=True)
        info = client.info()
        dim = client.embed(paths[0]).dim
    assert seen == [(2, 5), (4, 5), (5, 5)]
    assert len(items) == 5 == len({item.id for item in items})  # ids made by the service
    bar = capsys.readouterr().err
    assert "2/3" in bar and bar.endswith("3/3\n")
    assert info.auth_required and info.model.dim == dim
    (kept,) = info.kept_models  # the serving model, with a vector of every stored image
    assert kept.serving and kept.version == info.model.version and kept.vectors == kept.images


def _huge_png() -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (7000, 7000)).save(buffer, format="PNG")  # 49 M pixels: over the limit
    return buffer.getvalue()


def _ico() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), "red").save(buffer, format="ICO")
    return buffer.getvalue()


def test_errors_mirror_the_http_errors(module_server: Server, image_dir: Path) -> None:
    path = image_dir / "img0.png"
    wrong = Client(module_server.url, api_key="wrong-key")
    with wrong, pytest.raises(Unauthorized) as unauthorized:
        wrong.upload([path], ids=["nope"])
    with Client(module_server.url, api_key=API_KEY) as client:
        with pytest.raises(Invalid) as invalid:
            client.embed([path, b"not an image"])
        with pytest.raises(Unsupported) as unsupported:
            client.embed(_ico())
        with pytest.raises(TooLarge) as too_large:
            client.embed(_huge_png())
        with pytest.raises(NotFound) as not_found:
            client.nearest(id="nobody")
        with pytest.raises(Invalid) as short_vector:
            client.nearest(vector=[1.0, 0.0])
    assert (unauthorized.value.status, unauthorized.value.code) == (401, "unauthorized")
    assert (invalid.value.status, invalid.value.code) == (422, "invalid_image")
    assert "files[1] (image-1)" in invalid.value.message
    assert (unsupported.value.status, too_large.value.status) == (415, 413)
    assert (not_found.value.status, not_found.value.code) == (404, "not_found")
    assert "full-size vectors only" in short_vector.value.message
    assert all(
        isinstance(e.value, lookalike.LookalikeError)
        for e in (unauthorized, invalid, unsupported, too_large, not_found)
    )


def _name(tag: str) -> str:
    return f"{tag}-{uuid.uuid4().hex[:8]}"  # collections outlive a test on the module's server


BOOTS = {"label": "boot"}
CHEAP = {"price": {"$lt": 20}}
BAD_FILTER = {"$or": [{"label": "boot"}, {"price": {"$gt": "cheap"}}]}
BAD_PART = "filter.$or[1].price.$gt must be a number"


def _shop(seed: int) -> tuple[list[str], list[bytes], list[dict[str, object]]]:
    """Six images: a boot, a sandal, a boot… priced 5, 15, 25, …"""
    ids = [f"item-{i}" for i in range(6)]
    images = [png_bytes(seed + i) for i in range(6)]
    metadata: list[dict[str, object]] = [
        {"label": "boot" if i % 2 == 0 else "sandal", "price": 5 + 10 * i} for i in range(6)
    ]
    return ids, images, metadata


def test_collections_keep_the_same_ids_apart_and_are_managed(module_server: Server) -> None:
    red, blue = _name("red"), _name("blue")
    with Client(module_server.url, api_key=API_KEY) as client:
        made = client.create_collection(red)
        assert made == CreatedCollection(name=red, count=0, index_kind="flat", created=True)
        client.create_collection(blue)
        reds, blues = client.collection(red), client.collection(blue)
        assert reds.name == red and repr(blues) == f"Collection({blue!r})"
        reds.upload([png_bytes(1), png_bytes(2)], ids=["a", "b"], metadata=[{"c": "red"}, {}])
        uploaded = blues.upload([png_bytes(3)], ids=["a"], metadata=[{"c": "blue"}])
        assert [(u.id, u.created) for u in uploaded] == [("a", True)]  # not a replacement
        again = client.create_collection(red)
        assert (again.count, again.created) == (2, False)  # exists: left as it is
        red_a, blue_a = reds.get("a"), blues.get("a")
        assert (red_a.collection, red_a.metadata) == (red, {"c": "red"})
        assert (blue_a.collection, blue_a.metadata) == (blue, {"c": "blue"})
        assert reds.content("a") == png_bytes(1) and blues.content("a") == png_bytes(3)
        assert [h.id for h in blues.nearest(png_bytes(1), k=10)] == ["a"]
        assert [h.id for h in reds.nearest(id="a", k=10)] == ["a", "b"]  # red's own images only
        with pytest.raises(NotFound):
            blues.get("b")
        with pytest.raises(NotFound):
            client.get("a")  # `default` has no "a"
        blues.delete("a")
        assert [i.id for i in reds.images(page_size=1)] == ["a", "b"]
        assert list(blues.images()) == []
        listed = {c.name: c.count for c in client.collections()}
        assert listed[red] == 2 and listed[blue] == 0 and "default" in listed
        assert client.get_collection(red) == CollectionInfo(red, 2, "flat")
        client.delete_collection(blue)
        assert blue not in {c.name for c in client.collections()}
        gone = _name("gone")
        for call in (
            lambda: client.get_collection(blue),
            lambda: client.delete_collection(blue),
            lambda: client.collection(gone).nearest(id="a"),
            lambda: client.collection(gone).upload([png_bytes(1)], ids=["a"]),
            lambda: list(client.collection(gone).images()),
        ):
            with pytest.raises(NotFound) as not_found:
                call()
            assert not_found.value.status == 404 and "no collection named" in str(not_found.value)
        with pytest.raises(Conflict) as conflict:
            client.delete_collection("default")
        with pytest.raises(Invalid) as bad_name:
            client.create_collection("no spaces")
        for dots in (lambda: list(client.collection("..").images()), lambda: client.get("..")):
            with pytest.raises((Invalid, NotFound)):  # not `default`'s list, nor the web page
                dots()
    assert conflict.value.status == 409 and "always exists" in conflict.value.message
    assert bad_name.value.status == 422 and "A–Z a–z 0–9 _ -" in bad_name.value.message


def test_filters_narrow_nearest_and_the_image_list(module_server: Server) -> None:
    ids, images, metadata = _shop(seed=40)
    run = _name("run")  # the default collection is shared: this run's images carry a tag
    with Client(module_server.url, api_key=API_KEY) as client:
        shop = client.collection(_name("shop"))
        client.create_collection(shop.name)
        shop.upload(images, ids=ids, metadata=metadata)
        client.upload(images[:2], ids=[f"{run}-{i}" for i in range(2)], metadata=[{"run": run}] * 2)
        boots = {i for i, m in zip(ids, metadata, strict=True) if m["label"] == "boot"}
        embedded = client.embed(images[1])
        vector = embedded.embeddings[0]
        for hits in (
            shop.nearest(images[1], k=10, filter=BOOTS),  # multipart: filter as a JSON field
            shop.nearest(id=ids[1], k=10, filter=BOOTS),
            shop.nearest(vector=vector, k=10, filter=BOOTS),
            shop.nearest(vector=vector, k=10, filter=BOOTS, model=embedded.model),
        ):
            assert {h.id for h in hits} == boots and all(
                h.metadata["label"] == "boot" for h in hits
            )
        cheap = shop.nearest(id=ids[0], k=10, filter={"$and": [BOOTS, CHEAP]})
        assert [h.id for h in cheap] == ["item-0"]
        assert {h.id for h in client.nearest(id=f"{run}-0", filter={"run": run})} == {
            f"{run}-0",
            f"{run}-1",
        }
        assert [i.id for i in shop.images(page_size=2, filter=CHEAP)] == ["item-0", "item-1"]
        assert [i.id for i in client.images(filter={"run": run})] == [f"{run}-0", f"{run}-1"]
        errors = []
        for call in (
            lambda: shop.nearest(id=ids[0], filter=BAD_FILTER),
            lambda: shop.nearest(images[0], filter=BAD_FILTER),
            lambda: list(shop.images(filter=BAD_FILTER)),
        ):
            with pytest.raises(Invalid) as invalid:
                call()
            errors.append(invalid.value)
        with pytest.raises(Conflict) as conflict:
            shop.nearest(vector=vector, model="0" * 64)
        assert conflict.value.code == "model_mismatch" and embedded.model in conflict.value.message
    assert all((e.status, e.code) == (422, "invalid_filter") for e in errors)
    assert all(BAD_PART in e.message for e in errors), [e.message for e in errors]


async def _async_collections_and_filters(url: str) -> None:
    ids, images, metadata = _shop(seed=60)
    first, second = _name("first"), _name("second")
    async with AsyncClient(url, api_key=API_KEY) as client:
        made = await asyncio.gather(
            client.create_collection(first), client.create_collection(second)
        )
        assert [(m.name, m.created) for m in made] == [(first, True), (second, True)]
        one, two = client.collection(first), client.collection(second)
        assert repr(one) == f"AsyncCollection({first!r})"
        await one.upload(images, ids=ids, metadata=metadata)
        await two.upload(images[3:4], ids=ids[:1], metadata=[{"label": "other"}])
        assert (await one.get(ids[0])).metadata == metadata[0]
        assert (await two.get(ids[0])).metadata == {"label": "other"}
        assert await two.content(ids[0]) == images[3]
        assert [h.id for h in await two.nearest(images[0], k=10)] == [ids[0]]
        boots = await one.nearest(id=ids[1], k=10, filter=BOOTS)
        assert {h.id for h in boots} == {"item-0", "item-2", "item-4"}
        assert [i.id async for i in one.images(page_size=1, filter=CHEAP)] == ids[:2]
        counts = {c.name: c.count for c in await client.collections()}
        assert (counts[first], counts[second]) == (6, 1)
        assert (await client.get_collection(first)).count == 6
        await two.delete(ids[0])
        await client.delete_collection(second)
        with pytest.raises(NotFound):
            await client.get_collection(second)
        with pytest.raises(Conflict):
            await client.delete_collection("default")
        with pytest.raises(Invalid) as invalid:
            await one.nearest(images[0], filter=BAD_FILTER)
    assert invalid.value.code == "invalid_filter" and BAD_PART in invalid.value.message


def test_async_collections_and_filters(module_server: Server) -> None:
    asyncio.run(_async_collections_and_filters(module_server.url))


class AlwaysBusy(BaseHTTPRequestHandler):
    """A stand-in service that answers every request 503 overloaded, Retry-After 0.2 s."""

    requests = 0

    def _busy(self) -> None:
        AlwaysBusy.requests += 1
        self.rfile.read(int(self.headers.get("content-length", 0)))
        body = json.dumps({"error": {"code": "overloaded", "message": "busy"}}).encode()
        self.send_response(503)
        self.send_header("Retry-After", "0.2")
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = _busy

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def always_busy() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), AlwaysBusy)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    AlwaysBusy.requests = 0
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def _tries(call: object) -> tuple[int, float, BaseException]:
    before, start = AlwaysBusy.requests, time.monotonic()
    with pytest.raises(lookalike.LookalikeError) as raised:
        call()  # type: ignore[operator]
    return AlwaysBusy.requests - before, time.monotonic() - start, raised.value


def test_503s_are_retried_after_retry_after_and_uploads_only_when_they_name_ids(
    always_busy: str, image_dir: Path
) -> None:
    path = image_dir / "img0.png"
    with Client(always_busy, max_retries=2) as client:
        embed = _tries(lambda: client.embed(path))
        named = _tries(lambda: client.upload([path], ids=["a"]))
        unnamed = _tries(lambda: client.upload([path]))
    assert embed[0] == named[0] == 3 and unnamed[0] == 1  # 1 + max_retries, or 1
    assert embed[1] >= 0.4 and named[1] >= 0.4  # two waits of at least Retry-After
    assert isinstance(unnamed[2], Overloaded) and unnamed[2].status == 503


def test_connection_failures_are_retried_then_raised() -> None:
    closed = f"http://127.0.0.1:{free_port()}"
    start = time.monotonic()
    with Client(closed, max_retries=2) as client, pytest.raises(ConnectionFailed) as raised:
        client.info()
    assert time.monotonic() - start >= 0.5 + 1.0  # backoff 0.5 s, then 1 s
    assert raised.value.status is None and raised.value.code == "connection_error"


BUSY = (503, {"error": {"code": "unavailable", "message": "the database is away"}})


def _first(method: str, action: Action) -> Script:
    """A proxy script: the first `method` request gets `action`; the others are forwarded."""
    left = [action]
    return lambda m, path, headers: left.pop() if m == method and left else None


def test_a_retry_after_a_lost_answer_reads_already_done_as_done(module_server: Server) -> None:
    name = _name("lost")
    with Client(module_server.url, api_key=API_KEY) as client:
        assert client.create_collection(name).created
        client.collection(name).upload([png_bytes(1), png_bytes(2)], ids=["a", "b"])
        with pytest.raises(NotFound):
            client.collection(name).delete("nobody")  # answered at once: it was never there

    def through(method: str, action: Action, call: Callable[[Client], T]) -> T:
        with (
            Proxy(module_server.url, _first(method, action)) as proxy,
            Client(proxy.url, api_key=API_KEY) as client,
        ):
            result = call(client)
        assert [seen.method for seen in proxy.seen] == [method, method]  # one retry
        return result

    # The lost DELETE deleted "a": its retry's 404 says so, and is no error.
    through("DELETE", LOSE, lambda c: c.collection(name).delete("a"))
    # A 503 is an answer (not done): a 404 after it is the image's own.
    with pytest.raises(NotFound):
        through("DELETE", BUSY, lambda c: c.collection(name).delete("nobody"))
    # The lost PUT created the collection: its retry's 200 is read as the 201 it had.
    made = _name("made")
    assert through("PUT", LOSE, lambda c: c.create_collection(made)).created
    assert not through("PUT", BUSY, lambda c: c.create_collection(made)).created
    through("DELETE", LOSE, lambda c: c.delete_collection(made))

    with Client(module_server.url, api_key=API_KEY) as client:
        assert [image.id for image in client.collection(name).images()] == ["b"]
        assert made not in {c.name for c in client.collections()}


async def _async_lost_answers(url: str) -> tuple[CreatedCollection, list[str]]:
    name = _name("lost")
    with Proxy(url, _first("PUT", LOSE)) as proxy:
        async with AsyncClient(proxy.url, api_key=API_KEY) as client:
            made = await client.create_collection(name)
            await client.collection(name).upload([png_bytes(3)], ids=["a"])
            proxy.script = _first("DELETE", LOSE)
            await client.collection(name).delete("a")
            proxy.script = _first("DELETE", LOSE)
            await client.delete_collection(name)
    return made, [f"{seen.method} {seen.path}" for seen in proxy.seen]


def test_async_retries_after_a_lost_answer_read_already_done_as_done(
    module_server: Server,
) -> None:
    made, seen = asyncio.run(_async_lost_answers(module_server.url))
    assert made.created and made.count == 0
    at = f"/collections/{made.name}"
    put, post, delete = f"PUT {at}", f"POST {at}/images", f"DELETE {at}"
    # Each lost answer: the attempt, then its retry.
    assert seen == [put, put, post, f"{delete}/images/a", f"{delete}/images/a", delete, delete]


def test_only_an_attempt_that_may_have_reached_the_service_counts_as_lost() -> None:
    call = _calls.delete("default", "a")
    for failure, lost in ((httpx.ConnectError("refused"), False), (httpx.ReadError("reset"), True)):
        retries = _calls.Retries(1, call)
        assert retries.delay(failure) is not None and retries.lost is lost
    not_found = httpx.Response(404, request=httpx.Request("DELETE", "http://x/images/a"))
    assert call.result(not_found, lost=True) is None
    with pytest.raises(NotFound):
        call.result(not_found)


def _every_call(client: Client, image: bytes) -> int:
    """Each method of Client once (each one request); returns how many."""
    name = _name("keyed")
    shelf = client.collection(name)
    calls: list[Callable[[], object]] = [
        client.ready,
        client.info,
        lambda: client.embed(image),
        lambda: client.similarity([image, image]),
        lambda: client.create_collection(name),
        client.collections,
        lambda: client.get_collection(name),
        lambda: shelf.upload([image], ids=["a"]),
        lambda: shelf.nearest(id="a"),
        lambda: shelf.get("a"),
        lambda: shelf.content("a"),
        lambda: list(shelf.images()),
        lambda: shelf.delete("a"),
        lambda: client.delete_collection(name),
    ]
    for call in calls:
        call()
    return len(calls)


def test_the_api_key_goes_with_every_request(
    module_server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    with Proxy(module_server.url) as proxy:
        with Client(proxy.url, api_key=API_KEY) as client:
            made = _every_call(client, png_bytes(5))
        monkeypatch.setenv("LOOKALIKE_API_KEY", API_KEY)  # a wrong one would get a 401
        with Client(proxy.url) as client:
            client.info()
    assert len(proxy.seen) == made + 1
    assert {seen.method for seen in proxy.seen} == {"GET", "POST", "PUT", "DELETE"}
    assert [seen.authorization for seen in proxy.seen] == [f"Bearer {API_KEY}"] * (made + 1)


def test_what_a_key_may_not_do_is_forbidden_and_info_says_whether_reads_are_public(
    module_server: Server,
) -> None:
    served = httpx.get(module_server.url + "/info", headers=AUTH).json()

    def read_only(method: str, path: str, headers: object) -> Action:
        if path == "/info":
            return 200, {**served, "public_reads": False}
        if method != "GET":
            return 403, {"error": {"code": "forbidden", "message": "this key may only read"}}
        return None

    with Proxy(module_server.url, read_only) as proxy, Client(proxy.url, api_key="r") as client:
        info = client.info()
        with pytest.raises(Forbidden) as forbidden:
            client.upload([png_bytes(6)], ids=["a"])
    assert info.auth_required and not info.public_reads
    served.pop("public_reads", None)  # a service older than read keys: its reads are open
    assert _calls.info().parse(httpx.Response(200, json=served)).public_reads
    assert (forbidden.value.status, forbidden.value.code) == (403, "forbidden")
    assert forbidden.value.message == "this key may only read"


@pytest.mark.slow
def test_pip_install_client_alone_in_a_fresh_venv_runs_every_scenario(
    tmp_path: Path, module_server: Server, tiny_queue_server: Server
) -> None:
    venv = tmp_path / "venv"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, env=env)
    python = str(venv / "bin" / "python")
    source = tmp_path / "client"  # pip builds in the tree it is given: a copy keeps ours clean
    shutil.copytree(ROOT / "client", source, ignore=shutil.ignore_patterns("build", "*.egg-info"))
    install = subprocess.run(
        [python, "-m", "pip", "install", "-q", str(source)],
        capture_output=True,
        text=True,
        env=env,
    )
    assert install.returncode == 0, install.stderr[-3000:]
    listed = subprocess.run(
        [python, "-m", "pip", "list", "--format=json"], capture_output=True, text=True, env=env
    )
    installed = {p["name"].lower() for p in json.loads(listed.stdout)}
    assert "lookalike-client" in installed and "httpx" in installed
    assert installed.isdisjoint(HEAVY), installed & HEAVY
    images = tmp_path / "images"
    images.mkdir()
    for i in range(8):
        (images / f"img{i}.png").write_bytes(png_bytes(300 + i))
    scenarios = [str(ROOT / "testkit" / "client_scenarios.py"), module_server.url, API_KEY]
    done = subprocess.run(
        [python, *scenarios, str(images), tiny_queue_server.url],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split() == ["ok", "sync", "ok", "async", "ok", "threads"]

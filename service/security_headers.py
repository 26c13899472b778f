"""Security headers on every response: `X-Content-Type-Options: nosniff`, so that a browser
never runs an upload or an error body as something other than its Content-Type; and a
Content-Security-Policy that lets a page run only the service's own script and style files (no
inline script, style or event handlers) and show blob: images, as the web page does.

FastAPI's /docs and /redoc pages load Swagger UI and ReDoc from a CDN with an inline script, so
they go without the policy. Not covered: the 500 of an unhandled exception, which Starlette's
outermost ServerErrorMiddleware writes past every added middleware (a fixed JSON body)."""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
    "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
WITHOUT_POLICY = frozenset({"/docs", "/docs/oauth2-redirect", "/redoc"})


class SecurityHeadersMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        added = [(b"x-content-type-options", b"nosniff")]
        if scope["path"] not in WITHOUT_POLICY:
            added.append((b"content-security-policy", CONTENT_SECURITY_POLICY.encode()))

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", ()), *added]}
            await send(message)

        await self.app(scope, receive, send_with_headers)

"""Every request passes here before any page: the token, the Host header and the origin of writes.

* With a token (``--token``, or the one generated for any bind other than 127.0.0.1/localhost/::1), every
  request must carry it: ``?token=`` (the URL printed at start; it sets a cookie so links and live updates
  need nothing more), the ``kohyawan_token`` cookie, or ``Authorization: Bearer``. Without it: 401.
* Without a token (127.0.0.1 only), the Host header must name a local host: another web site cannot reach
  the server through DNS rebinding.
* A POST whose ``Origin`` is another site is refused (403): a web page cannot promote a version or stop a
  run through the user's browser.

Every answer carries a Content-Security-Policy that allows only the server's own scripts and styles.
"""

from __future__ import annotations

import hmac
from http.cookies import SimpleCookie
from urllib.parse import parse_qs, urlsplit

from kohyawan.ui.config import LOCAL_HOSTS, UiConfig

COOKIE = "kohyawan_token"
CSP = ("default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
       "media-src 'self'; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'")


def _headers(scope) -> dict[str, str]:
    return {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}


def _host_name(host: str) -> str:
    if host.startswith("["):
        return host[1:host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def presented_token(scope, headers: dict[str, str]) -> tuple[str | None, bool]:
    """(token, came in the query string)."""
    query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
    if query.get("token"):
        return query["token"][0], True
    auth = headers.get("authorization", "")
    if auth.lower().startswith("bearer "):
        return auth[7:].strip(), False
    cookie = SimpleCookie()
    try:
        cookie.load(headers.get("cookie", ""))
    except Exception:  # a malformed cookie header is just no token
        return None, False
    return (cookie[COOKIE].value if COOKIE in cookie else None), False


def refusal(cfg: UiConfig, scope, headers: dict[str, str]) -> tuple[int, str] | None:
    """(status, one line) when the request must not go on, else None."""
    host = headers.get("host", "")
    if cfg.token is None and _host_name(host) not in LOCAL_HOSTS:
        return 400, f"host {host!r} is not this local server (start kohyawan ui with --token to serve other names)"
    if cfg.token is not None:
        given, _ = presented_token(scope, headers)
        if not given or not hmac.compare_digest(given.encode(), cfg.token.encode()):
            return 401, "this server needs its access token: open the URL printed by kohyawan ui (…/?token=…)"
    if scope["method"] not in ("GET", "HEAD"):
        origin = headers.get("origin")
        if origin and urlsplit(origin).netloc != host:
            return 403, f"a write from another site ({origin}) is refused"
        if headers.get("sec-fetch-site") == "cross-site":
            return 403, "a write from another site is refused"
    return None


class Guard:
    """ASGI middleware: refuses what ``refusal`` refuses, adds the security headers and the token cookie."""

    def __init__(self, app, cfg: UiConfig):
        self.app, self.cfg = app, cfg

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = _headers(scope)
        refused = refusal(self.cfg, scope, headers)
        extra = [(b"content-security-policy", CSP.encode()), (b"x-content-type-options", b"nosniff"),
                 (b"referrer-policy", b"no-referrer")]
        if refused:
            status, line = refused
            body = f"error: {line}\n".encode()
            await send({"type": "http.response.start", "status": status,
                        "headers": [(b"content-type", b"text/plain; charset=utf-8"),
                                    (b"content-length", str(len(body)).encode()), *extra]})
            await send({"type": "http.response.body", "body": body})
            return
        token, in_query = presented_token(scope, headers) if self.cfg.token else (None, False)
        if in_query:
            extra.append((b"set-cookie", f"{COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict".encode()))

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                message = dict(message, headers=list(message.get("headers", [])) + extra)
            await send(message)

        await self.app(scope, receive, send_with_headers)

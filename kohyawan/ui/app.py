"""The Starlette application: routes of every page, templates, static files, and how a library error becomes
one line with an HTTP status (400 bad input, 403 not allowed or outside the folders, 404 not found, 409 the
state does not allow it)."""

from __future__ import annotations

from pathlib import Path

from jinja2 import Environment, PackageLoader, select_autoescape
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from kohyawan import __version__
from kohyawan.errors import BadInput, Busy, KohyawanError, WorkFailed
from kohyawan.ui.config import Conflict, Forbidden, NotFound, UiConfig

STATIC = Path(__file__).resolve().parent / "static"


def status_of(exc: KohyawanError) -> int:
    from kohyawan.registry.roles import NotAllowed

    for kind, status in ((NotFound, 404), (Forbidden, 403), (NotAllowed, 403), (Conflict, 409), (Busy, 409), (BadInput, 400),
                         (WorkFailed, 409)):
        if isinstance(exc, kind):
            return status
    return 500


def templates() -> Environment:
    env = Environment(loader=PackageLoader("kohyawan.ui", "templates"), autoescape=select_autoescape(["html"]),
                      trim_blocks=True, lstrip_blocks=True)
    from kohyawan.ui import fmt

    env.filters.update(fmt.FILTERS)
    return env


def render(request: Request, name: str, status: int = 200, headers: dict | None = None, **ctx) -> HTMLResponse:
    from kohyawan.registry.store import current_user

    state = request.app.state
    page = state.templates.get_template(name).render(
        request=request, cfg=state.cfg, user=current_user(), version=__version__, **ctx)
    return HTMLResponse(page, status_code=status, headers=headers)


def message(request: Request, text: str, *, ok: bool = True, status: int = 200, target: str | None = None,
            link: str | None = None) -> HTMLResponse:
    """The one-line answer to a button: swapped into the page's message area by htmx."""
    headers = {"HX-Retarget": target, "HX-Reswap": "innerHTML"} if target else None
    return render(request, "_message.html", status=status, headers=headers, text=text, ok=ok, link=link)


def _wants_html(request: Request) -> bool:
    return "text/html" in request.headers.get("accept", "") or "hx-request" in request.headers


async def on_error(request: Request, exc: Exception) -> Response:
    if isinstance(exc, HTTPException):
        status, line = exc.status_code, str(exc.detail)
    else:
        status, line = status_of(exc), str(exc)
    if request.url.path.startswith("/api/"):
        return JSONResponse({"error": line}, status_code=status)
    if "hx-request" in request.headers:
        return message(request, f"error: {line}", ok=False, status=status, target="#msg")
    if _wants_html(request):
        return render(request, "error.html", status=status, line=line, code=status)
    return PlainTextResponse(f"error: {line}\n", status_code=status)


def home(request: Request) -> Response:
    return RedirectResponse("/runs", status_code=303)


def create_app(cfg: UiConfig) -> Starlette:
    from kohyawan.ui import guard, live, pages_registry, pages_runs, pages_tests
    from kohyawan.ui.series import MetricsCache

    routes = [Route("/", home), *pages_runs.ROUTES, *pages_registry.ROUTES, *pages_tests.ROUTES,
              Route("/events", live.events), Mount("/static", StaticFiles(directory=STATIC), name="static")]
    app = Starlette(routes=routes, exception_handlers={KohyawanError: on_error, HTTPException: on_error})
    app.state.cfg = cfg.with_token()
    app.state.metrics = MetricsCache()
    app.state.metrics.warm(lambda: pages_runs.metrics_files(app.state.cfg))   # run pages open from the cache
    app.state.templates = templates()
    app.add_middleware(guard.Guard, cfg=app.state.cfg)
    return app

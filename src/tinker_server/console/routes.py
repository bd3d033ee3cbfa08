"""``/console``: the page, its static files, and the HTML fragments it fetches.

The page itself and its static files need no key; every fragment does (the page
sends ``X-API-Key`` from sessionStorage). Fragments are rendered with Jinja2
(autoescaping on) from the views of :mod:`.queries`; errors are the API's JSON
errors, which the page shows.
"""

from __future__ import annotations

import datetime as dt
import math
import pathlib
from typing import Any

import jinja2
from fastapi import APIRouter
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse

from ..api.deps import Limit, Offset, Owner
from ..errors import NotFound
from .chart import line_chart
from .service import ConsoleDep
from .views import MetricSeries

__all__ = ["router"]

HERE = pathlib.Path(__file__).parent
STATIC = HERE / "static"
STATIC_TYPES = {".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml", ".txt": "text/plain"}

# The page runs only its own script and style; forms never submit (the script handles them),
# so a key typed into the sign-in form can never end up in a URL.
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
    ),
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
}
FRAGMENT_HEADERS = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"}

router = APIRouter(prefix="/console", include_in_schema=False)


def _when(value: dt.datetime | None) -> str:
    if value is None:
        return "—"
    return value.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _ago(value: dt.datetime | None) -> str:
    if value is None:
        return ""
    seconds = (dt.datetime.now(dt.UTC) - value).total_seconds()
    if seconds < 0:
        seconds = -seconds
        suffix = "from now"
    else:
        suffix = "ago"
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{int(seconds // size)} {unit} {suffix}"
    return f"{int(seconds)} s {suffix}"


def _size(value: int | None) -> str:
    if value is None:
        return "—"
    size = float(value)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{value} B"


def _number(value: float | None) -> str:
    if value is None:
        return "NaN"
    if not math.isfinite(value):
        return str(value)
    return f"{value:.6g}"


_env = jinja2.Environment(
    loader=jinja2.FileSystemLoader(HERE / "templates"),
    autoescape=jinja2.select_autoescape(["html"]),
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)
_env.filters.update(when=_when, ago=_ago, size=_size, number=_number)


def _render(template: str, status_code: int = 200, **context: Any) -> HTMLResponse:
    html = _env.get_template(template).render(**context)
    return HTMLResponse(html, status_code=status_code, headers=FRAGMENT_HEADERS)


def _chart(series: MetricSeries) -> Any:
    return line_chart(series.steps, series.values, series.lows, series.highs)


@router.get("")
def page() -> HTMLResponse:
    html = _env.get_template("page.html").render()
    return HTMLResponse(html, headers={**SECURITY_HEADERS, "Cache-Control": "no-cache"})


@router.get("/")
def page_slash() -> RedirectResponse:
    return RedirectResponse("/console", status_code=308)


@router.get("/static/{name}")
def static(name: str) -> FileResponse:
    path = STATIC / name
    if "/" in name or name.startswith(".") or path.suffix not in STATIC_TYPES or not path.is_file():
        raise NotFound(f"no console file {name!r}")
    return FileResponse(
        path, media_type=STATIC_TYPES[path.suffix], headers={"Cache-Control": "no-cache", **SECURITY_HEADERS}
    )


@router.get("/fragments/runs")
def runs_fragment(owner: Owner, console: ConsoleDep, limit: Limit = 25, offset: Offset = 0) -> HTMLResponse:
    return _render("runs.html", view=console.queries.runs_page(owner, offset, limit))


@router.get("/fragments/runs/{run_id}")
def run_fragment(
    run_id: str, owner: Owner, console: ConsoleDep, checkpoints_limit: Limit = 20, checkpoints_offset: Offset = 0
) -> HTMLResponse:
    view = console.queries.run_detail(owner, run_id, checkpoints_offset, checkpoints_limit)
    return _render("run.html", view=view, charts=[(series, _chart(series)) for series in view.metrics])


@router.get("/fragments/sessions")
def sessions_fragment(owner: Owner, console: ConsoleDep, limit: Limit = 25, offset: Offset = 0) -> HTMLResponse:
    return _render("sessions.html", view=console.queries.sessions_page(owner, offset, limit))


@router.get("/fragments/queue")
def queue_fragment(_owner: Owner, console: ConsoleDep) -> HTMLResponse:
    return _render("queue.html", view=console.queries.queue())


@router.get("/fragments/playground")
def playground_fragment(owner: Owner, console: ConsoleDep, model_path: str | None = None) -> HTMLResponse:
    return _render("playground.html", view=console.queries.playground_models(owner), selected=model_path)

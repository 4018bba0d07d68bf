"""The labeling web app: a JSON API over :class:`~feedback_lm.label.store.Store` and one static page.

Needs the ``label`` extra (``pip install '.[label]'``: FastAPI, uvicorn). Run it with
``python -m feedback_lm.label serve CAMPAIGN_DIR``. Every ``/api`` call but ``health`` needs the
person's token as ``Authorization: Bearer <token>`` (from ``add-labeler``).

=======  ==================================  ====================================================
GET      /api/health                         ``{"ok": true, "campaign": name}``
GET      /api/me                             who is signed in, the campaign's settings, progress
POST     /api/next                           the person's current item (same one after a refresh,
                                             with its draft) or a new lease; ``{"done": true}``
PUT      /api/assignments/{id}/draft         save the unsaved choice (any JSON object), renew lease
POST     /api/assignments/{id}/label         submit (body: see :mod:`feedback_lm.label.config`)
POST     /api/assignments/{id}/skip          give the item back now (never offered again)
GET      /api/last                           one's last label while it can be edited, or null
PUT      /api/assignments/{id}/label         replace that label (until it is exported)
GET      /api/admin/stats                    the researcher's numbers (admin token, from
                                             ``python -m feedback_lm.label admin-token``)
=======  ==================================  ====================================================

An item reaches the page as its prompt and its responses in this person's display order, without
stored indices or whether it is gold; labels come back in display positions and the store maps them
(the mapping never leaves the server). ``/admin`` is the researcher's page.

Errors are ``{"detail": "<one message>"}`` with 401 (not signed in), 404 (not your assignment),
409 (already labeled / lease gone), 422 (bad label; nothing stored), 503 (the database is unreachable
for a moment; retry). There is no OpenAPI document unless ``serve --openapi`` asks for one.

Model output is untrusted: the page inserts it with ``textContent`` only, and every response carries
a Content-Security-Policy that allows no inline script, so a response holding ``<script>`` or
``<img onerror=...>`` shows as text and cannot run.
"""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path
from typing import Annotated, Any

from fastapi import Body, Depends, FastAPI, Header, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles

from feedback_lm.errors import UserError
from feedback_lm.label.config import LIKERT_RANGE, LabelError
from feedback_lm.label.stats import campaign_report
from feedback_lm.label.store import Assignment, Conflict, NotFound, Store

__all__ = ["create_app"]

STATIC = Path(__file__).parent / "static"
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
                               "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
_STATUS = ((LabelError, 422), (NotFound, 404), (Conflict, 409), (UserError, 400))
_BEARER = re.compile(r"^Bearer ([A-Za-z0-9_-]{1,200})$", re.IGNORECASE)  # RFC 6750 §2.1; tokens are URL-safe


def _database_errors() -> tuple[type[Exception], ...]:
    try:
        import psycopg
    except ImportError:
        return (sqlite3.OperationalError,)
    return sqlite3.OperationalError, psycopg.OperationalError


def create_app(store: Store, openapi: bool = False) -> FastAPI:
    """The app for one campaign's store; ``openapi=True`` serves ``/openapi.json`` (off by default)."""
    app = FastAPI(title=f"feedback_lm labeling: {store.name}", docs_url=None, redoc_url=None,
                  openapi_url="/openapi.json" if openapi else None)

    @app.middleware("http")
    async def security_headers(request: Request, call_next):
        response = await call_next(request)
        response.headers.update(SECURITY_HEADERS)
        return response

    @app.exception_handler(UserError)
    async def user_error(request: Request, exc: UserError):
        status = next(code for cls, code in _STATUS if isinstance(exc, cls))
        return JSONResponse({"detail": str(exc)}, status_code=status)

    for error_type in _database_errors():
        @app.exception_handler(error_type)
        async def database_down(request: Request, exc: Exception):
            return JSONResponse({"detail": "the label database is not answering; try again in a moment "
                                           "(nothing was lost: a retry sends the same idempotency key)"},
                                status_code=503, headers={"Retry-After": "2"})

    @app.exception_handler(RequestValidationError)
    async def bad_request(request: Request, exc: RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or "body"
        return JSONResponse({"detail": f"bad request ({where}): {first.get('msg', 'invalid')}; "
                                       f"send a JSON object"}, status_code=422)

    def bearer(authorization: str | None) -> str:
        match = _BEARER.match(authorization or "")
        return match.group(1) if match else ""

    def labeler(authorization: str | None = Header(default=None)) -> tuple[int, str]:
        who = store.labeler_for_token(bearer(authorization))
        if who is None:
            raise HTTPException(401, "sign in: send your token as 'Authorization: Bearer <token>' "
                                     "(an admin makes one with `python -m feedback_lm.label add-labeler`)",
                                headers={"WWW-Authenticate": "Bearer"})
        return who

    def admin(authorization: str | None = Header(default=None)) -> None:
        if not store.is_admin(bearer(authorization)):
            raise HTTPException(401, "sign in with the campaign's admin token as 'Authorization: Bearer <token>' "
                                     "(`python -m feedback_lm.label admin-token` makes one)",
                                headers={"WWW-Authenticate": "Bearer"})

    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    @app.get("/admin", include_in_schema=False)
    def admin_page() -> FileResponse:
        return FileResponse(STATIC / "admin.html", media_type="text/html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/api/health")
    def health() -> dict:
        return {"ok": True, "campaign": store.name}

    @app.get("/api/me")
    def me(who: tuple[int, str] = Depends(labeler)) -> dict:
        c = store.config
        return {"labeler": who[1], "progress": store.progress(who[0]), "campaign": {
            "name": store.name, "mode": c.mode, "likert": c.likert, "likert_range": list(LIKERT_RANGE),
            "flags": c.flags, "instructions": c.instructions}}

    @app.post("/api/next")
    def next_item(who: tuple[int, str] = Depends(labeler)) -> dict:
        assignment = store.next_item(who[0])
        if assignment is None:
            return {"done": True, "progress": store.progress(who[0])}
        return {**_public(assignment), "progress": store.progress(who[0])}

    @app.put("/api/assignments/{assignment_id}/draft")
    def save_draft(assignment_id: int, draft: Annotated[Any, Body()],
                   who: tuple[int, str] = Depends(labeler)) -> dict:
        return {"ok": True, "expires_at": store.save_draft(who[0], assignment_id, draft)}

    @app.post("/api/assignments/{assignment_id}/label")
    def submit(assignment_id: int, label: Annotated[Any, Body()],
               who: tuple[int, str] = Depends(labeler)) -> dict:
        result = store.submit(who[0], assignment_id, label, shown=True)
        return {"label_id": result.label_id, "duplicate": result.duplicate, "late": result.late}

    @app.post("/api/assignments/{assignment_id}/skip")
    def skip(assignment_id: int, who: tuple[int, str] = Depends(labeler)) -> dict:
        store.skip(who[0], assignment_id)
        return {"ok": True}

    @app.get("/api/last")
    def last(who: tuple[int, str] = Depends(labeler)) -> dict:
        assignment = store.last_label(who[0], shown=True)
        return {"last": None if assignment is None else {**_public(assignment), "label": assignment.label}}

    @app.put("/api/assignments/{assignment_id}/label")
    def edit(assignment_id: int, label: Annotated[Any, Body()], who: tuple[int, str] = Depends(labeler)) -> dict:
        store.edit(who[0], assignment_id, label, shown=True)
        return {"ok": True}

    @app.get("/api/admin/stats", dependencies=[Depends(admin)])
    def admin_stats() -> dict:
        return campaign_report(store)

    return app


def _public(a: Assignment) -> dict:
    """What the page needs: the prompt and the responses in this person's display order.

    No stored index, item id or gold mark is sent: labels come back in display positions.
    """
    return {"assignment_id": a.id, "prompt": a.prompt, "responses": [a.responses[i] for i in a.display_order],
            "expires_at": a.expires_at, "draft": a.draft}

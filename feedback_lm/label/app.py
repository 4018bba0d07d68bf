"""The labeling web app: a JSON API over :class:`~feedback_lm.label.store.Store` and one static page.

Needs the ``label`` extra (``pip install '.[label]'``: FastAPI, uvicorn). Run it with
``python -m feedback_lm.label serve CAMPAIGN_DIR``. Every ``/api`` call but ``health`` needs the
person's token as ``Authorization: Bearer <token>`` (from ``add-labeler``).

=======  ==================================  ====================================================
GET      /api/health                         ``{"ok": true, "campaign": name}``
GET      /api/me                             who is signed in, and the campaign's settings
POST     /api/next                           the person's current item (same one after a refresh,
                                             with its draft) or a new lease; ``{"done": true}``
PUT      /api/assignments/{id}/draft         save the unsaved choice (any JSON object), renew lease
POST     /api/assignments/{id}/label         submit (body: see :mod:`feedback_lm.label.config`)
=======  ==================================  ====================================================

Errors are ``{"detail": "<one message>"}`` with 401 (not signed in), 404 (not your assignment),
409 (already labeled / lease gone), 422 (bad label; nothing stored).

Model output is untrusted: the page inserts it with ``textContent`` only, and every response carries
a Content-Security-Policy that allows no inline script, so a response holding ``<script>`` or
``<img onerror=...>`` shows as text and cannot run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from fastapi import Body, Depends, FastAPI, Header, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles

from feedback_lm.errors import UserError
from feedback_lm.label.config import LIKERT_RANGE, LabelError
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


def create_app(store: Store) -> FastAPI:
    """The app for one campaign's store."""
    app = FastAPI(title=f"feedback_lm labeling: {store.name}", docs_url=None, redoc_url=None)

    @app.middleware("http")
    async def security_headers(request: Request, call_next):
        response = await call_next(request)
        response.headers.update(SECURITY_HEADERS)
        return response

    @app.exception_handler(UserError)
    async def user_error(request: Request, exc: UserError):
        status = next(code for cls, code in _STATUS if isinstance(exc, cls))
        return JSONResponse({"detail": str(exc)}, status_code=status)

    @app.exception_handler(RequestValidationError)
    async def bad_request(request: Request, exc: RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or "body"
        return JSONResponse({"detail": f"bad request ({where}): {first.get('msg', 'invalid')}; "
                                       f"send a JSON object"}, status_code=422)

    def labeler(authorization: str | None = Header(default=None)) -> tuple[int, str]:
        token = (authorization or "").removeprefix("Bearer").strip()
        who = store.labeler_for_token(token)
        if who is None:
            raise HTTPException(401, "sign in: send your token as 'Authorization: Bearer <token>' "
                                     "(an admin makes one with `python -m feedback_lm.label add-labeler`)",
                                headers={"WWW-Authenticate": "Bearer"})
        return who

    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/api/health")
    def health() -> dict:
        return {"ok": True, "campaign": store.name}

    @app.get("/api/me")
    def me(who: tuple[int, str] = Depends(labeler)) -> dict:
        c = store.config
        return {"labeler": who[1], "campaign": {
            "name": store.name, "mode": c.mode, "likert": c.likert, "likert_range": list(LIKERT_RANGE),
            "flags": c.flags, "instructions": c.instructions}}

    @app.post("/api/next")
    def next_item(who: tuple[int, str] = Depends(labeler)) -> dict:
        assignment = store.next_item(who[0])
        if assignment is None:
            return {"done": True, "counts": store.counts()}
        return _public(assignment)

    @app.put("/api/assignments/{assignment_id}/draft")
    def save_draft(assignment_id: int, draft: Annotated[Any, Body()],
                   who: tuple[int, str] = Depends(labeler)) -> dict:
        return {"ok": True, "expires_at": store.save_draft(who[0], assignment_id, draft)}

    @app.post("/api/assignments/{assignment_id}/label")
    def submit(assignment_id: int, label: Annotated[Any, Body()],
               who: tuple[int, str] = Depends(labeler)) -> dict:
        result = store.submit(who[0], assignment_id, label)
        return {"label_id": result.label_id, "duplicate": result.duplicate, "late": result.late}

    return app


def _public(a: Assignment) -> dict:
    """What the page needs; responses in the shuffled display order, each with its stored index.

    Whether an item is gold is not sent, so it cannot be labeled differently.
    """
    return {"assignment_id": a.id, "item_id": a.item_id, "prompt": a.prompt,
            "responses": [{"index": i, "text": a.responses[i]} for i in a.display_order],
            "expires_at": a.expires_at, "draft": a.draft}

"""The annotation web app (FastAPI, server-rendered Jinja2 pages, one small local script; nothing external).

Annotators log in through their secret link ``/start/<token>``: it opens a session (HttpOnly, SameSite=Strict
cookie; the id is stored hashed) with its own CSRF token that every form posts back. Scripts use the JSON API
with ``Authorization: Bearer <token>`` (no cookies, so no CSRF). Images are served by item id from the files
registered in the database, only to an annotator who has the item in their queue (the original only in the
side-by-side task, where it is part of the question) or to an admin.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import io
import os
import secrets
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

from fastapi import FastAPI, Form, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from PIL import Image
from pydantic import BaseModel
from sqlalchemy import Row
from starlette.background import BackgroundTask
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from semsim.annotation import store
from semsim.annotation.db import Database, Item
from semsim.annotation.export import export, zip_folders
from semsim.errors import SemsimError

HERE = Path(__file__).resolve().parent
COOKIE = "semsim_session"
DISPLAY_SIZE = 256  # images are upscaled by an integer factor (nearest neighbour) to at least this size
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self'; script-src 'self'; style-src 'self'; "
                               "form-action 'self'; frame-ancestors 'none'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


class Forbidden(Exception):
    """Turned into a 403 page (or JSON for the API)."""


class ApiAnswer(BaseModel):
    item_id: int
    value: int
    submit_id: str | None = None


def upscaled_png(path: str | os.PathLike, size: int = DISPLAY_SIZE) -> bytes:
    """The image enlarged by the smallest integer factor reaching ``size`` pixels, nearest neighbour."""
    with Image.open(path) as img:
        img = img.convert("RGB")
        factor = max(1, -(-size // max(img.size)))
        img = img.resize((img.width * factor, img.height * factor), Image.Resampling.NEAREST)
        buf = io.BytesIO()
        img.save(buf, format="PNG")
    return buf.getvalue()


class SecurityHeaders:
    """ASGI middleware adding :data:`SECURITY_HEADERS` to every HTTP response."""

    def __init__(self, app: ASGIApp):
        self.app = app
        self.headers = [(k.lower().encode(), v.encode()) for k, v in SECURITY_HEADERS.items()]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                present = {k.lower() for k, _ in message.get("headers", [])}
                message["headers"] = [*message.get("headers", []),
                                      *((k, v) for k, v in self.headers if k not in present)]
            await send(message)

        await self.app(scope, receive, send_with_headers)


def shortcut(info: store.ProjectInfo, value: int) -> str:
    """The key that gives an answer: y/n/u (pair); 1..9, 0 for up to ten classes; '-' for can't tell."""
    if info.task == "pair":
        return {1: "y", 0: "n", -1: "u"}[value]
    if value == -1:
        return "-"
    return str((value + 1) % 10) if len(info.classes) <= 10 else ""


def create_app(db_url: str | os.PathLike) -> FastAPI:
    """The app for one annotation database."""
    db = Database(db_url)
    info = store.project_info(db)
    writer = store.AnswerWriter(db, info)
    templates = Jinja2Templates(directory=str(HERE / "templates"))

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        writer.close()
        db.dispose()

    app = FastAPI(title="semsim annotation", docs_url=None, redoc_url=None, openapi_url=None,
                  lifespan=lifespan)
    app.state.db = db
    app.mount("/static", StaticFiles(directory=str(HERE / "static")), name="static")
    app.add_middleware(SecurityHeaders)

    @app.exception_handler(Forbidden)
    async def _forbidden(request: Request, exc: Forbidden) -> Response:
        if request.url.path.startswith("/api/"):
            return JSONResponse({"error": str(exc)}, status_code=403)
        return templates.TemplateResponse(request, "message.html",
                                          {"title": "Not allowed", "message": str(exc)}, status_code=403)

    def user(request: Request) -> tuple[Row, str]:
        session_id = request.cookies.get(COOKIE)
        found = store.session_user(db, session_id) if session_id else None
        if found is None:
            raise Forbidden("Open the personal link you were given to start.")
        return found

    def check_csrf(csrf: str, expected: str) -> None:
        if not hmac.compare_digest(csrf.encode(), expected.encode()):
            raise Forbidden("This form has expired or did not come from this site; reload the page.")

    def admin(request: Request) -> tuple[Row, str]:
        person, csrf = user(request)
        if not person.is_admin:
            raise Forbidden("This page is for the study's administrators.")
        return person, csrf

    def api_user(request: Request) -> Row:
        auth = request.headers.get("authorization", "")
        person = store.annotator_by_token(db, auth[7:]) if auth.lower().startswith("bearer ") else None
        if person is None:
            raise Forbidden("missing or unknown token; send 'Authorization: Bearer <token>'")
        return person

    @app.get("/healthz")
    def healthz() -> dict:
        return {"ok": True}

    @app.get("/", response_class=HTMLResponse)
    def home(request: Request) -> Response:
        person, _ = user(request)
        return RedirectResponse("/admin" if person.is_admin else "/task", status_code=303)

    @app.get("/start/{token}")
    def start(request: Request, token: str) -> Response:
        opened = store.open_session(db, token)
        if opened is None:
            raise Forbidden("This link is not valid (or was revoked); ask the organiser for a new one.")
        session_id, _, person = opened
        response = RedirectResponse("/admin" if person.is_admin else "/task", status_code=303)
        response.set_cookie(COOKIE, session_id, httponly=True, samesite="strict", max_age=90 * 24 * 3600,
                            secure=request.url.scheme == "https")
        return response

    @app.get("/task", response_class=HTMLResponse)
    def task(request: Request) -> Response:
        person, csrf = user(request)
        prog = store.progress_of(db, person.id)
        if prog.item_id is None:
            return templates.TemplateResponse(request, "done.html", {"person": person, "progress": prog,
                                                                     "csrf": csrf})
        return templates.TemplateResponse(request, "task.html", {
            "person": person, "progress": prog, "item_id": prog.item_id, "info": info, "csrf": csrf,
            "choices": info.choices(), "submit_id": secrets.token_urlsafe(16),
            "keys": {v: shortcut(info, v) for v, _ in info.choices()},
        })

    @app.post("/answer")
    def answer(request: Request, item_id: int = Form(...), value: int = Form(...), csrf: str = Form(...),
               submit_id: str = Form("")) -> Response:
        person, expected = user(request)
        check_csrf(csrf, expected)
        try:
            writer.submit(person.id, item_id, value, submit_id or None)
        except store.NotAssigned as exc:
            raise Forbidden(str(exc)) from None
        except SemsimError as exc:
            return templates.TemplateResponse(request, "message.html", {"title": "Invalid answer",
                                                                        "message": str(exc)}, status_code=400)
        return RedirectResponse("/task", status_code=303)

    @app.post("/undo")
    def undo(request: Request, csrf: str = Form(...)) -> Response:
        person, expected = user(request)
        check_csrf(csrf, expected)
        store.undo_last(db, person.id)
        return RedirectResponse("/task", status_code=303)

    @app.get("/img/{item_id}/{kind}")
    def image(request: Request, item_id: int, kind: str) -> Response:
        person, _ = user(request)
        if kind not in ("rec", "ori"):
            raise Forbidden("unknown image kind")
        if not person.is_admin:
            if kind == "ori" and info.task != "pair":
                raise Forbidden("originals are not shown in this task")
            if not store.is_assigned(db, person.id, item_id):
                raise Forbidden(f"item {item_id} is not in your queue")
        with db.read() as s:
            item = s.get(Item, item_id)
        if item is None:
            raise Forbidden(f"item {item_id}: no such item")
        path = item.reconstruction if kind == "rec" else item.original
        try:
            png = upscaled_png(path)
        except OSError:
            return Response("image file missing or unreadable", status_code=404, media_type="text/plain")
        return Response(png, media_type="image/png", headers={"Cache-Control": "private, max-age=3600"})

    @app.get("/api/next")
    def api_next(request: Request) -> dict:
        person = api_user(request)
        prog = store.progress_of(db, person.id)
        return {"item_id": prog.item_id, "done": prog.done, "total": prog.total}

    @app.post("/api/answer")
    async def api_answer(request: Request, body: ApiAnswer) -> Response:
        # async: the two indexed reads are short (WAL readers never wait), the write waits on the group commit
        person = api_user(request)
        try:
            future = writer.enqueue(person.id, body.item_id, body.value, body.submit_id)
            stored = store.outcome(await asyncio.wrap_future(future))
        except store.NotAssigned as exc:
            raise Forbidden(str(exc)) from None
        except SemsimError as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        return JSONResponse({"stored": stored, "duplicate": not stored, "item_id": body.item_id,
                             "next_item_id": store.next_item(db, person.id)})

    @app.get("/admin", response_class=HTMLResponse)
    def dashboard(request: Request) -> Response:
        person, csrf = admin(request)
        return templates.TemplateResponse(request, "admin.html", {"person": person, "csrf": csrf,
                                                                  "d": store.dashboard(db)})

    @app.post("/admin/annotators", response_class=HTMLResponse)
    def new_annotator(request: Request, name: str = Form(...), csrf: str = Form(...),
                      is_admin: str = Form("")) -> Response:
        _, expected = admin(request)
        check_csrf(csrf, expected)
        try:
            token = store.add_annotator(db, name, admin=bool(is_admin))
        except SemsimError as exc:
            return templates.TemplateResponse(request, "message.html", {"title": "Not created",
                                                                        "message": str(exc)}, status_code=400)
        link = str(request.base_url).rstrip("/") + f"/start/{token}"
        return templates.TemplateResponse(request, "message.html", {
            "title": f"Annotator {name} created", "message": "Send this personal link (shown only now):",
            "link": link, "back": "/admin"})

    @app.get("/admin/export/{name}")
    def export_file(request: Request, name: str) -> Response:
        admin(request)
        kinds = {"labels.csv": "labels", "labels.parquet": "labels", "labelstudio.json": "labelstudio",
                 "semsim_folders.zip": "zip"}
        if name not in kinds:
            raise Forbidden(f"unknown export {name!r}")
        tmp = Path(tempfile.mkdtemp(prefix="semsim-export-"))
        try:
            if kinds[name] == "zip":
                path = zip_folders(db, tmp / name)
            else:
                path = export(db, tmp / name, kinds[name])
        except SemsimError as exc:
            _cleanup(tmp)
            context = {"title": "Nothing to export", "message": str(exc), "back": "/admin"}
            return templates.TemplateResponse(request, "message.html", context, status_code=409)
        return FileResponse(path, filename=name, background=BackgroundTask(_cleanup, tmp))

    return app


def _cleanup(folder: Path) -> None:
    for child in folder.iterdir():
        child.unlink()
    folder.rmdir()



def serve(db_url: str | os.PathLike, host: str = "127.0.0.1", port: int = 8000) -> None:
    """Run the app with uvicorn until interrupted."""
    import uvicorn

    uvicorn.run(create_app(db_url), host=host, port=port, log_level="warning")

"""The annotation web app (FastAPI, server-rendered Jinja2 pages, one small local script; nothing external).

Annotators log in through their secret link ``/start/<token>``: it opens a session (HttpOnly, SameSite=Strict
cookie, Secure behind HTTPS; the id is stored hashed) that expires, with its own CSRF token that every form
posts back. A link opened in a browser that already has a live session asks before replacing it. Scripts use
the JSON API with ``Authorization: Bearer <token>`` (no cookies, so no CSRF). Every POST is refused with 413
when its body exceeds :data:`MAX_BODY` and with 403 when it is not authenticated, both before the body is read.
Images are served by item id from the files registered in the database, only to an annotator who has the
item in their queue (the original only in the side-by-side task, where it is part of the question), for the
examples of the instructions page, or to an admin.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import io
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import cast

from fastapi import FastAPI, Form, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from PIL import Image
from sqlalchemy import Row, select
from starlette.background import BackgroundTask
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from semsim.annotation import answers as store
from semsim.annotation import sessions
from semsim.annotation.annotators import add_annotator, set_base_url
from semsim.annotation.dashboard import dashboard as dashboard_data
from semsim.annotation.db import Database, Item, Project
from semsim.annotation.export import export, zip_folders
from semsim.annotation.project import ACTIONS, NotAssigned, project_info
from semsim.annotation.writer import AnswerWriter
from semsim.errors import SemsimError

HERE = Path(__file__).resolve().parent
COOKIE = "semsim_session"
DISPLAY_SIZE = 256  # images are upscaled by an integer factor (nearest neighbour) to at least this size
MAX_BODY = 16 * 1024  # bytes; an answer is well under 1 KiB
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self'; script-src 'self'; style-src 'self'; "
                               "form-action 'self'; frame-ancestors 'none'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
WRITES = frozenset({"POST", "PUT", "PATCH", "DELETE"})


class Forbidden(Exception):
    """Turned into a 403 page (or JSON for the API)."""


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


async def _plain(send: Send, status: int, text: str, api: bool) -> None:
    body = json.dumps({"error": text}).encode() if api else text.encode()
    kind = b"application/json" if api else b"text/plain; charset=utf-8"
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", kind), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})


class RequestGuard:
    """ASGI middleware for writing requests: 413 when the declared or the actual body exceeds ``limit`` bytes,
    403 when ``authenticate(scope)`` finds nobody; both before the body is read (an unauthenticated or
    oversized request costs one header check). The authenticated caller goes to ``scope["state"]["auth"]``."""

    def __init__(self, app: ASGIApp, authenticate: Callable[[Scope], object | None], limit: int = MAX_BODY):
        self.app, self.authenticate, self.limit = app, authenticate, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in WRITES:
            await self.app(scope, receive, send)
            return
        api = scope["path"].startswith("/api/")
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.limit):
            await _plain(send, 413, f"request body over {self.limit} bytes", api)
            return
        auth = self.authenticate(scope)
        if auth is None:
            await _plain(send, 403, "not logged in: open your personal link (or send 'Authorization: Bearer "
                                    "<token>')", api)
            return
        scope.setdefault("state", {})["auth"] = auth
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.limit:
                await _plain(send, 413, f"request body over {self.limit} bytes", api)
                return
            more = message.get("more_body", False)
        body = b"".join(chunks)
        sent = False

        async def replay() -> Message:
            nonlocal sent
            if sent:
                return await receive()
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)


def _paragraphs(text: str) -> list[str]:
    return [p.strip() for p in text.split("\n\n") if p.strip()]


class _Site:
    """What the routes share: the database, the project, the writer, the templates and the login rules."""

    def __init__(self, db: Database, session_hours: float, secure_cookies: bool):
        self.db, self.session_hours, self.secure_cookies = db, session_hours, secure_cookies
        self.info = project_info(db)
        self.writer = AnswerWriter(db, self.info)
        self.templates = Jinja2Templates(directory=str(HERE / "templates"))

    def authenticate(self, scope: Scope) -> object | None:
        """For :class:`RequestGuard`: the bearer token's annotator (API) or the session's (pages), or None."""
        request = Request(scope)
        if scope["path"].startswith("/api/"):
            auth = request.headers.get("authorization", "")
            return sessions.annotator_by_token(self.db, auth[7:]) if auth.lower().startswith("bearer ") else None
        session_id = request.cookies.get(COOKIE)
        return sessions.session_user(self.db, session_id) if session_id else None

    def page(self, request: Request, name: str, context: dict, status_code: int = 200) -> Response:
        return self.templates.TemplateResponse(request, name, context, status_code=status_code)

    def message(self, request: Request, title: str, text: str, status_code: int = 200, **more: object) -> Response:
        return self.page(request, "message.html", {"title": title, "message": text, **more}, status_code)

    def current(self, request: Request) -> tuple[Row, str] | None:
        """The live session's annotator and CSRF token (found by the guard on writes), or None."""
        auth = getattr(request.state, "auth", None)
        if auth is not None:
            return auth
        session_id = request.cookies.get(COOKIE)
        return sessions.session_user(self.db, session_id) if session_id else None

    def user(self, request: Request) -> tuple[Row, str]:
        found = self.current(request)
        if found is None:
            raise Forbidden("Open the personal link you were given to start (sessions end after "
                            f"{self.session_hours:g} hours).")
        return found

    @staticmethod
    def check_csrf(csrf: str, expected: str) -> None:
        if not hmac.compare_digest(csrf.encode(), expected.encode()):
            raise Forbidden("This form has expired or did not come from this site; reload the page.")

    def admin(self, request: Request) -> tuple[Row, str]:
        person, csrf = self.user(request)
        if not person.is_admin:
            raise Forbidden("This page is for the study's administrators.")
        return person, csrf

    def api_user(self, request: Request) -> Row:
        person = getattr(request.state, "auth", None)
        if person is None:
            auth = request.headers.get("authorization", "")
            person = sessions.annotator_by_token(self.db, auth[7:]) if auth.lower().startswith("bearer ") else None
        if person is None:
            raise Forbidden("missing or unknown token; send 'Authorization: Bearer <token>'")
        return person

    def login(self, request: Request, token: str) -> Response:
        """Open a session for the link's annotator: cookie set, on to the dashboard, instructions or task."""
        opened = sessions.open_session(self.db, token, self.session_hours)
        if opened is None:
            raise Forbidden("This link is not valid (or was revoked); ask the organiser for a new one.")
        session_id, _, person = opened
        if person.is_admin:
            target = "/admin"
        else:
            first = self.has_instructions() and store.progress_of(self.db, person.id).done == 0
            target = "/instructions" if first else "/task"
        response = RedirectResponse(target, status_code=303)
        response.set_cookie(COOKIE, session_id, httponly=True, samesite="strict",
                            max_age=int(self.session_hours * 3600),
                            secure=self.secure_cookies or request.url.scheme == "https")
        return response

    def has_instructions(self) -> bool:
        with self.db.read() as s:
            text = s.scalar(select(Project.instructions).limit(1))
            example = s.scalar(select(Item.id).where(Item.example).limit(1))
        return bool(text) or example is not None


def create_app(db_url: str | os.PathLike, session_hours: float = sessions.DEFAULT_SESSION_HOURS,
               secure_cookies: bool = False) -> FastAPI:
    """The app for one annotation database; sessions last ``session_hours``; ``secure_cookies`` marks the
    cookie Secure even when the app itself sees plain HTTP (behind a TLS-terminating proxy)."""
    ctx = _Site(Database(db_url), session_hours, secure_cookies)

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        ctx.writer.close()
        ctx.db.dispose()

    app = FastAPI(title="semsim annotation", docs_url=None, redoc_url=None, openapi_url=None,
                  lifespan=lifespan)
    app.state.db = ctx.db
    app.state.writer = ctx.writer
    app.mount("/static", StaticFiles(directory=str(HERE / "static")), name="static")
    app.add_middleware(RequestGuard, authenticate=ctx.authenticate)
    app.add_middleware(SecurityHeaders)

    @app.exception_handler(Forbidden)
    async def _forbidden(request: Request, exc: Forbidden) -> Response:
        if request.url.path.startswith("/api/"):
            return JSONResponse({"error": str(exc)}, status_code=403)
        return ctx.message(request, "Not allowed", str(exc), 403)

    _session_routes(app, ctx)
    _task_routes(app, ctx)
    _admin_routes(app, ctx)
    return app


def _session_routes(app: FastAPI, ctx: _Site) -> None:
    """Health check, home, logging in by link (with the switch confirmation), logout, instructions."""

    @app.get("/healthz")
    def healthz() -> dict:
        batches = ctx.writer.batches
        return {"ok": True, "batch_mean": sum(batches) / len(batches) if batches else None}

    @app.get("/", response_class=HTMLResponse)
    def home(request: Request) -> Response:
        person, _ = ctx.user(request)
        return RedirectResponse("/admin" if person.is_admin else "/task", status_code=303)

    @app.get("/start/{token}")
    def start(request: Request, token: str) -> Response:
        live = ctx.current(request)
        if live is None:
            return ctx.login(request, token)
        person = sessions.annotator_by_token(ctx.db, token)
        if person is None:
            raise Forbidden("This link is not valid (or was revoked); ask the organiser for a new one.")
        if person.id == live[0].id:
            return RedirectResponse("/admin" if person.is_admin else "/task", status_code=303)
        return ctx.page(request, "switch.html", {"person": live[0], "csrf": live[1], "token": token,
                                             "other": person.name})

    @app.post("/start")
    def switch(request: Request, token: str = Form(...), csrf: str = Form(...)) -> Response:
        _, expected = ctx.user(request)
        ctx.check_csrf(csrf, expected)
        sessions.close_session(ctx.db, request.cookies.get(COOKIE, ""))
        return ctx.login(request, token)

    @app.post("/logout")
    def logout(request: Request, csrf: str = Form(...)) -> Response:
        _, expected = ctx.user(request)
        ctx.check_csrf(csrf, expected)
        sessions.close_session(ctx.db, request.cookies.get(COOKIE, ""))
        response = ctx.message(request, "Signed out", "You are signed out. Open your personal link to continue.")
        response.delete_cookie(COOKIE)
        return response

    @app.get("/instructions", response_class=HTMLResponse)
    def instructions(request: Request) -> Response:
        person, csrf = ctx.user(request)
        with ctx.db.read() as s:
            text = s.scalar(select(Project.instructions).limit(1)) or ""
            examples = s.execute(select(Item.id, Item.gold_answer).where(Item.example).order_by(Item.id)).all()
        return ctx.page(request, "instructions.html", {
            "person": person, "csrf": csrf, "info": ctx.info, "paragraphs": _paragraphs(text),
            "examples": [(item_id, ctx.info.text(cast(int, answer))) for item_id, answer in examples]})


def _task_routes(app: FastAPI, ctx: _Site) -> None:
    """The annotator's queue: task page, answers (form and JSON API), undo, images."""

    @app.get("/task", response_class=HTMLResponse)
    def task(request: Request) -> Response:
        person, csrf = ctx.user(request)
        prog = store.progress_of(ctx.db, person.id)
        if prog.item_id is None:
            return ctx.page(request, "done.html", {"person": person, "progress": prog, "csrf": csrf})
        choices = [*ctx.info.choices(), *ACTIONS.items()]
        return ctx.page(request, "task.html", {
            "person": person, "progress": prog, "item_id": prog.item_id, "info": ctx.info, "csrf": csrf,
            "choices": choices, "submit_id": secrets.token_urlsafe(16),
            "keys": {v: ctx.info.key(v) for v, _ in choices},
            "has_instructions": ctx.has_instructions()})

    @app.post("/answer")
    def answer(request: Request, item_id: int = Form(...), value: int = Form(...), csrf: str = Form(...),
               submit_id: str = Form("")) -> Response:
        person, expected = ctx.user(request)
        ctx.check_csrf(csrf, expected)
        try:
            ctx.writer.submit(person.id, item_id, value, submit_id or None)
        except NotAssigned as exc:
            raise Forbidden(str(exc)) from None
        except SemsimError as exc:
            return ctx.message(request, "Invalid answer", str(exc), 400)
        return RedirectResponse("/task", status_code=303)

    @app.post("/undo")
    def undo(request: Request, csrf: str = Form(...)) -> Response:
        person, expected = ctx.user(request)
        ctx.check_csrf(csrf, expected)
        store.undo_last(ctx.db, person.id)
        return RedirectResponse("/task", status_code=303)

    @app.get("/img/{item_id}/{kind}")
    def image(request: Request, item_id: int, kind: str) -> Response:
        person, _ = ctx.user(request)
        try:
            png = upscaled_png(_image_path(ctx, person, item_id, kind))
        except OSError:
            return Response("image file missing or unreadable", status_code=404, media_type="text/plain")
        return Response(png, media_type="image/png", headers={"Cache-Control": "private, max-age=3600"})

    @app.get("/api/next")
    def api_next(request: Request) -> dict:
        person = ctx.api_user(request)
        prog = store.progress_of(ctx.db, person.id)
        return {"item_id": prog.item_id, "done": prog.done, "total": prog.total}

    @app.post("/api/answer")
    async def api_answer(request: Request) -> Response:
        # async: the indexed reads are short (WAL readers never wait), the write waits on the group commit
        person = ctx.api_user(request)
        try:
            body = json.loads(await request.body())
        except ValueError:
            return JSONResponse({"error": "body: not JSON; send {\"item_id\": ..., \"value\": ...}"},
                                status_code=400)
        if not isinstance(body, dict):
            return JSONResponse({"error": "body: expected a JSON object with item_id and value"}, status_code=400)
        try:
            future = ctx.writer.enqueue(person.id, body.get("item_id"), body.get("value"), body.get("submit_id"))
            stored = store.outcome(await asyncio.wrap_future(future))
        except NotAssigned as exc:
            raise Forbidden(str(exc)) from None
        except SemsimError as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        return JSONResponse({"stored": stored, "duplicate": not stored, "item_id": body["item_id"],
                             "next_item_id": store.next_item(ctx.db, person.id)})


def _image_path(ctx: _Site, person: Row, item_id: int, kind: str) -> str:
    """The file of an item's reconstruction (``rec``) or original (``ori``) if ``person`` may see it: an admin,
    or an annotator with the item in their queue (originals only in the pair task), or any example."""
    if kind not in ("rec", "ori"):
        raise Forbidden("unknown image kind")
    if not 1 <= item_id <= store.MAX_ID:
        raise Forbidden(f"item {item_id}: no such item")
    with ctx.db.read() as s:
        item = s.get(Item, item_id)
    if item is None:
        raise Forbidden(f"item {item_id}: no such item")
    if not person.is_admin:
        if kind == "ori" and ctx.info.task != "pair":
            raise Forbidden("originals are not shown in this task")
        if not item.example and not store.is_assigned(ctx.db, person.id, item_id):
            raise Forbidden(f"item {item_id} is not in your queue")
    return item.reconstruction if kind == "rec" else item.original


def _admin_routes(app: FastAPI, ctx: _Site) -> None:
    """The dashboard, new annotators, downloads."""

    @app.get("/admin", response_class=HTMLResponse)
    def dashboard(request: Request) -> Response:
        person, csrf = ctx.admin(request)
        return ctx.page(request, "admin.html", {"person": person, "csrf": csrf, "d": dashboard_data(ctx.db),
                                                "top_up_errors": ctx.writer.top_up.errors})

    @app.post("/admin/annotators", response_class=HTMLResponse)
    def new_annotator(request: Request, name: str = Form(...), csrf: str = Form(...),
                      is_admin: str = Form("")) -> Response:
        _, expected = ctx.admin(request)
        ctx.check_csrf(csrf, expected)
        try:
            token = add_annotator(ctx.db, name, admin=bool(is_admin))
        except SemsimError as exc:
            return ctx.message(request, "Not created", str(exc), 400)
        link = str(request.base_url).rstrip("/") + f"/start/{token}"
        return ctx.message(request, f"Annotator {name} created", "Send this personal link (shown only now):",
                       link=link, back="/admin")

    @app.get("/admin/export/{name}")
    def export_file(request: Request, name: str) -> Response:
        ctx.admin(request)
        kinds = {"labels.csv": "labels", "labels.parquet": "labels", "labelstudio.json": "labelstudio",
                 "semsim_folders.zip": "zip"}
        if name not in kinds:
            raise Forbidden(f"unknown export {name!r}")
        tmp = Path(tempfile.mkdtemp(prefix="semsim-export-"))
        try:
            path = zip_folders(ctx.db, tmp / name) if kinds[name] == "zip" else export(ctx.db, tmp / name, kinds[name])
        except SemsimError as exc:
            _cleanup(tmp)
            return ctx.message(request, "Nothing to export", str(exc), 409, back="/admin")
        return FileResponse(path, filename=name, background=BackgroundTask(_cleanup, tmp))


def _cleanup(folder: Path) -> None:
    for child in folder.iterdir():
        child.unlink()
    folder.rmdir()


def serve(db_url: str | os.PathLike, host: str = "127.0.0.1", port: int = 8000, *,
          public_url: str | None = None, session_hours: float = sessions.DEFAULT_SESSION_HOURS,
          secure_cookies: bool = False, fd: int | None = None, workers: int = 1) -> None:
    """Run the app with uvicorn until interrupted; remember ``public_url`` (default ``http://host:port``) as
    the address of the links that ``add-annotator`` prints. ``fd``: serve on an inherited listening socket
    instead of binding ``host:port`` (tests and benchmarks hold the socket, so a restart keeps the port).
    ``workers`` > 1: that many server processes share the socket (each with its own group commit; the
    database's write lock orders their commits), for machines with several cores."""
    sock = socket.socket(fileno=fd) if fd is not None else socket.create_server((host, port), backlog=2048)
    if fd is None or public_url:
        db = Database(db_url)
        set_base_url(db, public_url or f"http://{host}:{port}")
        db.dispose()
    options = {"session_hours": session_hours, "secure_cookies": secure_cookies}
    if workers <= 1:
        _run(db_url, sock, options)
        return
    sock.set_inheritable(True)
    code = "import sys, json; from semsim.annotation.app import worker; worker(sys.argv[1], int(sys.argv[2]), " \
           "json.loads(sys.argv[3]), int(sys.argv[4]))"
    children = [subprocess.Popen([sys.executable, "-c", code, str(db_url), str(sock.fileno()), json.dumps(options),
                                  str(os.getpid())], pass_fds=(sock.fileno(),)) for _ in range(workers)]
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):  # Ctrl+C, or a service manager stopping the server
        signal.signal(sig, lambda *_: stop.set())
    try:
        while not stop.wait(0.5) and all(child.poll() is None for child in children):
            pass
    finally:
        for child in children:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        for child in children:
            try:
                child.wait(timeout=30)
            except subprocess.TimeoutExpired:
                child.kill()


def _run(db_url: str | os.PathLike, sock: socket.socket, options: dict) -> None:
    import uvicorn

    app = create_app(db_url, **options)
    uvicorn.Server(uvicorn.Config(app, log_level="warning")).run(sockets=[sock])


def worker(db_url: str, fd: int, options: dict, parent: int) -> None:
    """One server process of ``serve(workers=N)``: serves the inherited socket ``fd`` and exits when its
    parent is gone (no orphan keeps answering after the server was stopped or killed)."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, name="semsim-parent-watch", daemon=True).start()
    _run(db_url, socket.socket(fileno=fd), options)

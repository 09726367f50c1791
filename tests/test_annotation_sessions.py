"""Sessions: they expire, a logout ends them, a link opened in a browser with a live session asks first (no
login CSRF), and an annotator can be deactivated, reactivated and reissued a link."""

from __future__ import annotations

import datetime as dt

from fastapi.testclient import TestClient
from sqlalchemy import update

from annotation_util import csrf_of, login, make_project
from semsim.annotation import reissue, set_active
from semsim.annotation.app import create_app
from semsim.annotation.db import WebSession


def test_sessions_expire_and_logout_ends_them(tmp_path):
    db, tokens = make_project(tmp_path, n_items=4, per_item=1, annotators=1)
    app = create_app(db.url, session_hours=2)
    client = TestClient(app)
    response = client.get(f"/start/{tokens['a0']}", follow_redirects=False)
    cookie = response.headers["set-cookie"]
    assert "Max-Age=7200" in cookie and "HttpOnly" in cookie and "SameSite=strict" in cookie.replace("Strict",
                                                                                                   "strict")
    assert "Secure" not in cookie  # plain http here; --secure-cookies (or https) sets it
    assert client.get("/task").status_code == 200
    with db.write() as s:  # two hours later
        s.execute(update(WebSession).values(expires=dt.datetime(2000, 1, 1)))
    assert client.get("/task").status_code == 403
    csrf = login(client, tokens["a0"])
    session = client.cookies.get("semsim_session")
    assert client.post("/logout", data={"csrf": "forged"}).status_code == 403
    assert client.post("/logout", data={"csrf": csrf}).status_code == 200
    replayed = TestClient(app, cookies={"semsim_session": session})
    assert replayed.get("/task").status_code == 403  # the old cookie is dead on the server too
    secure = TestClient(create_app(db.url, secure_cookies=True))
    assert "Secure" in secure.get(f"/start/{tokens['a0']}", follow_redirects=False).headers["set-cookie"]


def test_start_asks_before_replacing_a_live_session(tmp_path):
    db, tokens = make_project(tmp_path, n_items=4, per_item=1, annotators=2)
    client = TestClient(create_app(db.url))
    csrf = login(client, tokens["a0"])
    # another person's link opened in this browser (for example by a page on another local port)
    page = client.get(f"/start/{tokens['a1']}")
    assert page.status_code == 200 and "signed in as a0" in page.text and 'id="switch"' in page.text
    assert '<span class="who">a0</span>' in client.get("/task").text  # nothing switched
    # a forged confirmation (no CSRF token of the live session) is refused
    assert client.post("/start", data={"token": tokens["a1"], "csrf": "x"}).status_code == 403
    assert '<span class="who">a0</span>' in client.get("/task").text
    # the person at the keyboard confirms
    assert csrf_of(page.text) == csrf  # the confirmation carries the live session's own CSRF token
    page = client.post("/start", data={"token": tokens["a1"], "csrf": csrf})
    assert page.status_code == 200 and '<span class="who">a1</span>' in page.text
    # one's own link again: no question, no new session
    assert client.get(f"/start/{tokens['a1']}", follow_redirects=False).status_code == 303
    assert client.get("/start/not-a-token").status_code == 403


def test_deactivate_reactivate_and_reissue(tmp_path):
    db, tokens = make_project(tmp_path, n_items=6, per_item=1, annotators=2)
    app = create_app(db.url)
    browser = TestClient(app)
    login(browser, tokens["a0"])
    set_active(db, "a0", False)
    assert browser.get("/task").status_code == 403  # sessions end with the deactivation
    assert TestClient(app).get(f"/start/{tokens['a0']}").status_code == 403
    counts = set_active(db, "a0", True)
    assert counts["moved"] > 0  # work comes back to the reactivated annotator
    assert "0 / 3" in TestClient(app).get(f"/start/{tokens['a0']}").text
    fresh = reissue(db, "a0")
    assert TestClient(app).get(f"/start/{tokens['a0']}").status_code == 403  # the old link is revoked
    assert "0 / 3" in TestClient(app).get(f"/start/{fresh}").text

"""A real browser (Playwright driving Debian's chromium-headless-shell) walks an annotator through a queue
with the keyboard and an admin through the dashboard and an export. Skips when no browser is installed."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from playwright.sync_api import expect, sync_playwright
from sqlalchemy import select

from annotation_util import Server, make_project, make_set
from semsim.annotation import add_annotator, init_project
from semsim.annotation.db import Annotator, Answer, Assignment, Database, Item
from semsim.data.labels import read_labels

pytestmark = pytest.mark.browser

BROWSER_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--no-first-run"]


def _browser_binary() -> str | None:
    candidates = [os.environ.get("SEMSIM_CHROMIUM"), shutil.which("chromium-headless-shell"),
                  "/usr/lib/chromium/chromium-headless-shell", shutil.which("chromium")]
    return next((c for c in candidates if c and Path(c).is_file()), None)


@pytest.fixture(scope="module")
def browser():
    binary = _browser_binary()
    if binary is None:
        pytest.skip("no chromium-headless-shell found (`apt-get install chromium-headless-shell`; "
                    ".ci/run does it)")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=binary, args=BROWSER_ARGS)
        yield b
        b.close()


def _answers(db: Database, name: str) -> dict[int, int]:
    with db.read() as s:
        person = s.scalar(select(Annotator.id).where(Annotator.name == name))
        return dict(s.execute(select(Answer.item_id, Answer.value)
                              .where(Answer.annotator_id == person)).all())


def test_annotator_keyboard_walk(browser, tmp_path):
    db, tokens = make_project(tmp_path, n_items=5, per_item=1, annotators=1)
    with Server(db) as base:
        page = browser.new_page()
        page.goto(f"{base}/start/{tokens['a0']}")
        assert page.locator("#progress").inner_text() == "0 / 5"
        size = page.eval_on_selector("#reconstruction", "img => [img.naturalWidth, img.complete]")
        assert size == [256, True]  # the 8x8 image arrives upscaled (nearest neighbour)

        pressed: dict[int, int] = {}
        for k, key in enumerate(["1", "3", "-"]):  # cat, car, can't tell
            item = int(page.locator("input[name=item_id]").get_attribute("value"))
            page.keyboard.press(key)
            expect(page.locator("#progress")).to_have_text(f"{k + 1} / 5")
            pressed[item] = {"1": 0, "3": 2, "-": -1}[key]
        assert _answers(db, "a0") == pressed

        # Backspace undoes the last answer and shows that item again
        last = list(pressed)[-1]
        page.keyboard.press("Backspace")
        expect(page.locator("#progress")).to_have_text("2 / 5")
        assert int(page.locator("input[name=item_id]").get_attribute("value")) == last
        del pressed[last]
        assert _answers(db, "a0") == pressed

        for k in range(3):
            item = int(page.locator("input[name=item_id]").get_attribute("value"))
            page.keyboard.press("2")
            expect(page.locator("#progress")).to_have_text(f"{k + 3} / 5")
            pressed[item] = 1
        assert "All done" in page.locator("h1").inner_text()
        assert _answers(db, "a0") == pressed and len(pressed) == 5
        # the annotator's browser cannot open the dashboard
        assert page.goto(f"{base}/admin").status == 403
        page.close()


def test_admin_dashboard_and_export(browser, tmp_path):
    db, tokens = make_project(tmp_path, n_items=4, per_item=2, annotators=2)
    with Server(db) as base:
        for name in ("a0", "a1"):
            page = browser.new_page()
            page.goto(f"{base}/start/{tokens[name]}")
            for _ in range(4):
                # a0 picks the true class, a1 always "cat": agreement on half of the items
                with db.read() as s:
                    item = s.get(Item, int(page.locator("input[name=item_id]").get_attribute("value")))
                key = str(item.label + 1) if name == "a0" else "1"
                done = int(page.locator("#progress").inner_text().split(" / ")[0])
                page.keyboard.press(key)
                expect(page.locator("#progress")).to_have_text(f"{done + 1} / 4")
            page.close()

        context = browser.new_context(accept_downloads=True)
        page = context.new_page()
        page.goto(f"{base}/start/{tokens['admin']}")
        assert page.url.endswith("/admin")
        assert page.locator("#total-answers").inner_text() == "8"
        rows = page.locator("#annotators tr").all_inner_texts()
        assert any(r.startswith("a0") and "\t4\t4\t" in r for r in rows)
        assert page.locator("#agreement tr.overall").count() == 1
        assert page.locator("#disputed tr").count() >= 2  # header plus the items a0 and a1 disagree on

        # create an annotator from the dashboard: the link is shown once and works
        page.fill("#new-annotator input[name=name]", "newcomer")
        page.click("#new-annotator button")
        link = page.locator("#link").inner_text()
        assert "/start/" in link
        other = browser.new_page()
        other.goto(link)
        # every item already has its two judges: the newcomer's queue is empty, and the page says so
        assert other.locator("#empty").inner_text() == "Nothing to do yet"
        assert "All done" not in other.content()
        other.close()

        # export the label table through the browser
        page.goto(f"{base}/admin")
        with page.expect_download() as info:
            page.click("#export-csv")
        target = tmp_path / "downloaded.csv"
        info.value.save_as(target)
        labels = read_labels(target)
        assert len(labels) == 4 and (labels["n_judges"] == 2).all()
        assert set(labels["label_source"]) == {"human:test"}
        context.close()


def test_many_classes_filter_by_typing(browser, tmp_path):
    names = ["apple", "bee", "camel", "dog", "dolphin", "eagle", "fox", "goat", "horse", "lion", "mouse",
             "otter"]
    make_set(tmp_path / "setA", 3, n_classes=12)
    init_project(tmp_path / "many.sqlite", [tmp_path / "setA"], per_item=1, study="many", classes=names)
    db = Database(tmp_path / "many.sqlite")
    token = add_annotator(db, "typist")
    with Server(db) as base:
        page = browser.new_page()
        page.goto(f"{base}/start/{token}")
        assert page.locator("button.choice").count() == 15  # 12 classes, "can't tell", broken image, skip
        first = int(page.locator("input[name=item_id]").get_attribute("value"))
        page.keyboard.type("dol")  # the filter box has the focus: only "dolphin" is left
        assert page.locator("button.choice:visible").all_inner_texts()[0].strip() == "dolphin"
        page.keyboard.press("Enter")
        expect(page.locator("#progress")).to_have_text("1 / 3")
        second = int(page.locator("input[name=item_id]").get_attribute("value"))
        # inside the filter box keys only type: Backspace on the empty box undoes nothing, "-" is a character
        page.keyboard.press("Backspace")
        page.keyboard.press("-")
        assert page.locator("#filter").input_value() == "-"
        page.keyboard.press("Backspace")
        page.keyboard.press("Backspace")
        assert page.locator("#progress").inner_text() == "1 / 3"
        assert _answers(db, "typist") == {first: names.index("dolphin")}
        # Escape leaves the box; then "-" is "can't tell"
        page.keyboard.press("Escape")
        page.keyboard.press("-")
        expect(page.locator("#progress")).to_have_text("2 / 3")
        assert _answers(db, "typist") == {first: names.index("dolphin"), second: -1}
        page.close()


def test_digit_study_keys_are_the_digits(browser, tmp_path):
    make_set(tmp_path / "digits", 10, n_classes=10)  # labels 0..9: the classes are named "0".."9"
    init_project(tmp_path / "d.sqlite", [tmp_path / "digits"], per_item=1, study="digits")
    db = Database(tmp_path / "d.sqlite")
    token = add_annotator(db, "typist")
    with Server(db) as base:
        page = browser.new_page()
        page.goto(f"{base}/start/{token}")
        buttons = page.locator("button.choice:not(.cant):not(.action)")
        assert buttons.count() == 10
        for k in range(10):  # every button shows its key, and the key is the class's own digit
            button = buttons.nth(k)
            assert button.get_attribute("data-key") == button.get_attribute("data-text")
            assert button.locator("kbd").inner_text() == button.get_attribute("data-text")
        typed: dict[int, int] = {}
        for k, digit in enumerate("7031598264"):
            item = int(page.locator("input[name=item_id]").get_attribute("value"))
            page.keyboard.press(digit)
            expect(page.locator("#progress")).to_have_text(f"{k + 1} / 10")
            typed[item] = int(digit)
        assert _answers(db, "typist") == typed  # pressing "7" stored class 7, and so on
        page.close()


def test_instructions_flag_and_skip(browser, tmp_path):
    make_set(tmp_path / "setA", 4)
    make_set(tmp_path / "examples", 2, seed=5)
    (tmp_path / "howto.txt").write_text("Look at the picture for a second.\n\nThen pick its class.\n")
    init_project(tmp_path / "i.sqlite", [tmp_path / "setA"], per_item=1, study="i", classes=["cat", "dog", "car"],
                 instructions=(tmp_path / "howto.txt").read_text(), examples=[tmp_path / "examples"])
    db = Database(tmp_path / "i.sqlite")
    token = add_annotator(db, "ann")
    other = add_annotator(db, "other")
    with Server(db) as base:
        page = browser.new_page()
        page.goto(f"{base}/start/{token}")
        assert page.url.endswith("/instructions")  # before the first answer
        assert page.locator("#instructions p").all_inner_texts() == ["Look at the picture for a second.",
                                                                     "Then pick its class."]
        shown = page.eval_on_selector_all(".example img", "imgs => imgs.map(i => i.naturalWidth)")
        assert shown == [256, 256]  # the examples' images load for an annotator who does not judge them
        assert page.locator(".example figcaption").all_inner_texts() == ["answer: cat", "answer: dog"]
        page.click("#begin")
        flagged = int(page.locator("input[name=item_id]").get_attribute("value"))
        page.keyboard.press("f")  # broken image
        expect(page.locator("#progress")).to_have_text("1 / 2")
        skipped = int(page.locator("input[name=item_id]").get_attribute("value"))
        page.keyboard.press("s")  # skip
        expect(page.locator("h1")).to_have_text("All done, thank you!")
        assert _answers(db, "ann") == {flagged: -2, skipped: -3}
        # neither is a judgment: both items go to the other annotator (top-up after the skip and the flag)
        for _ in range(100):
            with db.read() as s:
                person = s.scalar(select(Annotator.id).where(Annotator.name == "other"))
                theirs = set(s.scalars(select(Assignment.item_id).where(Assignment.annotator_id == person)))
            if {flagged, skipped} <= theirs:
                break
            page.wait_for_timeout(100)
        assert {flagged, skipped} <= theirs
        second = browser.new_page()
        second.goto(f"{base}/start/{other}")
        second.goto(f"{base}/task")
        assert second.locator("#progress").inner_text() == "0 / 4"
        second.close()
        page.close()

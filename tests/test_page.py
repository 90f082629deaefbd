"""The page of `uqa serve` (GET /) in a real browser: the system's chromium driven by Playwright.

A temporary git project registers three versions with the pipeline's own stage code (v0.0.1 promoted,
v0.0.2 promoted over it, v0.0.3 refused by the gate); `uqa serve --model prod` serves it. The page asks
five held-out UQA questions and must mark exactly `/v1/answer`'s answer in the context, lay Urdu out
right-to-left (and Latin left-to-right), show every version in the history chart and table, show the
server's errors inline (never an alert), ask for an API key once per tab, and never put text in as HTML.
The page's Content-Security-Policy holds throughout (no eval: the tests wait with Playwright's `expect`)."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import pandas as pd
import pytest
from conftest import UQA_DIR, demo_tiny_params, make_project, needs_shared
from playwright.sync_api import expect
from test_serve_e2e import Server

pytestmark = pytest.mark.slow

KEY = "page-test-key-7f3a"


def _train_and_register(root: Path, overrides: dict) -> dict:
    from tasks.download import download
    from tasks.evaluate import evaluate
    from tasks.filter import filter_rows
    from tasks.register import register
    from tasks.tokenize import tokenize_splits
    from tasks.train_recipe import run as train_recipe
    from uqa.params.files import apply_overrides, load_params
    from uqa.workspace.dvc_ops import working_dir

    apply_overrides(root / "params.yaml", overrides)
    p = load_params(root / "params.yaml")
    with working_dir(root):
        download(p.data)
        filter_rows(p.data)
        tokenize_splits(p)
        train_recipe(p)
        evaluate(p)
        return register(p, root)


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    root = make_project(tmp_path_factory.mktemp("page") / "project", demo_tiny_params(epochs=1, logging_steps=50))
    reports = [_train_and_register(root, {}),
               _train_and_register(root, {"train": {"epochs": 3}}),  # more training: at least as good
               _train_and_register(root, {"train": {"seed": 7}, "register": {"min_f1": 100.0}})]
    assert [(r["version"], r["promoted"]) for r in reports] == [("v0.0.1", True), ("v0.0.2", True),
                                                               ("v0.0.3", False)], reports
    return root


@pytest.fixture(scope="module")
def server(project):
    s = Server(project, "--max-request-windows", "64")  # a long context is refused: the page shows why
    try:
        s.wait_ready()
        yield s
    finally:
        s.stop()


@pytest.fixture
def page(browser, server):
    """A tab on the page; an alert or a script error fails the test (errors are shown inline)."""
    context = browser.new_context(viewport={"width": 1200, "height": 900})
    tab = context.new_page()
    problems: list[str] = []
    tab.on("dialog", lambda d: (problems.append(f"dialog: {d.message}"), d.dismiss()))
    tab.on("pageerror", lambda e: problems.append(f"script error: {e}"))
    tab.on("console", lambda m: problems.append(f"console: {m.text}")
           if m.type == "error" and "Failed to load resource" not in m.text else None)
    tab.goto(server.url + "/")
    expect(tab.locator("#version")).to_have_text(re.compile(r"^v\d"))
    yield tab
    context.close()
    assert problems == []


def ask(tab, question: str, context: str, submit: str = "enter") -> None:
    tab.fill("#question", question)
    tab.fill("#context", context)
    with tab.expect_response(lambda r: r.request.method == "POST" and r.url.endswith("/")):
        if submit == "enter":
            tab.press("#question", "Enter")
        else:
            tab.click("#ask")
    expect(tab.locator("#ask")).to_be_enabled()


@needs_shared
def test_five_uqa_questions_are_marked_as_the_api_answers(page, server):
    rows = pd.read_parquet(UQA_DIR / "validation.parquet").drop_duplicates("id").head(5)
    for i, row in enumerate(rows.itertuples()):
        ask(page, row.question, row.context, submit="enter" if i % 2 == 0 else "click")
        api = httpx.post(f"{server.url}/v1/answer", json={"question": row.question, "context": row.context},
                         timeout=60).json()
        passage = page.locator("#answer")
        assert passage.text_content() == row.context  # the whole paragraph, as text
        if api["no_answer"]:
            assert page.locator("#answer mark").count() == 0
            continue
        mark = page.locator("#answer mark")
        assert mark.count() == 1 and mark.text_content() == api["answer"], (row.id, api)
        # the mark is where the API says: the text before it is the context up to `start`
        before = page.evaluate("document.querySelector('#answer mark').previousSibling.textContent")
        assert before == row.context[: api["start"]]
        assert page.text_content("#answer-text") == api["answer"]
        assert page.text_content("#answer-version") == api["model_version"] == page.text_content("#version") == "v0.0.2"
        assert float(page.text_content("#score")) == pytest.approx(api["score"], abs=1e-4)
        alternatives = page.locator("#alternatives li")
        assert 1 <= alternatives.count() <= 2  # top-3: the best is the answer, the others listed


@needs_shared
def test_urdu_is_laid_out_right_to_left_and_latin_left_to_right(page):
    row = pd.read_parquet(UQA_DIR / "validation.parquet").drop_duplicates("id").iloc[7]
    ask(page, row.question, row.context)
    geometry = """(id) => {
        const el = document.getElementById(id);
        const range = document.createRange();
        const text = [...el.childNodes].find((n) => n.nodeType === Node.TEXT_NODE && n.textContent.trim()) ||
                     el.querySelector('mark').firstChild;
        range.setStart(text, 0); range.setEnd(text, 1);
        const first = range.getBoundingClientRect(), box = el.getBoundingClientRect();
        return {direction: getComputedStyle(el).direction, rtl: el.matches(':dir(rtl)'),
                fromRight: box.right - first.right, fromLeft: first.left - box.left, width: box.width};
    }"""
    urdu = page.evaluate(geometry, "answer")
    assert urdu["direction"] == "rtl" and urdu["rtl"], urdu
    assert urdu["fromRight"] < 40 < urdu["fromLeft"], urdu  # the first character is on the right
    assert page.evaluate("getComputedStyle(document.getElementById('context')).direction") == "rtl"
    assert page.evaluate("document.getElementById('question').matches(':dir(rtl)')")

    ask(page, "Where is the library?", "The new library opened in 1927. It is in Chitral, near the river.")
    latin = page.evaluate(geometry, "answer")
    assert latin["direction"] == "ltr" and not latin["rtl"], latin
    assert latin["fromLeft"] < 40 < latin["fromRight"], latin


def test_history_shows_every_version_with_prod_marked(page, server):
    versions = httpx.get(f"{server.url}/v1/versions", timeout=30).json()
    assert versions["prod"] == versions["served"] == "v0.0.2"
    assert [v["version"] for v in versions["versions"]] == ["v0.0.1", "v0.0.2", "v0.0.3"]
    assert [v["promoted"] for v in versions["versions"]] == [True, True, False]
    assert [p["version"] for p in versions["prod_history"]] == ["v0.0.1", "v0.0.2"]
    assert versions["prod_history"][0]["until"] == versions["prod_history"][1]["from"]
    assert versions["prod_history"][1]["until"] is None

    page.wait_for_selector("#history-svg .point")
    points = page.eval_on_selector_all("#history-svg .point", """(gs) => gs.map((g) => ({
        version: g.dataset.version, f1: Number(g.dataset.f1), promoted: g.dataset.promoted === 'true',
        prod: g.classList.contains('prod'), cy: Number(g.querySelector('.dot').getAttribute('cy'))}))""")
    assert [p["version"] for p in points] == ["v0.0.1", "v0.0.2", "v0.0.3"]
    assert [p["prod"] for p in points] == [False, True, False]
    for point, record in zip(points, versions["versions"], strict=True):
        assert point["f1"] == pytest.approx(record["f1"]) and point["promoted"] == record["promoted"]
    # a higher F1 is drawn higher (smaller y)
    by_f1 = sorted(points, key=lambda p: p["f1"])
    assert all(a["cy"] >= b["cy"] for a, b in zip(by_f1, by_f1[1:], strict=False))
    assert page.locator("#history-svg .prod-ring").count() == 1

    rows = page.locator("#history-table tbody tr")
    assert rows.count() == 3
    assert [rows.nth(i).get_attribute("data-version") for i in range(3)] == ["v0.0.3", "v0.0.2", "v0.0.1"]
    prod_row = page.locator("#history-table tbody tr.prod")
    assert prod_row.get_attribute("data-version") == "v0.0.2" and "now" in prod_row.text_content()
    for record in versions["versions"]:
        row_text = page.locator(f"#history-table tr[data-version='{record['version']}']").text_content()
        assert f"{record['f1']:.2f}" in row_text and record["registered_at"].replace("T", " ") in row_text
    page.screenshot(path=str(server.log.name).replace(".log", "-page.png"), full_page=True)


def test_errors_are_shown_inline_and_text_is_never_html(page):
    page.fill("#question", "   ")
    page.fill("#context", "x")
    page.click("#ask")
    assert page.is_visible("#error") and "question" in page.text_content("#error")

    # the server's refusal: more windows of the model than the server takes per request (422, the cap named)
    ask(page, "کیا؟", "یہاں 878 افراد کام کرتے ہیں۔ " * 800)
    error = page.text_content("#error")
    assert page.is_visible("#error") and "--max-request-windows" in error and "422" in error, error

    hostile = 'یہاں <img src=x onerror="window.pwned=1"> <b>کتب خانہ</b> 1927 میں کھلا۔'
    ask(page, "کب کھلا؟", hostile)
    assert page.locator("#answer").text_content() == hostile
    assert page.locator("#answer img, #answer b").count() == 0
    assert page.evaluate("window.pwned === undefined")
    assert not page.is_visible("#error")


def test_the_page_asks_for_the_key_once_per_tab(browser, project, tmp_path):
    (tmp_path / "key").write_text(KEY + "\n")
    keyed = Server(project, "--api-key-file", str(tmp_path / "key"))
    try:
        keyed.wait_ready()
        assert httpx.get(f"{keyed.url}/").status_code == 200  # the page itself holds nothing secret
        assert httpx.get(f"{keyed.url}/v1/versions").status_code == 401
        context = browser.new_context()
        tab = context.new_page()
        dialogs: list[str] = []
        tab.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
        tab.goto(keyed.url + "/")
        tab.wait_for_selector("#key-form:not([hidden])")
        tab.fill("#api-key", "wrong")
        tab.press("#api-key", "Enter")
        expect(tab.locator("#key-form label")).to_contain_text("refused")
        tab.fill("#api-key", KEY)
        tab.press("#api-key", "Enter")
        expect(tab.locator("#version")).to_have_text("v0.0.2")
        tab.wait_for_selector("#history-svg .point")
        ask(tab, "نیا کتب خانہ کا افتتاح کب ہوا؟", "یہاں 878 افراد کام کرتے ہیں۔ اس کا افتتاح 1927 میں ہوا۔")
        assert tab.locator("#answer mark").count() == 1
        tab.reload()  # the same tab: the key is remembered
        expect(tab.locator("#version")).to_have_text("v0.0.2")
        assert tab.is_hidden("#key-form")
        other = context.new_page()  # another tab asks again (sessionStorage is per tab)
        other.goto(keyed.url + "/")
        other.wait_for_selector("#key-form:not([hidden])")
        assert dialogs == []
        context.close()
        log = keyed.output()
        assert KEY not in log and not re.search(r"status=5\d\d", log)
    finally:
        keyed.stop()

"""The notebooks as a person meets them: JupyterLab in a real browser.

A JupyterLab server from this environment (127.0.0.1, a random token, config, runtime, settings and workspace
folders of its own) serves a temporary copy of notebooks/ and data/, since JupyterLab writes into what it
opens. Chromium, driven headless by Playwright, opens the notebooks as they are committed (untrusted, as on a
fresh clone), runs them from the Run menu, and types into their widgets with real key presses.

Needs Chromium (Debian's `apt-get install chromium`; elsewhere MINIST_CHROMIUM=/path/to/chrome) and Playwright
for Python (the dev extra; never `playwright install`, which downloads a browser). Without them the tests are
skipped with the reason, except where MINIST_REQUIRE_BROWSER=1 (.ci/run sets it): there they fail.

    LAB_ALL_NOTEBOOKS=1   also open and run every notebook in the browser (13 minutes on 2 AVX-512 EPYC cores)
    LAB_SCREENSHOTS=dir   where screenshots of failures go (default test-artifacts/lab/)
    LAB_DOCS=1            write the README's screenshots into docs/
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted(p.relative_to(ROOT).as_posix() for p in ROOT.glob("notebooks/**/*.ipynb")
                   if ".ipynb_checkpoints" not in p.parts)
ALL = os.environ.get("LAB_ALL_NOTEBOOKS") == "1"
SCREENSHOTS = Path(os.environ.get("LAB_SCREENSHOTS", ROOT / "test-artifacts" / "lab"))
# As root and on a closed network, Chromium needs these; the background-networking ones stop it calling home.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-sync",
                 "--disable-background-networking", "--disable-component-update"]
SETTINGS = {  # JupyterLab user settings for a quiet, complete page
    "@jupyterlab/apputils-extension/notification": {"fetchNews": "false", "checkForUpdates": False},
    "@jupyterlab/notebook-extension/tracker": {"windowingMode": "none"},  # every cell in the page, to count
}
# What a reader must never see on opening: saved widget views shown as text, a progress bar that never
# moved, a saved widget that cannot draw.
FALLBACKS = re.compile(r"interactive\(children|(?<![\d.])0%\||Error displaying widget|[Mm]odel not found")

pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.real_model]  # the notebooks load it


def chromium() -> str | None:
    """The Chromium to drive: $MINIST_CHROMIUM, else Debian's /usr/bin/chromium, else one on the PATH."""
    for candidate in (os.environ.get("MINIST_CHROMIUM"), "/usr/bin/chromium", shutil.which("chromium"),
                      shutil.which("chromium-browser")):
        if candidate and Path(candidate).is_file():
            return candidate
    return None


def missing() -> str | None:
    """Why the browser tests cannot run here, or None."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "Playwright for Python is not installed (the dev extra has it)"
    if chromium() is None:
        return "no Chromium: apt-get install chromium, or set MINIST_CHROMIUM=/path/to/chrome"
    return None


@dataclass
class Lab:
    root: Path  # the temporary copy JupyterLab serves
    url: str
    token: str

    def link(self, notebook: str) -> str:
        return f"{self.url}lab/tree/{notebook}?token={self.token}&reset"

    def api(self, path: str, method: str = "GET"):
        request = urllib.request.Request(f"{self.url}api/{path}", method=method,
                                         headers={"Authorization": f"token {self.token}"})
        with urllib.request.urlopen(request, timeout=10) as response:
            body = response.read()
        return json.loads(body) if body else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    reason = missing()
    if reason and os.environ.get("MINIST_REQUIRE_BROWSER") == "1":
        pytest.fail(f"MINIST_REQUIRE_BROWSER=1, but {reason}")
    if reason:
        pytest.skip(reason)
    base = tmp_path_factory.mktemp("lab")
    root = base / "root"
    for folder in ("notebooks", "data"):
        shutil.copytree(ROOT / folder, root / folder, ignore=shutil.ignore_patterns(".ipynb_checkpoints", "*.py"))
    for name, values in SETTINGS.items():
        path = base / "settings" / f"{name}.jupyterlab-settings"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(values))
    env = {**os.environ, "JUPYTER_CONFIG_DIR": str(base / "config"), "JUPYTER_RUNTIME_DIR": str(base / "runtime"),
           "JUPYTER_DATA_DIR": str(base / "data"), "IPYTHONDIR": str(base / "ipython")}
    port = free_port()
    lab = Lab(root, f"http://127.0.0.1:{port}/", secrets.token_hex(24))
    command = [sys.executable, "-m", "jupyterlab", "--no-browser", "--ServerApp.ip=127.0.0.1",
               f"--ServerApp.port={port}", "--ServerApp.port_retries=0",
               f"--IdentityProvider.token={lab.token}", f"--ServerApp.root_dir={root}",
               f"--LabApp.user_settings_dir={base / 'settings'}", f"--LabApp.workspaces_dir={base / 'workspaces'}"]
    if os.geteuid() == 0:
        command.append("--allow-root")  # containers and CI run as root
    log = (base / "lab.log").open("w")
    server = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                lab.api("status")
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"JupyterLab did not start:\n{(base / 'lab.log').read_text()[-3000:]}")
                time.sleep(0.5)
        yield lab
    finally:
        server.terminate()  # SIGTERM: the server shuts its kernels down and exits
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()


@pytest.fixture(scope="module")
def browser(lab):
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=20_000)  # a kernel on a busy 2-core machine can take seconds to answer a key
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium(), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser, lab, request):
    context = browser.new_context(viewport={"width": 1200, "height": 900})
    page = context.new_page()
    page.set_default_timeout(30_000)
    yield page
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        shot = SCREENSHOTS / f"{re.sub(r'[^A-Za-z0-9_.-]+', '_', request.node.name)}.png"
        page.screenshot(path=shot, full_page=True)
        print(f"screenshot of the failure: {shot}")
    context.close()
    for kernel in lab.api("kernels"):  # free the cores for the next test
        lab.api(f"kernels/{kernel['id']}", method="DELETE")


# What the page shows, read from JupyterLab's own markers.
BUSY = """() => document.querySelector('.jp-Notebook-ExecutionIndicator')?.dataset.status !== 'idle'
    || [...document.querySelectorAll('.jp-Notebook .jp-CodeCell .jp-InputPrompt')]
           .some(prompt => prompt.textContent.includes('*'))"""
SAVED = "() => !document.querySelector('.lm-TabBar-tab.jp-mod-current.jp-mod-dirty')"


def open_notebook(page, lab: Lab, notebook: str) -> None:
    """Open ``notebook`` in JupyterLab and wait for its kernel to be idle."""
    page.goto(lab.link(notebook))
    page.wait_for_selector(".jp-Notebook .jp-Cell")
    wait_until_finished(page, timeout_s=120)


def wait_until_finished(page, timeout_s: float, hold_s: float = 3.0) -> None:
    """Until the kernel is idle and no cell shows [*], held for ``hold_s`` seconds (a cell may start late)."""
    deadline = time.monotonic() + timeout_s
    quiet_since = None
    while time.monotonic() < deadline:
        if page.evaluate(BUSY):
            quiet_since = None
        elif quiet_since is None:
            quiet_since = time.monotonic()
        elif time.monotonic() - quiet_since >= hold_s:
            return
        page.wait_for_timeout(250)
    raise AssertionError(f"the notebook was still running after {timeout_s:.0f} s")


def menu(page, top: str, item: str) -> None:
    page.locator("#jp-MainMenu").get_by_text(top, exact=True).click()
    page.locator(".lm-Menu-content").get_by_text(item, exact=True).click()


def run_all(page, timeout_s: float = 600) -> None:
    """Clear every output, then Run All Cells, as a reader would from the menus, and wait for the end."""
    menu(page, "Edit", "Clear Outputs of All Cells")
    menu(page, "Run", "Run All Cells")
    wait_until_finished(page, timeout_s)


def save(page, lab: Lab, notebook: str) -> dict:
    """Save with Ctrl+S, as a reader would, and return the notebook as written to disk."""
    page.keyboard.press("Control+s")
    page.wait_for_function(SAVED)
    page.wait_for_timeout(500)
    return json.loads((lab.root / notebook).read_text(encoding="utf-8"))


def assert_ran_cleanly(page, lab: Lab, notebook: str) -> None:
    """Every code cell ran (it has a number) and none raised, read from the notebook JupyterLab saved."""
    cells = [c for c in save(page, lab, notebook)["cells"] if c["cell_type"] == "code" and "".join(c["source"])]
    assert [c["id"] for c in cells if c["execution_count"] is None] == [], "cells that did not run"
    errors = [f"{o['ename']}: {o['evalue']}" for c in cells for o in c["outputs"] if o["output_type"] == "error"]
    assert errors == [], "cells that raised"
    printed = ["".join(o["text"]) for c in cells for o in c["outputs"] if o["output_type"] == "stream"]
    assert [t for t in printed if "Traceback (most recent call last)" in t] == [], "a traceback printed (a thread's?)"


def run_and_find_the_widget(page, lab: Lab, notebook: str):
    """Open ``notebook``, Run All, check that it ran cleanly, and return its one live `interact` widget."""
    from playwright.sync_api import expect

    open_notebook(page, lab, notebook)
    run_all(page)
    assert_ran_cleanly(page, lab, notebook)
    widget = page.locator(".widget-interact")
    expect(widget).to_have_count(1)
    return widget


def type_into(page, box, text: str) -> None:
    """Empty ``box`` and type ``text`` into it key by key."""
    box.scroll_into_view_if_needed()
    box.click()
    page.keyboard.press("Control+A")
    page.keyboard.press("Backspace")
    page.keyboard.type(text, delay=40)


def docs_shot(locator, name: str) -> None:
    """With LAB_DOCS=1, save a screenshot of ``locator`` as docs/``name``, in 64 colours to stay small."""
    if os.environ.get("LAB_DOCS") != "1":
        return
    from PIL import Image

    path = ROOT / "docs" / name
    path.parent.mkdir(exist_ok=True)
    locator.screenshot(path=path)
    Image.open(path).convert("RGB").quantize(64).save(path, optimize=True)


@pytest.mark.parametrize("notebook", NOTEBOOKS if ALL else [
    "notebooks/00_quickstart.ipynb", "notebooks/01_tokenization.ipynb", "notebooks/04_semantic_search.ipynb",
    "notebooks/06_fine_tuning.ipynb", "notebooks/08_speed.ipynb", "notebooks/09_quantization.ipynb",
    "notebooks/10_choosing_a_model.ipynb", "notebooks/11_retrieve_and_rerank.ipynb",
    "notebooks/cookbook/01_faq_search.ipynb", "notebooks/cookbook/07_rerank.ipynb",
    "notebooks/cookbook/08_vector_database.ipynb", "notebooks/solutions/04_semantic_search.ipynb",
    "notebooks/solutions/cookbook_01_faq_search.ipynb"])
def test_first_open_reads_right_and_saving_changes_nothing(page, lab, notebook):
    """A fresh clone's notebook, opened untrusted: no widget text fallbacks, no unfinished bars, and
    opening and saving it (the kernel started, so JupyterLab rewrites its metadata) leaves the file as it was."""
    open_notebook(page, lab, notebook)
    text = page.locator(".jp-Notebook").inner_text()
    assert not FALLBACKS.findall(text), "a reader sees widget fallbacks or unfinished bars"
    if notebook == "notebooks/00_quickstart.ipynb":
        docs_shot(page.locator(".jp-NotebookPanel"), "lab_00_quickstart.png")
    save(page, lab, notebook)
    assert (lab.root / notebook).read_bytes() == (ROOT / notebook).read_bytes(), "open and save changed the file"


def test_token_box_shows_the_ids_of_what_is_typed(page, lab, real_model_dir):
    from playwright.sync_api import expect
    from transformers import AutoTokenizer

    widget = run_and_find_the_widget(page, lab, "notebooks/01_tokenization.ipynb")
    reference = AutoTokenizer.from_pretrained(real_model_dir)  # transformers' own tokenizer for the model

    def tokens(text):
        ids = reference(text)["input_ids"]
        return str(list(zip(reference.convert_ids_to_tokens(ids), ids, strict=True)))

    type_into(page, widget.locator("input"), "Tokenizers")
    expect(widget.locator(".widget-output")).to_have_text(tokens("Tokenizers"))
    page.keyboard.type(" split unbelievable words", delay=40)  # the output follows each key
    expect(widget.locator(".widget-output")).to_have_text(tokens("Tokenizers split unbelievable words"))
    docs_shot(page.locator(".jp-CodeCell").filter(has=widget), "lab_01_token_box.png")


def test_search_box_finds_the_typed_question_and_the_slider_sets_the_rows(page, lab, real_model_dir):
    import pandas as pd
    from playwright.sync_api import expect
    from sentence_transformers import SentenceTransformer, util

    widget = run_and_find_the_widget(page, lab, "notebooks/04_semantic_search.ipynb")
    rows = widget.locator(".widget-output table tbody tr")
    expect(rows).to_have_count(5)  # top_k's default

    # The top hit for the question, by sentence-transformers over the notebook's cache: the corpus, then the
    # document the notebook adds.
    question = "Which animal has three hearts?"
    documents = [*pd.read_json(ROOT / "data" / "corpus.jsonl", lines=True)["text"],
                 "Octopuses have three hearts and blue blood."]
    model = SentenceTransformer(str(real_model_dir), device="cpu")
    top = util.semantic_search(model.encode(question), model.encode(documents), top_k=1)[0][0]
    type_into(page, widget.locator(".widget-text input"), question)
    expect(rows.first.locator("td").last).to_have_text(documents[top["corpus_id"]])

    handle = widget.locator(".widget-slider .noUi-handle")
    handle.focus()
    for _ in range(3):
        page.keyboard.press("ArrowRight")
    expect(widget.locator(".widget-readout")).to_have_text("8")
    expect(rows).to_have_count(8)
    docs_shot(page.locator(".jp-CodeCell").filter(has=widget), "lab_04_search_box.png")


def test_compare_box_scores_the_typed_model(page, lab):
    from playwright.sync_api import expect

    widget = run_and_find_the_widget(page, lab, "notebooks/10_choosing_a_model.ipynb")
    # The Hub id of the model the notebook already scored as "all-MiniLM-L6-v2": the same scores must come back.
    name = "sentence-transformers/all-MiniLM-L6-v2"
    type_into(page, widget.locator("input"), name)
    widget.get_by_role("button").click()
    table = widget.locator(".widget-output table")
    expect(table.locator("tbody th", has_text=name)).to_have_count(1, timeout=120_000)

    def scores(label):
        row = table.locator("tbody tr", has=page.locator("th", has_text=re.compile(f"^{re.escape(label)}$")))
        return row.locator("td").all_inner_texts()[:3]  # the three quality columns (texts/s is this run's)

    assert scores(name) == scores("all-MiniLM-L6-v2")
    assert len(scores(name)) == 3


@pytest.mark.parametrize("notebook", NOTEBOOKS if ALL else [pytest.param("", id="all", marks=pytest.mark.skip(
    reason="LAB_ALL_NOTEBOOKS=1 runs every notebook in the browser (about 13 minutes)"))])
def test_every_notebook_runs_in_the_browser(page, lab, notebook):
    open_notebook(page, lab, notebook)
    run_all(page)
    assert_ran_cleanly(page, lab, notebook)

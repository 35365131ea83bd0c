"""Browser tests: the built web client (web/dist) served by a live daphne,
driven in Debian's Chromium by Playwright (never a downloaded browser).

They skip, saying why, without Chromium or without a build; under CI=true
they fail instead. One server per test module keeps the suite lean."""
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.live import BASE_DIR, LiveDatabase, LiveServer

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
DIST = BASE_DIR / "web" / "dist" / "index.html"
AXE = BASE_DIR / "web" / "node_modules" / "axe-core" / "axe.min.js"
SCREENSHOTS = Path(__file__).parent / "screenshots"
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-dev-shm-usage"]
LAPTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}


def _missing() -> str | None:
    if not os.access(CHROMIUM, os.X_OK):
        return f"no Chromium at {CHROMIUM} (apt-get install chromium, or set CHROMIUM)"
    if not DIST.exists():
        return "the web client is not built (needs Node.js >= 20: make test builds it)"
    try:
        import playwright  # noqa: F401
    except ImportError:
        return "the playwright package is missing (pip install -r requirements.txt)"
    return None


def pytest_collection_modifyitems(config, items):
    reason = _missing()
    if not reason:
        return
    for item in items:
        if item.path.parent == Path(__file__).parent and "browser" in item.keywords:
            if os.environ.get("CI") == "true":
                item.add_marker(pytest.mark.xfail(reason=f"CI=true: {reason}", run=False, strict=True))
                continue
            item.add_marker(pytest.mark.skip(reason=f"browser test skipped: {reason}"))


@pytest.fixture(scope="session")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def server():
    database = LiveDatabase()
    live = LiveServer(database)
    yield live
    live.stop()
    database.close()


@dataclass
class Person:
    """One browser (a context of its own: its own IndexedDB) on the app."""

    page: object
    context: object
    user_id: str = ""
    device_id: str = ""
    phrase: str = ""

    @property
    def name(self) -> str:
        return self.user_id[:8]


@pytest.fixture
def open_browser(browser, server):
    """open_browser() -> a fresh context and page on the app; all closed at teardown.
    Every page fails the test on a CSP violation or an uncaught script error."""
    contexts, problems = [], []

    def open_(viewport=LAPTOP) -> Person:
        context = browser.new_context(viewport=viewport)
        page = context.new_page()
        page.set_default_timeout(15_000)
        page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
        page.on("console", lambda m: problems.append(f"console: {m.text}")
                if m.type == "error" and "Content Security Policy" in m.text else None)
        page.goto(server.url + "/")
        contexts.append(context)
        return Person(page=page, context=context)

    yield open_
    for context in contexts:
        context.close()
    assert not problems, problems


def create_identity(person: Person, device_name: str = "Laptop") -> Person:
    """The create flow of the table: Device name, Continue, the phrase, the box, Continue."""
    page = person.page
    page.get_by_role("button", name="Create a new identity").click()
    page.get_by_role("textbox", name="Device name").fill(device_name)
    page.get_by_role("button", name="Continue").click()
    phrase = person.phrase = page.get_by_label("Recovery phrase", exact=True).inner_text()
    assert len(phrase.split(" ")) == 24
    page.get_by_role("checkbox", name="I have saved my recovery phrase").check()
    page.get_by_role("button", name="Continue").click()
    page.get_by_role("link", name="Devices").click()
    person.user_id = page.get_by_label("Your user id").inner_text()
    person.device_id = page.get_by_label("This device's key").inner_text()
    page.get_by_role("link", name="Conversations").click()
    return person


def connected(person: Person):
    from playwright.sync_api import expect

    expect(person.page.get_by_role("status")).to_contain_text("Connected")


def start_conversation(person: Person, participants: list[str], policy: str | None = None, days: int | None = None):
    page = person.page
    page.get_by_role("button", name="New conversation").click()
    page.get_by_role("textbox", name="Participants").fill(", ".join(participants))
    if policy:
        page.get_by_role("combobox", name="Retention policy").select_option(label=policy)
    if days is not None:
        page.get_by_role("spinbutton", name="Days").fill(str(days))
    page.get_by_role("button", name="Start").click()
    page.get_by_role("log", name="Messages").wait_for()


def send(person: Person, text: str):
    page = person.page
    page.get_by_role("textbox", name="Message").fill(text)
    page.get_by_role("button", name="Send").click()


def open_conversation(person: Person, name_part: str):
    person.page.get_by_role("list", name="Conversation list").get_by_role("link").filter(has_text=name_part).first.click()
    person.page.get_by_role("log", name="Messages").wait_for()


def screenshot(person: Person, name: str):
    SCREENSHOTS.mkdir(exist_ok=True)
    person.page.screenshot(path=str(SCREENSHOTS / f"{name}.png"))


def axe_violations(person: Person) -> list[dict]:
    """axe-core from web/node_modules, injected into the page (CSP does not apply to
    Playwright's own evaluation); serious and critical violations only."""
    person.page.evaluate(AXE.read_text())
    result = person.page.evaluate("async () => await axe.run(document, {resultTypes: ['violations']})")
    return [{"id": v["id"], "impact": v["impact"], "nodes": [n["target"] for n in v["nodes"]][:5]}
            for v in result["violations"] if v["impact"] in ("serious", "critical")]


class Cli:
    """One dmclient CLI device (its own store directory) on the live server."""

    def __init__(self, server: LiveServer, home: Path):
        self.server, self.home = server, home
        self.user_id = self.device_id = ""

    def run(self, *args: str, check=True, env: dict | None = None) -> dict:
        proc = subprocess.run([sys.executable, "-m", "dmclient", "--home", str(self.home), "--json", *args],
                              cwd=BASE_DIR, capture_output=True, text=True, timeout=60,
                              env={**os.environ, "DMCLIENT_PASSPHRASE": "cli test passphrase", **(env or {})})
        if check and proc.returncode:
            raise AssertionError(f"dmc {' '.join(args)} -> {proc.returncode}: {proc.stdout} {proc.stderr}")
        return json.loads(proc.stdout) if proc.stdout.strip() else {}

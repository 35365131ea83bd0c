"""A copy of the bundle served from another origin (as a user who builds and
serves their own copy would): it talks to the server given by `?server=`,
which lets that origin in with CORS_ALLOWED_ORIGINS; without it, it cannot."""
import functools
import http.server
import threading

import pytest

from tests.live import LiveDatabase, LiveServer, free_port
from tests.web.conftest import DIST, Person, connected, create_identity

pytestmark = [pytest.mark.live, pytest.mark.browser]


@pytest.fixture(scope="module")
def copy_origin():
    """web/dist served by a plain static server on a port of its own."""
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    handler = functools.partial(Quiet, directory=str(DIST.parent))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


@pytest.fixture(scope="module")
def server(copy_origin):
    database = LiveDatabase()
    live = LiveServer(database, extra_env={"CORS_ALLOWED_ORIGINS": copy_origin})
    yield live
    live.stop()
    database.close()


def test_a_copy_on_another_origin_uses_the_configured_server(browser, server, copy_origin):
    context = browser.new_context()
    try:
        page = context.new_page()
        page.set_default_timeout(15_000)
        page.goto(f"{copy_origin}/?server={server.url}")
        person = create_identity(Person(page=page, context=context), "My own build")
        connected(person)
        # Registered on that server, with the server's origin signed at login (§3).
        rows = server.database.sql("SELECT COUNT(*) FROM devices")
        assert rows[0][0] == 1
    finally:
        context.close()


def test_without_cors_a_foreign_copy_gets_no_answers(browser, server, copy_origin):
    closed = LiveServer(server.database)  # the same system with no origin allowed (the default)
    context = browser.new_context()
    try:
        page = context.new_page()
        page.goto(f"{copy_origin}/")
        fetch = """async (url) => { try { await fetch(url + '/api/v1/auth/challenge', {method: 'POST',
                     headers: {'Content-Type': 'application/json'}, body: '{}'}); return 'answered' }
                   catch { return 'blocked' } }"""
        assert page.evaluate(fetch, server.url) == "answered"
        assert page.evaluate(fetch, closed.url) == "blocked"
    finally:
        context.close()
        closed.stop()

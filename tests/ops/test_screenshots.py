"""Issue 14 (point 10 and the dashboard): the dashboard and the admin lists
in real Chromium at 1280×800 and 390×844, with nothing cut off. Pictures go
to var/screenshots/ (ignored); the dashboard's at 1280 is the README's
docs/screenshots/admin-dashboard.png (refreshed with UPDATE_SCREENSHOTS=1)."""
import datetime as dt
import os
import shutil
from pathlib import Path

import pytest

from tests.factories import ack, build_send, create_conversation, make_person, send, sync
from tests.live import BASE_DIR

CHROMIUM = "/usr/bin/chromium"
pytestmark = [pytest.mark.live,
              pytest.mark.skipif(not os.path.exists(CHROMIUM), reason=f"needs Debian's chromium at {CHROMIUM}")]

SHOTS = BASE_DIR / "var" / "screenshots"
README_PICTURE = BASE_DIR / "docs" / "screenshots" / "admin-dashboard.png"
VIEWPORTS = {"desktop": (1280, 800), "phone": (390, 844)}
PAGES = {"dashboard": "/admin/", "pending-dms": "/admin/dms/pendingdm/", "devices": "/admin/devices/device/",
         "conversations": "/admin/dms/conversation/"}
PASSWORD = "screenshot-password-1"


@pytest.fixture
def populated(daphne_server, live_database):
    server = daphne_server
    alice, bob, carol = (make_person(n, base_url=server.url) for n in (2, 2, 1))
    direct = create_conversation(alice.device, [bob.id])
    group = create_conversation(alice.device, [bob.id, carol.id], retention={"policy": "burn_on_read"})
    for i in range(5):
        assert send(alice.device, build_send(alice.device, direct, text=f"m{i}")).status_code == 201
    for i in range(3):
        assert send(bob.device, build_send(bob.device, group, text=f"g{i}")).status_code == 201
    ids = [m["message_id"] for m in sync(bob.devices[0])["messages"]]
    ack(bob.devices[0], ids[:3])
    # a delivery near max_undelivered_days, a device seen long ago, one suspended user
    old = (dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=26)).isoformat()
    live_database.sql("UPDATE dm_deliveries SET created_at = %s WHERE id = (SELECT MIN(id) FROM dm_deliveries "
                      "WHERE acked_at IS NULL)", (old,))
    live_database.sql("UPDATE devices SET last_seen_at = %s WHERE id = (SELECT MAX(id) FROM devices)", (old,))
    live_database.sql("UPDATE users SET suspended_at = %s WHERE username = %s",
                      (dt.datetime.now(dt.timezone.utc).isoformat(), carol.id))
    live_database.manage("purge_dms", "--dry-run")
    live_database.manage("purge_dms")
    live_database.manage("shell", "-c", "from devices.models import User; "
                         f"User.objects.create_superuser('admin', {PASSWORD!r})")
    return server


def test_dashboard_and_admin_lists_fit_at_1280_and_390(populated):
    from playwright.sync_api import sync_playwright

    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"])
        try:
            for viewport, (width, height) in VIEWPORTS.items():
                page = browser.new_page(viewport={"width": width, "height": height})
                outside = []
                page.on("request", lambda r: outside.append(r.url) if not r.url.startswith(
                    (populated.url, "data:")) else None)
                page.goto(populated.url + "/admin/login/")
                page.fill("#id_username", "admin")
                page.fill("#id_password", PASSWORD)
                page.click("input[type=submit]")
                page.wait_for_url(populated.url + "/admin/")
                for name, path in PAGES.items():
                    page.goto(populated.url + path)
                    page.screenshot(path=str(SHOTS / f"{name}-{viewport}.png"), full_page=True)
                    check_nothing_cut_off(page, name=name, viewport=viewport, width=width)
                assert not outside, outside  # the admin loads nothing from elsewhere
                page.close()
        finally:
            browser.close()
    if os.environ.get("UPDATE_SCREENSHOTS") == "1":  # a tracked file: refreshed when asked, not on every run
        README_PICTURE.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(SHOTS / "dashboard-desktop.png", README_PICTURE)


def check_nothing_cut_off(page, *, name: str, viewport: str, width: int) -> None:
    where = f"{name} at {viewport}"
    # The page itself never scrolls sideways.
    assert page.evaluate("document.documentElement.scrollWidth") <= width, where
    if name == "dashboard":
        assert page.locator("#dashboard").is_visible(), where
        boxes = page.evaluate("""() => [...document.querySelectorAll('#dashboard section, #dashboard .bar, #dashboard svg')]
            .map(e => { const r = e.getBoundingClientRect(); return [e.className.baseVal ?? e.className, r.left, r.right,
                        e.scrollWidth, e.clientWidth]; })""")
        assert boxes, where
        for cls, left, right, scroll_width, client_width in boxes:
            assert left >= 0 and right <= width, (where, cls, left, right)
            assert scroll_width <= client_width + 1, (where, cls, scroll_width, client_width)
        return
    headers = page.evaluate("""() => [...document.querySelectorAll('#result_list thead th')]
        .map(th => { const r = th.getBoundingClientRect(); return [th.innerText.trim(), r.left, r.right, r.width]; })""")
    assert len(headers) >= 5, where
    results = page.evaluate("""() => { const e = document.querySelector('#changelist .results');
        return [e.scrollWidth, e.clientWidth, getComputedStyle(e).overflowX]; }""")
    if viewport == "desktop":
        # Every column on screen, without scrolling the table.
        assert results[0] <= results[1], (where, results)
        for text, left, right, w in headers:
            assert 0 <= left and right <= width and w > 0, (where, text, left, right)
    else:
        # A phone scrolls the table inside its own box; the page does not move and nothing is clipped away.
        assert results[2] in ("auto", "scroll"), (where, results)

"""Two people, each in a browser of their own, on one live server: identities,
messages both ways in real time, delivery status, retention change, markup
shown as text, reload, safety numbers, no plaintext on the server, the look
at laptop and phone sizes, and axe-core's verdict."""
import hashlib
import re

import pytest
from playwright.sync_api import expect

from dmclient import protocol
from tests.web.conftest import (
    LAPTOP, PHONE, axe_violations, connected, create_identity, open_conversation, screenshot, send,
    start_conversation,
)

pytestmark = [pytest.mark.live, pytest.mark.browser]

XSS = '<img src=x onerror="window.__xss=1"> <b>bold</b> <script>window.__xss=2</script>'


def reference_safety_number(a: str, b: str) -> str:
    """§6 by the Python reference (the CLI's `contact verify` computes the same)."""
    ka, kb = sorted([protocol.b58_key(a), protocol.b58_key(b)])
    h = hashlib.sha512(b"decentcom/safety-number/v1\n" + ka + kb).digest()
    return " ".join(f"{int.from_bytes(h[5 * i:5 * i + 5], 'big') % 100000:05d}" for i in range(12))


def message(person, text):
    return person.page.get_by_role("log", name="Messages").get_by_role("article").filter(has_text=text)


def test_two_people_talk_in_real_time(open_browser, server):
    alice = open_browser()
    screenshot(alice, "onboarding-start-laptop")
    alice.page.set_viewport_size(PHONE)
    screenshot(alice, "onboarding-start-phone")
    alice.page.set_viewport_size(LAPTOP)
    create_identity(alice, "Alice's laptop")
    bob = create_identity(open_browser(), "Bob's laptop")
    connected(alice)
    connected(bob)
    assert alice.user_id != bob.user_id

    # Alice writes first: Bob's list shows the conversation and the message without a reload.
    start_conversation(alice, [bob.user_id], policy="Time to live", days=7)
    send(alice, "Hello Bob, this is Alice")
    expect(message(alice, "Hello Bob, this is Alice")).to_be_visible()
    conversation_link = bob.page.get_by_role("list", name="Conversation list").get_by_role("link")
    expect(conversation_link.filter(has_text=alice.name)).to_be_visible(timeout=20_000)
    open_conversation(bob, alice.name)
    expect(message(bob, "Hello Bob, this is Alice")).to_be_visible()
    expect(message(bob, "Hello Bob, this is Alice")).to_contain_text("Alice's laptop")  # the sender's device

    # ...and Bob answers: it reaches Alice's open conversation by itself.
    send(bob, "Hi Alice! Bob here.")
    expect(message(alice, "Hi Alice! Bob here.")).to_be_visible(timeout=20_000)

    # Markup is text: it shows literally and nothing of it runs, on either side.
    send(alice, XSS)
    expect(message(bob, "<b>bold</b>")).to_be_visible(timeout=20_000)
    assert XSS in message(bob, "<b>bold</b>").inner_text()
    for person in (alice, bob):
        assert person.page.evaluate("window.__xss") is None
        assert person.page.get_by_role("log", name="Messages").locator("img, b, script").count() == 0

    # The safety number is the same on both sides and equals the Python reference's.
    expected = reference_safety_number(alice.user_id, bob.user_id)
    for person in (alice, bob):
        person.page.get_by_role("button", name="Conversation settings").click()
        number = person.page.get_by_role("dialog").get_by_label("Safety number", exact=True).inner_text()
        assert number.split() == expected.split()
        person.page.keyboard.press("Escape")
        expect(person.page.get_by_role("dialog")).to_have_count(0)

    # Retention: Alice changes it (keyboard only); Bob is asked before his next message goes out.
    page = alice.page
    page.get_by_role("button", name="Conversation settings").focus()
    page.keyboard.press("Enter")
    policy = page.get_by_role("dialog").get_by_role("combobox", name="Retention policy")
    policy.focus()
    policy.select_option(label="Burn on read")  # a <select> takes its choice from the keyboard the same way
    expect(page.get_by_role("dialog")).to_contain_text("as soon as every recipient device has fetched them")
    screenshot(alice, "retention-settings-laptop")
    page.get_by_role("dialog").get_by_role("button", name="Save").focus()
    page.keyboard.press("Enter")
    expect(page.get_by_role("dialog")).to_contain_text("Saved")
    page.keyboard.press("Escape")
    expect(page.get_by_role("dialog")).to_have_count(0)
    # The change is in the log as a sentence (the SDK's text starts "you changed ...").
    expect(page.get_by_role("log", name="Messages")).to_contain_text("You changed retention to Burn on read")

    send(bob, "Sent under the new policy")
    prompt = bob.page.get_by_role("dialog")
    expect(prompt).to_contain_text("Burn on read", timeout=20_000)
    prompt.get_by_role("button", name="Send anyway").click()
    expect(message(alice, "Sent under the new policy")).to_be_visible(timeout=20_000)

    # Reload keeps identity, conversations and history.
    for person in (alice, bob):
        person.page.reload()
        connected(person)
        open_conversation(person, bob.name if person is alice else alice.name)
        for text in ("Hello Bob, this is Alice", "Hi Alice! Bob here.", "Sent under the new policy"):
            expect(message(person, text)).to_be_visible()

    screenshot(alice, "conversation-laptop")
    alice.page.set_viewport_size(PHONE)
    screenshot(alice, "conversation-phone")
    alice.page.get_by_role("button", name="Conversation settings").click()
    screenshot(alice, "retention-settings-phone")
    alice.page.keyboard.press("Escape")
    alice.page.get_by_role("link", name="Devices").click()
    expect(alice.page.get_by_role("row").filter(has_text="this device")).to_contain_text("active")
    screenshot(alice, "devices-phone")
    alice.page.set_viewport_size(LAPTOP)
    screenshot(alice, "devices-laptop")

    # No plaintext anywhere on the server: not in any table, not in any log line.
    texts = ["Hello Bob, this is Alice", "Hi Alice! Bob here.", "Sent under the new policy", "bold"]
    dump = server_dump(server)
    for text in texts:
        assert text not in dump
        assert text not in server.log()


def test_delivery_status_reaches_delivered(open_browser, server):
    """§7a: Sending, then Sent (stored), then Delivered once every recipient device has it."""
    erin = create_identity(open_browser(), "Erin's laptop")
    frank = create_identity(open_browser(), "Frank's laptop")
    connected(frank)
    start_conversation(erin, [frank.user_id])
    send(erin, "Did this reach you?")
    status = message(erin, "Did this reach you?").get_by_label("Delivery status", exact=True)
    expect(status).to_have_text(re.compile(r"^(Sending|Sent|Delivered)"))
    # Frank's browser fetches and acknowledges it from the doorbell, without opening anything.
    expect(status).to_have_text(re.compile(r"^Delivered"), timeout=20_000)
    message(erin, "Did this reach you?").get_by_role("button", name="Details").click()
    expect(message(erin, "Did this reach you?")).to_contain_text("delivered")
    erin.page.reload()
    expect(message(erin, "Did this reach you?").get_by_label("Delivery status", exact=True)).to_have_text(
        re.compile(r"^Delivered"))


def server_dump(server) -> str:
    """Every row of every table of the live database, as text."""
    db = server.database
    if db.pg_name:
        tables = [r[0] for r in db.sql("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")]
    else:
        tables = [r[0] for r in db.sql("SELECT name FROM sqlite_master WHERE type = 'table'")]
    rows = []
    for table in tables:
        for row in db.sql(f'SELECT * FROM "{table}"'):
            rows.append(" ".join(v.decode("latin-1") if isinstance(v, (bytes, memoryview)) else str(v) for v in row))
    return "\n".join(rows)


def test_accessibility_and_keyboard_only_onboarding(open_browser, server):
    """Onboarding, sending and every main page by keyboard alone; axe-core finds nothing serious."""
    carol = open_browser()
    assert axe_violations(carol) == []
    page = carol.page
    # Tab to the first way in, then through the create flow.
    page.keyboard.press("Tab")
    expect(page.get_by_role("button", name="Create a new identity")).to_be_focused()
    page.keyboard.press("Enter")
    expect(page.get_by_role("textbox", name="Device name")).to_be_focused()
    page.keyboard.press("Control+A")
    page.keyboard.type("Carol's phone")
    page.keyboard.press("Enter")
    expect(page.get_by_label("Recovery phrase", exact=True)).to_be_visible()
    assert axe_violations(carol) == []
    screenshot(carol, "onboarding-phrase-laptop")
    page.set_viewport_size(PHONE)
    screenshot(carol, "onboarding-phrase-phone")
    page.set_viewport_size(LAPTOP)
    continue_button = page.get_by_role("button", name="Continue")
    expect(continue_button).to_be_disabled()
    tab_to(page, page.get_by_role("checkbox", name="I have saved my recovery phrase"))
    page.keyboard.press("Space")
    expect(continue_button).to_be_enabled()
    page.keyboard.press("Tab")
    expect(continue_button).to_be_focused()
    page.keyboard.press("Enter")
    expect(page.get_by_role("link", name="Conversations")).to_have_attribute("aria-current", "page")
    connected(carol)
    assert axe_violations(carol) == []

    # A conversation with oneself's contact: a second person, made by keyboard too.
    dave = create_identity(open_browser(), "Dave's laptop")
    tab_to(page, page.get_by_role("button", name="New conversation"))
    page.keyboard.press("Enter")
    expect(page.get_by_role("textbox", name="Participants")).to_be_focused()
    page.keyboard.type(dave.user_id)
    tab_to(page, page.get_by_role("button", name="Start"))
    page.keyboard.press("Enter")
    composer = page.get_by_role("textbox", name="Message")
    tab_to(page, composer)
    page.keyboard.type("Typed and sent")
    page.keyboard.press("Shift+Enter")
    page.keyboard.type("with the keyboard only")
    page.keyboard.press("Enter")
    sent = page.get_by_role("log", name="Messages").get_by_role("article").filter(has_text="with the keyboard only")
    expect(sent).to_contain_text("Typed and sent\nwith the keyboard only")
    expect(composer).to_have_value("")
    assert axe_violations(carol) == []

    # Retention by keyboard: open the settings, choose a policy with the arrow keys, save, Escape.
    tab_to(page, page.get_by_role("button", name="Conversation settings"))
    page.keyboard.press("Enter")
    dialog = page.get_by_role("dialog")
    tab_to(page, dialog.get_by_role("combobox", name="Retention policy"))
    assert axe_violations(carol) == []
    dialog.get_by_role("combobox", name="Retention policy").select_option(label="Time to live")
    days = dialog.get_by_role("spinbutton", name="Days")
    tab_to(page, days)
    page.keyboard.press("Control+A")
    page.keyboard.type("3")
    tab_to(page, dialog.get_by_role("button", name="Save"))
    page.keyboard.press("Enter")
    expect(dialog).to_contain_text("Saved")
    expect(dialog).to_contain_text("3 days after they are sent, read or not")
    page.keyboard.press("Escape")
    expect(page.get_by_role("dialog")).to_have_count(0)
    expect(page.get_by_role("list", name="Conversation list")).to_contain_text("3 days")

    for link in ("Devices", "Contacts"):
        tab_to(page, page.get_by_role("link", name=link))
        page.keyboard.press("Enter")
        expect(page.get_by_role("heading", level=1, name=link)).to_be_visible()
        if link == "Devices":
            carol.user_id = page.get_by_label("Your user id", exact=True).inner_text()
        assert axe_violations(carol) == []

    # Contacts: a local name replaces the short id everywhere; the safety number is there.
    page.get_by_role("textbox", name="User id").fill(dave.user_id)
    page.get_by_role("textbox", name="Name").fill("Dave")
    page.get_by_role("button", name="Add contact").click()
    item = page.get_by_role("listitem").filter(has_text="Dave")
    expect(item.get_by_label("Safety number", exact=True)).to_have_text(
        reference_safety_number(carol.user_id, dave.user_id))
    item.get_by_role("button", name="Mark as verified").click()
    expect(item).to_contain_text("Verified")
    assert axe_violations(carol) == []
    page.get_by_role("link", name="Conversations").click()
    expect(page.get_by_role("list", name="Conversation list").get_by_role("link")).to_contain_text("Dave")


def tab_to(page, locator, limit=40):
    """Press Tab until `locator` has the focus (keyboard-only use)."""
    for _ in range(limit):
        if locator.evaluate("el => el === document.activeElement"):
            return
        page.keyboard.press("Tab")
    raise AssertionError(f"Tab never reached {locator}")


def test_restore_from_the_recovery_phrase_and_a_passphrase(open_browser, server):
    """The 24 words bring the same identity to a new browser (a new device of it); a
    passphrase, once set, is asked on start and a wrong one is refused."""
    grace = create_identity(open_browser(), "Grace's laptop")
    other = open_browser()
    page = other.page
    page.get_by_role("button", name="Restore from a recovery phrase").click()
    page.get_by_role("textbox", name="Recovery phrase").fill(grace.phrase)
    page.get_by_role("textbox", name="Device name").fill("Grace's tablet")
    page.get_by_role("button", name="Restore").click()
    page.get_by_role("link", name="Devices").click()
    expect(page.get_by_label("Your user id", exact=True)).to_have_text(grace.user_id)
    expect(page.get_by_role("row").filter(has_text="Grace's tablet")).to_contain_text("this device")
    expect(page.get_by_role("row").filter(has_text="Grace's laptop")).to_contain_text("active")
    expect(page.get_by_label("Recovery phrase", exact=True)).to_have_count(0)
    page.get_by_role("button", name="Show recovery phrase").click()
    expect(page.get_by_label("Recovery phrase", exact=True)).to_have_text(grace.phrase)

    page.get_by_label("Passphrase for this browser", exact=True).fill("correct horse battery")
    page.get_by_role("button", name="Set passphrase").click()
    expect(page.get_by_text("now asks for the passphrase")).to_be_visible()
    page.reload()
    page.get_by_label("Passphrase", exact=True).fill("wrong")
    page.get_by_role("button", name="Unlock").click()
    expect(page.get_by_role("alert")).to_be_visible()
    page.get_by_label("Passphrase", exact=True).fill("correct horse battery")
    page.get_by_role("button", name="Unlock").click()
    connected(other)
    expect(page.get_by_role("heading", level=1, name="Devices")).to_be_visible()  # the route survives the unlock


def test_connection_state_follows_the_server(open_browser, server):
    """Offline or Connecting while the server is down, Connected again by itself after."""
    henry = create_identity(open_browser(), "Henry's laptop")
    connected(henry)
    server.stop()
    expect(henry.page.get_by_role("status")).not_to_contain_text("Connected", timeout=20_000)
    expect(henry.page.get_by_role("status")).to_have_text(re.compile(r"Offline|Connecting"))
    screenshot(henry, "offline-laptop")
    server.start()
    expect(henry.page.get_by_role("status")).to_contain_text("Connected", timeout=40_000)

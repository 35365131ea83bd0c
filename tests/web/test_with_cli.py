"""The web client beside the reference CLI on one live server: a group of
three with a CLI member (both ways, no reload), a browser linked to a CLI
identity with a certificate from `device certify` (self-sync both ways, then
revoked by the CLI and locked), and a browser certifying and revoking another."""
import json
import re
import time

import pytest
from playwright.sync_api import expect

from tests.web.conftest import (
    PHONE, Cli, Person, connected, create_identity, open_conversation, screenshot, send, start_conversation,
)

pytestmark = [pytest.mark.live, pytest.mark.browser]


def message(person, text):
    return person.page.get_by_role("log", name="Messages").get_by_role("article").filter(has_text=text)


def cli_user(server, tmp_path, name: str) -> Cli:
    cli = Cli(server, tmp_path / name)
    me = cli.run("init", "--server", server.url, "--name", name)
    cli.user_id, cli.device_id = me["user_id"], me["device_id"]
    return cli


def cli_reads(cli: Cli, text: str, timeout=20.0) -> dict:
    """`dm read` until a message with `text` arrives; returns it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for item in cli.run("dm", "read")["items"]:
            if item.get("body") == text:
                return item
        time.sleep(0.5)
    raise AssertionError(f"the CLI never read {text!r}")


def link_browser(person: Person, certify) -> Person:
    """The link flow: show the Device key, paste the certificate `certify(key)` makes, Link."""
    page = person.page
    page.get_by_role("button", name="Link to an existing identity").click()
    key = page.get_by_label("Device key", exact=True)
    expect(key).to_have_text(re.compile(r"^[1-9A-HJ-NP-Za-km-z]{43,44}$"))  # a base58 key
    person.device_id = key.inner_text()
    screenshot(person, "onboarding-link-laptop")
    page.get_by_role("textbox", name="Certificate").fill(certify(person.device_id))
    page.get_by_role("button", name="Link").click()
    expect(page.get_by_role("link", name="Conversations")).to_have_attribute("aria-current", "page")
    return person


def test_group_of_three_with_a_cli_member(open_browser, server, tmp_path):
    alice = create_identity(open_browser(), "Alice's laptop")
    bob = create_identity(open_browser(), "Bob's laptop")
    carol = cli_user(server, tmp_path, "carol-cli")
    connected(alice)
    connected(bob)

    start_conversation(alice, [bob.user_id, carol.user_id])
    send(alice, "Welcome to the group")
    expect(message(alice, "Welcome to the group")).to_be_visible()
    item = cli_reads(carol, "Welcome to the group")
    assert item["sender"] == alice.user_id

    # Bob sees the group and the message without reloading.
    group = bob.page.get_by_role("list", name="Conversation list").get_by_role("link").filter(has_text=carol.user_id[:8])
    expect(group).to_contain_text(alice.name, timeout=20_000)
    open_conversation(bob, carol.user_id[:8])
    expect(message(bob, "Welcome to the group")).to_be_visible()

    # The CLI answers into the group: both browsers show it by themselves.
    carol.run("dm", "send", item["conversation_id"], "Hello from the command line")
    for person in (alice, bob):
        expect(message(person, "Hello from the command line")).to_be_visible(timeout=20_000)
        expect(message(person, "Hello from the command line")).to_contain_text("carol-cli")
    send(bob, "Bob, from a browser")
    assert cli_reads(carol, "Bob, from a browser")["sender"] == bob.user_id
    expect(message(alice, "Bob, from a browser")).to_be_visible(timeout=20_000)

    # Membership changes show in the conversation: Alice (who started it) removes the CLI member.
    alice.page.get_by_role("button", name="Conversation settings").click()
    alice.page.get_by_role("dialog").get_by_role("button", name=f"Remove {carol.user_id[:8]}").click()
    expect(alice.page.get_by_role("dialog").get_by_role("button", name=f"Remove {carol.user_id[:8]}")).to_have_count(0)
    alice.page.keyboard.press("Escape")
    expect(bob.page.get_by_role("log", name="Messages")).to_contain_text("removed", timeout=20_000)


def test_browser_linked_to_a_cli_identity_syncs_and_is_revoked(open_browser, server, tmp_path):
    dave = cli_user(server, tmp_path, "dave-cli")
    erin = create_identity(open_browser(), "Erin's laptop")

    def certify(key: str) -> str:  # what `dmc device certify` prints, pasted as it is
        return json.dumps(dave.run("device", "certify", key, "--name", "Dave's browser"))

    browser = link_browser(open_browser(), certify)
    connected(browser)
    page = browser.page
    page.get_by_role("link", name="Devices").click()
    expect(page.get_by_label("Your user id", exact=True)).to_have_text(dave.user_id)
    expect(page.get_by_role("row").filter(has_text="Dave's browser")).to_contain_text("this device")
    expect(page.get_by_role("row").filter(has_text="dave-cli")).to_contain_text("active")
    expect(page.get_by_role("textbox", name="Device key to certify")).to_have_count(0)  # no master key here

    # Self-sync: what Dave sends from the CLI shows in his browser as his own, and the other way round.
    conversation = dave.run("dm", "new", erin.user_id)["conversation"]["conversation_id"]
    dave.run("dm", "send", conversation, "Sent from Dave's terminal")
    page.get_by_role("link", name="Conversations").click()
    open_conversation(browser, erin.name)
    mine = message(browser, "Sent from Dave's terminal")
    expect(mine).to_contain_text("You")
    expect(mine).to_contain_text("dave-cli")
    send(browser, "Sent from Dave's browser")
    assert cli_reads(dave, "Sent from Dave's browser")["sender"] == dave.user_id
    open_conversation(erin, dave.user_id[:8])
    expect(message(erin, "Sent from Dave's browser")).to_be_visible(timeout=20_000)
    expect(message(erin, "Sent from Dave's terminal")).to_be_visible()

    # The CLI revokes the browser: it locks itself and says why, at once.
    dave.run("device", "revoke", browser.device_id)
    expect(page.get_by_role("alert").filter(has_text="revoked")).to_be_visible(timeout=20_000)
    expect(page.get_by_role("status")).to_contain_text("Offline")
    screenshot(browser, "revoked-laptop")
    page.reload()
    expect(page.get_by_role("alert").filter(has_text="revoked")).to_be_visible(timeout=20_000)


def test_a_browser_certifies_and_revokes_another(open_browser, server):
    frank = create_identity(open_browser(), "Frank's laptop")

    def certify(key: str) -> str:
        page = frank.page
        page.get_by_role("link", name="Devices").click()
        page.get_by_role("textbox", name="Device key to certify").fill(key)
        page.get_by_role("textbox", name="Name for the new device").fill("Frank's phone")
        page.get_by_role("button", name="Certify").click()
        return page.get_by_label("Certificate", exact=True).inner_text()

    phone = link_browser(open_browser(viewport=PHONE), certify)
    connected(phone)
    page = frank.page
    page.reload()
    row = page.get_by_role("row").filter(has_text="Frank's phone")
    expect(row).to_contain_text("active")
    connected(frank)
    screenshot(frank, "devices-two-laptop")
    row.get_by_role("button", name="Revoke Frank's phone").click()
    dialog = page.get_by_role("dialog")
    dialog.get_by_role("button", name="Cancel").click()
    expect(row).to_contain_text("active")
    row.get_by_role("button", name="Revoke Frank's phone").click()
    dialog.get_by_role("button", name="Revoke").click()
    expect(row).to_contain_text("revoked")
    expect(phone.page.get_by_role("alert").filter(has_text="revoked")).to_be_visible(timeout=20_000)
    screenshot(phone, "revoked-phone")


def test_one_identity_and_one_safety_number_in_both_clients(open_browser, server, tmp_path):
    """The 24 words move an identity from the CLI to a browser and from a browser to the CLI;
    the browser shows the safety number `contact verify` prints; and once a contact is verified,
    a device the server shows for them that fails its certificate makes the browser warn loudly."""
    # CLI -> browser: `identity phrase`, then "Restore from a recovery phrase".
    ivy = cli_user(server, tmp_path, "ivy-cli")
    ivy_browser = open_browser()
    page = ivy_browser.page
    page.get_by_role("button", name="Restore from a recovery phrase").click()
    page.get_by_role("textbox", name="Recovery phrase").fill(ivy.run("identity", "phrase")["phrase"])
    page.get_by_role("textbox", name="Device name").fill("Ivy's browser")
    page.get_by_role("button", name="Restore").click()
    page.get_by_role("link", name="Devices").click()
    expect(page.get_by_label("Your user id", exact=True)).to_have_text(ivy.user_id)
    expect(page.get_by_role("row").filter(has_text="ivy-cli")).to_contain_text("active")
    connected(ivy_browser)

    # Browser -> CLI: the "Recovery phrase" shown once, then `init --restore`.
    jack = create_identity(open_browser(), "Jack's laptop")
    jack_cli = Cli(server, tmp_path / "jack-cli")
    restored = jack_cli.run("init", "--restore", "--server", server.url, "--name", "jack-cli",
                            env={"DMCLIENT_RECOVERY_PHRASE": jack.phrase})
    assert restored["user_id"] == jack.user_id
    assert restored["has_master_key"]

    # §6: the number `contact verify` prints (on either CLI) is the one Jack's browser shows.
    ivy.run("contact", "add", "jack", jack.user_id)
    cli_number = ivy.run("contact", "verify", "jack", "--yes")["safety_number"]
    jack_cli.run("contact", "add", "ivy", ivy.user_id)
    assert jack_cli.run("contact", "verify", "ivy", "--yes")["safety_number"] == cli_number
    page = jack.page
    page.get_by_role("link", name="Contacts").click()
    page.get_by_role("textbox", name="User id").fill(ivy.user_id)
    page.get_by_role("textbox", name="Name").fill("Ivy")
    page.get_by_role("button", name="Add contact").click()
    contact = page.get_by_role("listitem").filter(has_text="Ivy")
    assert contact.get_by_label("Safety number", exact=True).inner_text().split() == cli_number.split()
    contact.get_by_role("button", name="Mark as verified").click()
    expect(contact).to_contain_text("Verified")

    # The server now shows Ivy's CLI device with a certificate her master key never signed.
    (row,) = server.database.sql("SELECT certificate FROM devices WHERE device_id = %s" if server.database.pg_name
                                 else "SELECT certificate FROM devices WHERE device_id = ?", (ivy.device_id,))
    forged = {**(row[0] if isinstance(row[0], dict) else json.loads(row[0])), "name": "not Ivy's"}
    server.database.sql("UPDATE devices SET certificate = %s WHERE device_id = %s" if server.database.pg_name
                        else "UPDATE devices SET certificate = ? WHERE device_id = ?", (json.dumps(forged), ivy.device_id))
    page.get_by_role("link", name="Conversations").click()
    start_conversation(jack, ["Ivy"])
    send(jack, "Is this really you?")
    expect(page.get_by_role("alert").filter(has_text="verified contact").first).to_be_visible(timeout=20_000)
    page.get_by_role("button", name="Conversation settings").click()
    expect(page.get_by_role("dialog").get_by_role("alert")).to_contain_text("keys no longer match")
    expect(page.get_by_role("dialog")).not_to_contain_text("✓ Verified")  # until compared and verified again
    expect(page.get_by_role("dialog").get_by_role("button", name="Mark as verified")).to_be_visible()
    page.keyboard.press("Escape")
    # The server insists on the forged device (§4 mismatched_devices): nothing goes out, and Jack is told.
    expect(page.get_by_role("alert").filter(has_text="not sent")).to_be_visible()

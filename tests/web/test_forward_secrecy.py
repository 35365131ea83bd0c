"""§6b in the browser, beside the reference CLI on one live server: the web client
and a v1.2 CLI exchange v2-wrapped messages both ways (checked on the deliveries
the server stored), a CLI of protocol 1.1 (no prekeys) still talks to the web
client both ways with v1 wraps, and a v1 wrap sent long after the browser first
published its prekeys is refused with a reason shown in the conversation; PREKEYS_LOW
on the gateway makes the browser refill its one-time prekeys."""
import time

import pytest
from playwright.sync_api import expect

from tests.web.conftest import Cli, connected, create_identity, open_conversation, screenshot, send, start_conversation

pytestmark = [pytest.mark.live, pytest.mark.browser]

LEGACY = {"DMCLIENT_PROTOCOL": "1.1"}  # dmclient as a client before v1.2: no prekeys, v1 wraps only


def message(person, text):
    return person.page.get_by_role("log", name="Messages").get_by_role("article").filter(has_text=text)


def cli_user(server, tmp_path, name: str, env: dict | None = None) -> Cli:
    cli = Cli(server, tmp_path / name)
    me = cli.run("init", "--server", server.url, "--name", name, env=env)
    cli.user_id, cli.device_id = me["user_id"], me["device_id"]
    return cli


def cli_reads(cli: Cli, text: str, env: dict | None = None, timeout=20.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for item in cli.run("dm", "read", env=env)["items"]:
            if item.get("body") == text:
                return item
        time.sleep(0.5)
    raise AssertionError(f"the CLI never read {text!r}")


def wraps_to(server, device_id: str) -> list[tuple]:
    """(ephemeral, signed_prekey_id, one_time_id) of every wrap the server stored for `device_id`."""
    return server.database.sql(
        "SELECT d.wrap_ephemeral, d.wrap_signed_prekey_id, d.wrap_one_time_id FROM dm_deliveries d "
        "JOIN devices v ON v.id = d.device_id WHERE v.device_id = %s AND d.wrapped_key IS NOT NULL", (device_id,))


def prekey_supply(server, device_id: str) -> tuple[int | None, int]:
    spk = server.database.sql("SELECT s.prekey_id FROM device_signed_prekeys s JOIN devices v ON v.id = s.device_id "
                              "WHERE v.device_id = %s", (device_id,))
    otk = server.database.sql("SELECT count(*) FROM device_one_time_prekeys o JOIN devices v ON v.id = o.device_id "
                              "WHERE v.device_id = %s", (device_id,))
    return (spk[0][0] if spk else None), otk[0][0]


def test_v2_wraps_both_ways_with_the_cli(open_browser, server, tmp_path):
    alice = create_identity(open_browser(), "Alice's laptop")
    carol = cli_user(server, tmp_path, "carol-cli")
    connected(alice)
    assert prekey_supply(server, alice.device_id)[1] == 100  # published at registration

    start_conversation(alice, [carol.user_id])
    send(alice, "Forward secret, from the browser")
    expect(message(alice, "Forward secret, from the browser")).to_be_visible()
    item = cli_reads(carol, "Forward secret, from the browser")
    assert item["sender"] == alice.user_id
    to_carol = wraps_to(server, carol.device_id)
    assert to_carol and all(eph is not None and spk is not None and otk is not None for eph, spk, otk in to_carol), to_carol

    carol.run("dm", "send", item["conversation_id"], "Forward secret, from the terminal")
    expect(message(alice, "Forward secret, from the terminal")).to_be_visible(timeout=20_000)
    to_alice = wraps_to(server, alice.device_id)
    assert to_alice and all(eph is not None and spk is not None and otk is not None for eph, spk, otk in to_alice), to_alice
    # the one-time prekey Carol's wrap used is gone from the server (claimed once)
    assert prekey_supply(server, alice.device_id)[1] == 99
    screenshot(alice, "forward-secrecy-v2-with-cli")


def test_a_protocol_1_1_cli_still_talks_with_v1_wraps(open_browser, server, tmp_path):
    bob = create_identity(open_browser(), "Bob's laptop")
    dave = cli_user(server, tmp_path, "dave-old-cli", env=LEGACY)
    assert prekey_supply(server, dave.device_id) == (None, 0)  # an old client publishes nothing
    connected(bob)

    start_conversation(bob, [dave.user_id])
    send(bob, "To an old client")
    expect(message(bob, "To an old client")).to_be_visible()
    item = cli_reads(dave, "To an old client", env=LEGACY)
    to_dave = wraps_to(server, dave.device_id)
    assert to_dave and all(eph is None for eph, _, _ in to_dave), to_dave  # v1: Dave has no signed prekey

    dave.run("dm", "send", item["conversation_id"], "An old client answers", env=LEGACY)
    expect(message(bob, "An old client answers")).to_be_visible(timeout=20_000)
    to_bob = wraps_to(server, bob.device_id)
    assert to_bob and all(eph is None for eph, _, _ in to_bob), to_bob  # v1, within 24 h of Bob's first prekey: taken


def test_a_late_v1_wrap_is_refused_and_shown(open_browser, server, tmp_path):
    # Erin's browser registers (and publishes its first signed prekey) "two days ago".
    person = open_browser()
    page = person.page
    page.clock.install(time=time.time() - 2 * 86400)
    page.reload()
    erin = create_identity(person, "Erin's laptop")
    page.clock.set_system_time(time.time())
    frank = cli_user(server, tmp_path, "frank-old-cli", env=LEGACY)
    conversation = frank.run("dm", "new", erin.user_id, env=LEGACY)["conversation"]["conversation_id"]
    frank.run("dm", "send", conversation, "Sent without forward secrecy", env=LEGACY)
    open_conversation(erin, frank.user_id[:8])
    refused = page.get_by_role("log", name="Messages").get_by_role("note").filter(has_text="without forward secrecy")
    expect(refused).to_contain_text("was refused and not shown", timeout=20_000)
    expect(refused).to_contain_text("the server may have withheld this device's prekeys")
    expect(message(erin, "Sent without forward secrecy")).to_have_count(0)
    expect(page.get_by_text("prekeys..")).to_have_count(0)
    screenshot(erin, "forward-secrecy-downgrade-refused")


def test_prekeys_low_on_the_gateway_refills_the_browser(open_browser, server, tmp_path):
    from dmclient.client import Client

    alice = create_identity(open_browser(), "Alice's laptop")
    connected(alice)
    grace = cli_user(server, tmp_path, "grace-cli")
    client = Client.open(grace.home, "cli test passphrase")
    try:
        for _ in range(81):  # 100 -> 19: the server sends PREKEYS_LOW to Alice's browser after the last claim
            client.call("POST", "/dms/prekeys/claim", json={"devices": [alice.device_id]})
    finally:
        client.close()
    deadline = time.monotonic() + 20
    while prekey_supply(server, alice.device_id)[1] != 100:
        assert time.monotonic() < deadline, f"never refilled: {prekey_supply(server, alice.device_id)}"
        time.sleep(0.2)
    alice.page.get_by_role("link", name="Devices").click()
    expect(alice.page.locator("p", has_text="Forward secrecy:")).to_contain_text("On since")
    expect(alice.page.locator("p", has_text="Forward secrecy:")).to_contain_text("signed prekey 1, 100 one-time prekeys on the server")


def test_a_prekey_that_does_not_verify_is_refused_never_replaced_by_v1(open_browser, server, tmp_path):
    """A lying server (here: the claim's answer rewritten on its way to the browser) hands out
    a signed prekey with another X25519 key under the device's signature: nothing is sent."""
    import base64
    import json as jsonlib

    alice = create_identity(open_browser(), "Alice's laptop")
    heidi = cli_user(server, tmp_path, "heidi-cli")
    connected(alice)
    tampered = []

    def tamper(route):
        answer = route.fetch()
        body = answer.json()
        for entry in body["prekeys"]:
            if entry["signed_prekey"] is not None:
                entry["signed_prekey"]["x25519"] = base64.b64encode(bytes(range(32))).decode()
                tampered.append(entry["device_id"])
        route.fulfill(response=answer, body=jsonlib.dumps(body))

    alice.page.route("**/api/v1/dms/prekeys/claim", tamper)
    start_conversation(alice, [heidi.user_id])
    send(alice, "Never without forward secrecy")
    log = alice.page.get_by_role("log", name="Messages")
    expect(log.get_by_role("note").filter(has_text="a prekey that does not verify")).to_contain_text(
        "never sent without forward secrecy")
    expect(alice.page.get_by_role("alert")).to_contain_text("prekey does not verify; not sent")
    expect(alice.page.get_by_role("textbox", name="Message")).to_have_value("Never without forward secrecy")  # kept
    expect(message(alice, "Never without forward secrecy")).to_have_count(0)
    assert tampered == [heidi.device_id]
    assert wraps_to(server, heidi.device_id) == []  # no v1 wrap either: nothing reached the server
    screenshot(alice, "forward-secrecy-invalid-prekey-refused")


def test_a_signed_prekey_taken_back_is_refused_never_replaced_by_v1(open_browser, server, tmp_path):
    """After a v2 wrap to a device, a claim answer saying that device has no signed prekey
    (rewritten on its way to the browser, as a lying server would) is refused: a device never
    takes its signed prekey back, so no v1 wrap is made in its place and nothing is sent."""
    import json as jsonlib

    alice = create_identity(open_browser(), "Alice's laptop")
    heidi = cli_user(server, tmp_path, "heidi-cli")
    ivan = cli_user(server, tmp_path, "ivan-cli")
    connected(alice)
    start_conversation(alice, [heidi.user_id])
    send(alice, "With forward secrecy")
    expect(message(alice, "With forward secrecy")).to_be_visible()
    cli_reads(heidi, "With forward secrecy")  # stored on the server
    first = wraps_to(server, heidi.device_id)
    assert len(first) == 1 and first[0][0] is not None and first[0][1] is not None  # a v2 wrap
    taken_back = []

    def take_back(route):
        answer = route.fetch()
        body = answer.json()
        for entry in body["prekeys"]:
            if entry["device_id"] == heidi.device_id:
                entry["signed_prekey"], entry["one_time"] = None, None
                taken_back.append(entry["device_id"])
        route.fulfill(response=answer, body=jsonlib.dumps(body))

    alice.page.route("**/api/v1/dms/prekeys/claim", take_back)
    start_conversation(alice, [heidi.user_id, ivan.user_id])  # a new conversation: a new key, so a new claim
    expect(message(alice, "With forward secrecy")).to_have_count(0)  # the new conversation is shown
    send(alice, "Still never without forward secrecy")
    log = alice.page.get_by_role("log", name="Messages")
    expect(log.get_by_role("note").filter(has_text="a prekey that does not verify")).to_contain_text(
        "it handed out this device's signed prekey")
    expect(alice.page.get_by_role("alert")).to_contain_text("prekey does not verify; not sent")
    expect(message(alice, "Still never without forward secrecy")).to_have_count(0)
    assert taken_back == [heidi.device_id]
    assert wraps_to(server, heidi.device_id) == first  # no v1 wrap: nothing more reached the server
    assert wraps_to(server, ivan.device_id) == []  # nor for the other participant
    screenshot(alice, "forward-secrecy-signed-prekey-taken-back-refused")

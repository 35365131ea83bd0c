import pytest

from dmclient import protocol
from dms.models import Conversation, Delivery, PendingDm
from dms.selectors import server_settings_get
from tests.factories import Keys, build_send, create_conversation, login, make_person, send, sync

pytestmark = pytest.mark.django_db


def test_direct_conversation_is_unique_per_pair():
    alice, bob = make_person(1), make_person(1)
    first = create_conversation(alice.device, [bob.id], expect=201)
    assert first["kind"] == "direct"
    assert first["participants"] == sorted([alice.id, bob.id])
    assert first["participants_sha256"] == protocol.participants_sha256([alice.id, bob.id])
    assert first["created_by"] == alice.id and first["epoch"] == 1
    assert first["retention"] == {"policy": "ttl", "ttl_days": 14}
    again = create_conversation(bob.device, [alice.id, bob.id, alice.id], expect=200)
    assert again["conversation_id"] == first["conversation_id"]


def test_group_of_three_is_always_new():
    alice, bob, carol = make_person(1), make_person(1), make_person(1)
    g1 = create_conversation(alice.device, [bob.id, carol.id], expect=201)
    g2 = create_conversation(alice.device, [bob.id, carol.id], expect=201)
    assert g1["kind"] == g2["kind"] == "group" and g1["conversation_id"] != g2["conversation_id"]


def test_conversation_needs_another_registered_user():
    alice = make_person(1)
    response = alice.device.client.post("/api/v1/dms/conversations", {"participants": [alice.id]}, format="json")
    assert response.status_code == 400 and response.json()["error"] == "too_few_participants"
    stranger = Keys().id
    response = alice.device.client.post("/api/v1/dms/conversations", {"participants": [stranger]}, format="json")
    assert response.status_code == 400 and response.json()["users"] == [stranger]


def test_group_size_limit():
    conf = server_settings_get()
    conf.max_participants = 3
    conf.save()
    people = [make_person(1) for _ in range(4)]
    response = people[0].device.client.post(
        "/api/v1/dms/conversations", {"participants": [p.id for p in people[1:]]}, format="json")
    assert response.status_code == 400 and response.json()["error"] == "too_many_participants"
    group = create_conversation(people[0].device, [p.id for p in people[1:3]], expect=201)
    response = people[0].device.client.post(
        f"/api/v1/dms/conversations/{group['conversation_id']}/participants", {"add": [people[3].id]}, format="json")
    assert response.status_code == 400


def test_list_latest_activity_first_and_non_participants_get_404():
    alice, bob, carol, eve = (make_person(1) for _ in range(4))
    c1 = create_conversation(alice.device, [bob.id])
    c2 = create_conversation(alice.device, [carol.id])
    assert send(alice.device, build_send(alice.device, c1)).status_code == 201
    listed = alice.device.client.get("/api/v1/dms/conversations").json()["conversations"]
    assert [c["conversation_id"] for c in listed] == [c1["conversation_id"], c2["conversation_id"]]
    cid = c1["conversation_id"]
    for method, url, body in [("get", f"/api/v1/dms/conversations/{cid}", None),
                              ("patch", f"/api/v1/dms/conversations/{cid}", {"retention": {"policy": "burn_on_read"}}),
                              ("get", f"/api/v1/dms/conversations/{cid}/messages", None),
                              ("post", f"/api/v1/dms/conversations/{cid}/participants", {"add": [eve.id]}),
                              ("get", "/api/v1/dms/conversations/not-a-uuid", None)]:
        response = getattr(eve.device.client, method)(url, body, format="json")
        assert response.status_code == 404 and response.json()["error"] == "not_found", url


def test_retention_patch_by_any_participant_within_limits():
    alice, bob = make_person(1), make_person(1)
    conv = create_conversation(alice.device, [bob.id])
    url = f"/api/v1/dms/conversations/{conv['conversation_id']}"
    response = bob.device.client.patch(url, {"retention": {"policy": "ttl", "ttl_days": 30}}, format="json")
    assert response.status_code == 200 and response.json()["retention"] == {"policy": "ttl", "ttl_days": 30}
    for retention, code in [({"policy": "ttl", "ttl_days": 31}, "invalid_retention"),
                            ({"policy": "ttl"}, "invalid_retention"),
                            ({"policy": "burn_on_read", "ttl_days": 3}, "invalid_retention"),
                            ({"policy": "permanent"}, "permanent_not_allowed")]:
        response = bob.device.client.patch(url, {"retention": retention}, format="json")
        assert response.json()["error"] == code, retention
    response = bob.device.client.patch(url, {"retention": {"policy": "forever"}}, format="json")
    assert response.status_code == 400
    conf = server_settings_get()
    conf.allow_permanent = True
    conf.save()
    response = bob.device.client.patch(url, {"retention": {"policy": "permanent"}}, format="json")
    assert response.status_code == 200 and response.json()["retention"] == {"policy": "permanent", "ttl_days": None}


def test_retention_at_creation():
    alice, bob = make_person(1), make_person(1)
    conv = create_conversation(alice.device, [bob.id], retention={"policy": "burn_on_read"}, expect=201)
    assert conv["retention"] == {"policy": "burn_on_read", "ttl_days": None}
    response = alice.device.client.post("/api/v1/dms/conversations", {
        "participants": [make_person(1).id], "retention": {"policy": "ttl", "ttl_days": 0}}, format="json")
    assert response.status_code == 400


def test_membership_changes_bump_epoch_and_participants_hash():
    alice, bob, carol, dave = (make_person(1) for _ in range(4))
    group = create_conversation(alice.device, [bob.id, carol.id])
    cid = group["conversation_id"]
    response = bob.device.client.post(f"/api/v1/dms/conversations/{cid}/participants", {"add": [dave.id]},
                                      format="json")
    assert response.status_code == 200
    after_add = response.json()
    assert after_add["epoch"] == 2 and dave.id in after_add["participants"]
    assert after_add["participants_sha256"] == protocol.participants_sha256(after_add["participants"])
    # adding someone already there changes nothing
    again = bob.device.client.post(f"/api/v1/dms/conversations/{cid}/participants", {"add": [dave.id]},
                                   format="json").json()
    assert again["epoch"] == 2
    # only the creator removes others
    response = bob.device.client.delete(f"/api/v1/dms/conversations/{cid}/participants/{carol.id}")
    assert response.status_code == 403
    assert alice.device.client.delete(f"/api/v1/dms/conversations/{cid}/participants/{carol.id}").status_code == 204
    # anyone may leave
    assert dave.device.client.delete(f"/api/v1/dms/conversations/{cid}/participants/{dave.id}").status_code == 204
    now = alice.device.client.get(f"/api/v1/dms/conversations/{cid}").json()
    assert now["participants"] == sorted([alice.id, bob.id]) and now["epoch"] == 4
    assert carol.device.client.get(f"/api/v1/dms/conversations/{cid}").status_code == 404


def test_direct_participants_never_change():
    alice, bob, carol = (make_person(1) for _ in range(3))
    conv = create_conversation(alice.device, [bob.id])
    cid = conv["conversation_id"]
    response = alice.device.client.post(f"/api/v1/dms/conversations/{cid}/participants", {"add": [carol.id]},
                                        format="json")
    assert response.status_code == 409 and response.json()["error"] == "direct_conversation"
    assert alice.device.client.delete(f"/api/v1/dms/conversations/{cid}/participants/{alice.id}").status_code == 409


def test_removed_users_pending_deliveries_are_dropped():
    alice, bob, carol = (make_person(1) for _ in range(3))
    group = create_conversation(alice.device, [bob.id, carol.id])
    assert send(alice.device, build_send(alice.device, group)).status_code == 201
    assert len(sync(carol.device)["messages"]) == 1
    alice.device.client.delete(f"/api/v1/dms/conversations/{group['conversation_id']}/participants/{carol.id}")
    assert sync(carol.device)["messages"] == []
    assert len(sync(bob.device)["messages"]) == 1


def test_empty_group_is_deleted_with_its_messages():
    alice, bob, carol = (make_person(1) for _ in range(3))
    group = create_conversation(alice.device, [bob.id, carol.id])
    cid = group["conversation_id"]
    assert send(alice.device, build_send(alice.device, group)).status_code == 201
    for person in (alice, bob, carol):
        assert person.device.client.delete(
            f"/api/v1/dms/conversations/{cid}/participants/{person.id}").status_code == 204
    assert not Conversation.objects.filter(id=cid).exists()
    assert not PendingDm.objects.exists() and not Delivery.objects.exists()


def test_device_registration_and_revocation_bump_epochs():
    alice, bob = make_person(1), make_person(1)
    conv = create_conversation(alice.device, [bob.id])
    url = f"/api/v1/dms/conversations/{conv['conversation_id']}"
    second = bob.add_device("second")
    assert alice.device.client.get(url).json()["epoch"] == 2
    bob.master_client().delete(f"/api/v1/devices/{second.id}")
    assert alice.device.client.get(url).json()["epoch"] == 3


def test_master_session_is_refused_on_every_dm_endpoint():
    alice = make_person(1)
    client = login(alice.master)
    for method, url in [("get", "/api/v1/dms/conversations"), ("post", "/api/v1/dms/send"),
                        ("post", "/api/v1/dms/sync"), ("post", "/api/v1/dms/ack")]:
        response = getattr(client, method)(url, {}, format="json")
        assert response.status_code == 403 and response.json()["error"] == "device_session_required", url


def _limit(n: int) -> None:
    conf = server_settings_get()
    conf.max_conversations_per_user = n
    conf.save()


def test_conversation_limit_binds_every_participant_whoever_added_them():
    """Issue 10 point 12: strangers could add a user to any number of conversations."""
    alice, bob, carol, dave, erin = (make_person(1) for _ in range(5))
    _limit(2)
    direct = create_conversation(alice.device, [carol.id], expect=201)
    group = create_conversation(bob.device, [dave.id, erin.id], expect=201)
    create_conversation(bob.device, [carol.id, erin.id], expect=201)  # carol is now in 2
    for participants in ([carol.id, alice.id], [carol.id]):  # a new group, a new direct conversation
        response = dave.device.client.post("/api/v1/dms/conversations", {"participants": participants},
                                           format="json")
        assert response.status_code == 409, response.content
        assert response.json()["error"] == "conversation_limit_reached"
        assert response.json()["users"] == [carol.id]
    # adding her to an existing group
    url = f"/api/v1/dms/conversations/{group['conversation_id']}/participants"
    response = bob.device.client.post(url, {"add": [carol.id, alice.id]}, format="json")
    assert response.status_code == 409 and response.json()["users"] == [carol.id]
    assert carol.id not in bob.device.client.get(url[:-len("/participants")]).json()["participants"]
    assert alice.id not in bob.device.client.get(url[:-len("/participants")]).json()["participants"]
    # the existing direct conversation is still found, and others still join
    assert create_conversation(carol.device, [alice.id], expect=200)["conversation_id"] == direct["conversation_id"]
    assert bob.device.client.post(url, {"add": [alice.id]}, format="json").status_code == 200
    # several at the limit are all named; the creator counts too
    response = erin.device.client.post("/api/v1/dms/conversations",
                                       {"participants": [alice.id, carol.id]}, format="json")
    assert response.status_code == 409 and response.json()["users"] == sorted([alice.id, carol.id, erin.id])


def test_conversation_list_pages_latest_activity_first():
    alice = make_person(1)
    others = [make_person(1) for _ in range(5)]
    convs = [create_conversation(alice.device, [p.id]) for p in others]
    assert send(alice.device, build_send(alice.device, convs[1])).status_code == 201
    expected = [convs[1], convs[4], convs[3], convs[2], convs[0]]
    seen, cursor = [], None
    while True:
        query = {"limit": 2} | ({"after": cursor} if cursor else {})
        response = alice.device.client.get("/api/v1/dms/conversations", query)
        assert response.status_code == 200, response.content
        page = response.json()
        assert set(page) == {"conversations", "has_more", "cursor"} and len(page["conversations"]) <= 2
        seen += [c["conversation_id"] for c in page["conversations"]]
        cursor = page["cursor"]
        if not page["has_more"]:
            break
    assert seen == [c["conversation_id"] for c in expected]
    everything = alice.device.client.get("/api/v1/dms/conversations").json()
    assert [c["conversation_id"] for c in everything["conversations"]] == seen and not everything["has_more"]
    assert everything["conversations"][0]["participants"] == sorted([alice.id, others[1].id])


@pytest.mark.parametrize("query", [{"limit": "0"}, {"limit": "501"}, {"limit": str(10 ** 30)}, {"limit": ""},
                                   {"after": "garbage"}, {"after": "AAE="},
                                   {"after": protocol.b64e(b"9999-12-31T23:59:59-01:00|"
                                                           b"00000000-0000-4000-8000-000000000000")},
                                   {"after": protocol.b64e(b"2026-01-01T00:00:00+00:00|1")}])
def test_conversation_list_bad_query_is_400(query):
    alice = make_person(1)
    response = alice.device.client.get("/api/v1/dms/conversations", query)
    assert response.status_code == 400, response.content
    assert response.json()["error"] == ("invalid_request" if "limit" in query else "invalid_cursor")

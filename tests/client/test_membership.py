"""§6 "Membership a client accepts": a direct conversation keeps its two
participants and its kind for ever, whatever the server says later (a
conversation view, a CONVERSATION_UPDATE, a stale_epoch answer); groups change
and every change is shown. The server lies by changing its own rows."""
import httpx
import pytest
from django.utils import timezone

from dmclient import protocol
from devices.models import User
from dmclient import ClientError
from dms.models import Conversation, ConversationMember, Delivery


def server_adds(conversation_id: str, intruder) -> None:
    """The malicious server makes `intruder` a participant and moves to the next epoch."""
    conversation = Conversation.objects.get(id=conversation_id)
    ConversationMember.objects.create(conversation=conversation, user=User.objects.get(username=intruder.user_id),
                                      joined_at=timezone.now())
    members = sorted(conversation.members.values_list("user__username", flat=True))
    Conversation.objects.filter(id=conversation_id).update(epoch=conversation.epoch + 1,
                                                           participants_sha256=protocol.participants_sha256(members))


def refusals(client) -> list[dict]:
    return [i for i in client.take_unshown() if i.get("kind") == "membership_refused"]


def test_a_third_user_in_a_direct_conversation_is_refused_and_never_wrapped_for(new_client):
    alice, bob, mallory = new_client("alice"), new_client("bob"), new_client("mallory")
    conversation, _ = alice.create_conversation([bob.user_id])
    cid = conversation["conversation_id"]
    alice.send(cid, "one")
    alice.take_unshown()
    server_adds(cid, mallory)
    # the send is answered stale_epoch (naming mallory); the refreshed view is refused
    with pytest.raises(ClientError) as exc:
        alice.send(cid, "two")
    assert exc.value.code == "membership_refused"
    assert not Delivery.objects.filter(device__device_id=mallory.device_id).exists()
    assert alice.conversation(cid).participants == tuple(sorted([alice.user_id, bob.user_id]))
    [warning] = refusals(alice)
    assert mallory.user_id in warning["participants"] and "refused" in warning["detail"]
    # the list keeps our record too, and warns again; nothing about mallory is stored
    [listed] = alice.conversations()
    assert sorted(listed["participants"]) == sorted([alice.user_id, bob.user_id])
    assert len(refusals(alice)) == 1
    assert alice.store.db.execute("SELECT count(*) FROM conversation_epochs WHERE participants LIKE ?",
                                  (f"%{mallory.user_id}%",)).fetchone()[0] == 0
    assert alice.directory(bob.user_id) and not alice.store.db.execute(
        "SELECT 1 FROM directory WHERE user_id = ?", (mallory.user_id,)).fetchone()
    # bob, who first sees the conversation now, is shown three people in a direct one: refused too
    assert (bob.sync().accepted, bob.failures()[-1]["reason"]) == (0, "membership_refused")


def test_a_forged_conversation_update_or_kind_change_is_refused(new_client):
    alice, bob, mallory = new_client("alice"), new_client("bob"), new_client("mallory")
    conversation, _ = alice.create_conversation([bob.user_id])
    alice.take_unshown()
    three = sorted([alice.user_id, bob.user_id, mallory.user_id])
    swapped = sorted([alice.user_id, mallory.user_id])
    forged = [
        {**conversation, "participants": three, "participants_sha256": protocol.participants_sha256(three),
         "epoch": conversation["epoch"] + 1},
        {**conversation, "participants": swapped, "participants_sha256": protocol.participants_sha256(swapped),
         "epoch": conversation["epoch"] + 1},
        {**conversation, "kind": "group", "epoch": conversation["epoch"] + 1},
    ]
    for wire in forged:
        with pytest.raises(ClientError) as exc:
            alice.apply_conversation_update({"conversation": wire, "change": {"actor": None}})
        assert exc.value.code == "membership_refused"
    assert len(refusals(alice)) == 3
    view = alice.conversation(conversation["conversation_id"])
    assert (view.kind, view.epoch, view.participants) == ("direct", conversation["epoch"],
                                                          tuple(conversation["participants"]))


def test_group_membership_changes_are_accepted_and_shown(new_client):
    alice, bob, carol, dave = (new_client(n) for n in ("alice", "bob", "carol", "dave"))
    group, _ = alice.create_conversation([bob.user_id, carol.user_id])
    bob.conversations()
    bob.take_unshown()
    server_adds(group["conversation_id"], dave)  # even unasked-for, a group change is accepted...
    [view] = bob.conversations()
    assert dave.user_id in view["participants"]
    [shown] = [i for i in bob.take_unshown() if i.get("kind") == "membership"]  # ...and shown
    assert shown["added"] == [dave.user_id]


def test_a_stale_epoch_answer_naming_a_third_user_is_refused(new_client, lying):
    """The server's own rows are honest here; only its 409 names mallory."""
    alice, bob, mallory = new_client("alice", transport=lying), new_client("bob"), new_client("mallory")
    conversation, _ = alice.create_conversation([bob.user_id])
    alice.take_unshown()
    sends = []

    def stale(request, forward):
        if request.method == "POST" and request.url.path == "/api/v1/dms/send":
            sends.append(request)
            return httpx.Response(409, json={"error": "stale_epoch", "detail": "", "epoch": conversation["epoch"] + 1,
                                             "participants": sorted([*conversation["participants"], mallory.user_id])})
    lying.rewrite = stale
    with pytest.raises(ClientError) as exc:
        alice.send(conversation["conversation_id"], "one")
    assert exc.value.code == "membership_refused" and len(sends) == 1
    [warning] = refusals(alice)
    assert mallory.user_id in warning["participants"]
    assert alice.conversation(conversation["conversation_id"]).participants == tuple(conversation["participants"])

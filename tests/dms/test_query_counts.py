"""Per-request work does not grow with the batch: a fixed number of queries
for send, sync and ack whatever the message and recipient counts.

The bounds are the real counts, so a new query on a hot path fails here.
Each includes the session lookup and one read of the server settings (the
`last_seen_at` write, at most once a minute per device, was done at login)."""
import pytest

from tests.factories import ack, build_send, create_conversation, make_person, send, sync

pytestmark = pytest.mark.django_db

# session, settings, BEGIN, conversation lock (with the used-id check), participants and devices,
# 4 INSERTs (used id, message, deliveries, delivery states), COMMIT
SEND_QUERIES = 10
# session, settings, the page
SYNC_QUERIES = 3
# session, settings, BEGIN, lock messages, end deliveries, their states, counts for DM_STATUS, receipts, COMMIT
ACK_QUERIES = 9
# ... and for burn_on_read: the burned ones found, and deleted with their deliveries and used ids
ACK_BURN_QUERIES = ACK_QUERIES + 4


@pytest.mark.parametrize("recipients", [1, 8])
def test_send_query_count_is_flat(recipients, django_assert_max_num_queries):
    alice = make_person(1)
    others = [make_person(1) for _ in range(recipients)]
    group = create_conversation(alice.device, [p.id for p in others])
    body = build_send(alice.device, group)
    with django_assert_max_num_queries(SEND_QUERIES):
        assert send(alice.device, body).status_code == 201


@pytest.mark.parametrize("policy", ["ttl", "burn_on_read"])
@pytest.mark.parametrize("messages", [1, 50])
def test_sync_and_ack_query_counts_are_flat(messages, policy, django_assert_max_num_queries):
    alice, bob = make_person(1), make_person(1)
    retention = {"policy": "ttl", "ttl_days": 7} if policy == "ttl" else {"policy": policy}
    conv = create_conversation(alice.device, [bob.id], retention=retention)
    for _ in range(messages):
        send(alice.device, build_send(alice.device, conv))
    with django_assert_max_num_queries(SYNC_QUERIES):
        page = sync(bob.device, limit=100)
    assert len(page["messages"]) == messages
    with django_assert_max_num_queries(ACK_QUERIES if policy == "ttl" else ACK_BURN_QUERIES):
        assert len(ack(bob.device, [m["message_id"] for m in page["messages"]])["acked"]) == messages


# session, settings (the body limit), the statuses with their devices' states
STATUS_QUERIES = 3


@pytest.mark.parametrize("messages,recipients", [(1, 1), (30, 8)])
def test_status_query_count_is_flat(messages, recipients, django_assert_max_num_queries):
    alice = make_person(1)
    others = [make_person(1) for _ in range(recipients)]
    group = create_conversation(alice.device, [p.id for p in others])
    ids = []
    for _ in range(messages):
        body = build_send(alice.device, group)
        send(alice.device, body)
        ids.append(body["message_id"])
    ack(others[0].device, ids[:1], failed=ids[1:2])
    with django_assert_max_num_queries(STATUS_QUERIES):
        response = alice.device.client.post("/api/v1/dms/status", {"message_ids": ids}, format="json")
    assert len(response.json()["statuses"]) == messages
    assert all(len(s["devices"]) == recipients for s in response.json()["statuses"])
    with django_assert_max_num_queries(STATUS_QUERIES):
        assert alice.device.client.get(f"/api/v1/dms/messages/{ids[0]}/status").status_code == 200

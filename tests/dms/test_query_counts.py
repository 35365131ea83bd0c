"""Per-request work does not grow with the batch: a fixed number of queries
for send, sync and ack whatever the message and recipient counts."""
import pytest

from tests.factories import ack, build_send, create_conversation, make_person, send, sync

pytestmark = pytest.mark.django_db

# auth (session lookup + last_seen) and the settings row are part of each count
SEND_QUERIES = 18
SYNC_QUERIES = 5
ACK_QUERIES = 12


@pytest.mark.parametrize("recipients", [1, 8])
def test_send_query_count_is_flat(recipients, django_assert_max_num_queries):
    alice = make_person(1)
    others = [make_person(1) for _ in range(recipients)]
    group = create_conversation(alice.device, [p.id for p in others])
    body = build_send(alice.device, group)
    with django_assert_max_num_queries(SEND_QUERIES):
        assert send(alice.device, body).status_code == 201


@pytest.mark.parametrize("messages", [1, 50])
def test_sync_and_ack_query_counts_are_flat(messages, django_assert_max_num_queries):
    alice, bob = make_person(1), make_person(1)
    conv = create_conversation(alice.device, [bob.id])
    for _ in range(messages):
        send(alice.device, build_send(alice.device, conv))
    with django_assert_max_num_queries(SYNC_QUERIES):
        page = sync(bob.device, limit=100)
    assert len(page["messages"]) == messages
    with django_assert_max_num_queries(ACK_QUERIES):
        assert len(ack(bob.device, [m["message_id"] for m in page["messages"]])["acked"]) == messages

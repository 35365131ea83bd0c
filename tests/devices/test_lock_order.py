"""Lock order (issue 10 point 15): revocation and suspension lock the user's
conversation rows first (id order), then pending_dms rows, then deliveries, as
a removal from a group does. In the opposite order a revocation racing a
removal of the same user deadlocked on PostgreSQL."""
import pytest

from devices.models import Device, User
from devices.services import device_revoke, user_suspend
from dms.models import Conversation
from dms.services import conversation_remove_participant
from tests.dms.test_concurrency import run_together
from tests.factories import build_send, create_conversation, make_person, send

pytestmark = [pytest.mark.requires_postgres, pytest.mark.django_db(transaction=True)]

ROUNDS = 12


def group_with_pending_mail(messages: int = 8):
    alice, bob, carol = make_person(1), make_person(2), make_person(1)
    groups = [create_conversation(alice.device, [bob.id, carol.id], expect=201) for _ in range(2)]
    for group in groups:
        for _ in range(messages):
            assert send(alice.device, build_send(alice.device, group)).status_code == 201
    return alice, bob, groups


@pytest.mark.parametrize("round_", range(ROUNDS))
def test_revocation_racing_removal_of_the_same_user_never_deadlocks(round_):
    alice, bob, groups = group_with_pending_mail()
    creator = User.objects.get(username=alice.id)
    device = Device.objects.select_related("user").get(device_id=bob.devices[0].id)
    removals = [lambda g=g: conversation_remove_participant(
        conversation=Conversation.objects.get(id=g["conversation_id"]), actor=creator, user_id=bob.id)
        for g in groups]
    run_together([lambda: device_revoke(device=device), *removals])  # fails on a DeadlockDetected
    assert Device.objects.get(pk=device.pk).revoked_at is not None


@pytest.mark.parametrize("round_", range(ROUNDS // 2))
def test_suspension_racing_removal_and_revocation_never_deadlocks(round_):
    alice, bob, groups = group_with_pending_mail()
    creator = User.objects.get(username=alice.id)
    device = Device.objects.select_related("user").get(device_id=bob.devices[1].id)
    removal = lambda: conversation_remove_participant(  # noqa: E731
        conversation=Conversation.objects.get(id=groups[0]["conversation_id"]), actor=creator, user_id=bob.id)
    run_together([lambda: user_suspend(user=User.objects.get(username=bob.id)),
                  lambda: device_revoke(device=device), removal])
    assert User.objects.get(username=bob.id).suspended_at is not None

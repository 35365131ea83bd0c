"""CONVERSATION_UPDATE (§9): to everyone who was a participant before or after."""
from dms.selectors import conversation_participants_map
from dms.wire import conversation_wire
from gateway.notify import notify_users_on_commit


def conversation_update_on_commit(*, conversations, actor, added=(), removed=()) -> None:
    participants = conversation_participants_map(conversation_ids=[c.id for c in conversations])
    for conversation in conversations:
        members = participants[conversation.id]
        notify_users_on_commit(
            user_ids=[*members, *removed], op="CONVERSATION_UPDATE",
            d={
                "conversation": conversation_wire(conversation, members),
                "change": {
                    "actor": actor.username if actor is not None else None,
                    "added": sorted(added), "removed": sorted(removed),
                    "epoch": conversation.epoch, "retention": conversation.retention,
                },
            })

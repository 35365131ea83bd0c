"""Gateway events of the mailbox (§9): CONVERSATION_UPDATE to everyone who was
a participant before or after; DM_STATUS to the devices of a message's sender's user."""
from dms.selectors import conversation_participants_map
from dms.wire import conversation_wire
from gateway.notify import notify_users_batch_on_commit, notify_users_on_commit


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


def dm_status_on_commit(*, statuses: dict[str, dict]) -> None:
    """DM_STATUS (§7a) for these messages: one frame per message with its
    counts as this transaction leaves them (`statuses` as
    `delivery_counts_for_messages` gives them); all frames for one user go in
    one channel-layer send, so an ACK of 500 ids or a purge chunk is one round
    trip per user."""
    frames: dict[str, list[tuple[str, dict]]] = {}
    for message_id, entry in sorted(statuses.items()):
        frames.setdefault(entry["sender"], []).append(("DM_STATUS", {
            "message_id": message_id, "conversation_id": entry["conversation_id"], "counts": entry["counts"]}))
    notify_users_batch_on_commit(events=frames)

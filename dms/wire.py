"""JSON shapes of the protocol's objects (§5, §7), shared by APIs and events."""
from decentcom.timefmt import rfc3339


def conversation_wire(conversation, participants: list[str]) -> dict:
    return {
        "conversation_id": str(conversation.id),
        "kind": conversation.kind,
        "participants": participants,
        "participants_sha256": conversation.participants_sha256,
        "created_by": conversation.created_by.username if conversation.created_by_id else None,
        "epoch": conversation.epoch,
        "retention": conversation.retention,
        "created_at": rfc3339(conversation.created_at),
        "updated_at": rfc3339(conversation.updated_at),
    }

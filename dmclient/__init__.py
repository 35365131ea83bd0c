"""decentcom reference client: the SDK (`Client`) and the CLI (`python -m dmclient`).

All protocol constructions come from `decentcom.protocol`; this package adds
the local store, the sessions, the send/receive logic and the gateway listener."""
from dmclient.client import Client, ClientError, ConversationView, SendResult

__all__ = ["Client", "ClientError", "ConversationView", "SendResult"]

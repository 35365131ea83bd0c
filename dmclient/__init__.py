"""decentcom reference client: the SDK (`Client`) and the CLI (`dmc`, or `python -m dmclient`).

`dmclient.protocol` is the one protocol module, shared with the server (which
imports only it); this package adds the local store, the sessions, the
send/receive logic and the gateway listener."""
from __future__ import annotations

__all__ = ["Client", "ClientError", "ConversationView", "SendResult"]


def __getattr__(name: str):
    # Lazy, so that the server's `from dmclient import protocol` loads no client code.
    if name in __all__:
        from dmclient import client
        return getattr(client, name)
    raise AttributeError(f"module 'dmclient' has no attribute {name!r}")

"""A small populated mailbox on a live server for the schema fuzzer, and the ids it aims at.

Random bytes from the schema almost never name a real conversation, user or
device, and never carry a valid signature, so left alone the fuzzer would
only see 400s and 404s. `World.aim` lets hypothesis choose, per example,
between the generated value and a real one, so the 2xx paths and the
deeper checks (membership, certificates, signatures, retries) are reached too.
"""
import time
import uuid

import secrets

from hypothesis import strategies as st

from dmclient import protocol
from devices.selectors import token_sha256
from tests.factories import Keys, build_send, create_conversation, issue_cert, login, make_person, send
from tests.live import LiveServer

GENERATED = "generated"
# Path ids the schema's pattern would never produce: any script, and often NUL,
# which PostgreSQL refuses in text. Not the URL's own delimiters, which
# schemathesis puts in the URL as they are.
_TEXT = st.text(st.characters(exclude_characters="/?#%", exclude_categories=["Cs"]), max_size=50)
ANY_TEXT = st.one_of(_TEXT.filter(bool), st.tuples(_TEXT, _TEXT).map("\x00".join))
CALLER_TOKEN = "hardening-fuzz-caller-session"


def pick(data, weights: dict[str, int]) -> str:
    """A hypothesis-chosen key of `weights`, about in proportion to its weight."""
    return data.draw(st.sampled_from([key for key, weight in weights.items() for _ in range(weight)]))


def no_rate_limits(server: LiveServer) -> None:
    """The fuzzer sends far more than a person would; limits have their own tests."""
    server.database.sql(
        "UPDATE dm_server_settings SET send_rate_per_device = 0, send_rate_per_user = 0, "
        "challenge_rate_per_ip = 0, registration_rate_per_user = 0, "
        "group_creation_rate_per_user = 0, max_devices_per_user = 1000, max_conversations_per_user = 100000")


class World:
    """alice (the caller: device 0; device 1 may be revoked), bob, carol, and
    dave who shares nothing with alice; a direct conversation and a group
    with messages both ways; a direct conversation alice is not part of."""

    def __init__(self, server: LiveServer):
        self.server = server
        people = [make_person(n, base_url=server.url) for n in (2, 1, 1, 1)]
        self.alice, self.bob, self.carol, self.dave = people
        self.caller = self.alice.devices[0]
        self.spare = self.alice.devices[1]
        self.direct = create_conversation(self.caller, [self.bob.id])
        self.group = create_conversation(self.caller, [self.bob.id, self.carol.id])
        self.foreign = create_conversation(self.bob.device, [self.carol.id])
        self.sent: list[dict] = []
        for conversation in (self.direct, self.group):
            self.send_valid(conversation)
            assert send(self.bob.device, build_send(self.bob.device, conversation)).status_code == 201
        self.cursors = {"sync": self._sync_cursor(), "history": self._history_cursor()}
        # A real session of the caller's device, under a token known before the
        # test starts (an earlier world's session gives the token up).
        sql = server.database.sql
        sql("UPDATE auth_sessions SET token_sha256 = %s WHERE token_sha256 = %s",
            (secrets.token_hex(32), token_sha256(CALLER_TOKEN)))
        sql("UPDATE auth_sessions SET token_sha256 = %s WHERE token_sha256 = %s",
            (token_sha256(CALLER_TOKEN), token_sha256(self.fresh_token())))
        self.token = CALLER_TOKEN

    def send_valid(self, conversation: dict) -> dict:
        body = build_send(self.caller, self._fresh(conversation))
        assert send(self.caller, body).status_code == 201
        self.sent.append(body)
        return body

    def _fresh(self, conversation: dict) -> dict:
        response = self.caller.client.get(f"/api/v1/dms/conversations/{conversation['conversation_id']}")
        return response.json() if response.status_code == 200 else conversation

    def _sync_cursor(self) -> str:
        return self.caller.client.post("/api/v1/dms/sync", {"limit": 1}, format="json").json()["cursor"]

    def _history_cursor(self) -> str:
        url = f"/api/v1/dms/conversations/{self.direct['conversation_id']}/messages?limit=1"
        return self.caller.client.get(url).json()["cursor"]

    def pending_ids(self) -> list[str]:
        page = self.caller.client.post("/api/v1/dms/sync", {"limit": 500}, format="json").json()
        return [m["message_id"] for m in page["messages"]]

    def fresh_token(self) -> str:
        return login(self.caller.keys, base_url=self.server.url).token

    def new_device_cert(self, **kw) -> tuple[Keys, dict]:
        keys = Keys()
        return keys, issue_cert(self.alice.master, keys, **kw)

    # -- choosing real values ------------------------------------------------------

    def aim(self, case, data) -> dict:
        """Maybe replace parts of `case` with real values, and choose its
        credentials. Returns the headers set here (real credentials, which the
        auth checks must not take for generated ones)."""
        operation = f"{case.method.upper()} {case.path}"
        params = case.path_parameters or {}
        if "conversation_id" in params:
            membership = "participants" in case.path
            choice = pick(data, {"fresh_group": 3 if membership else 1, "group": 1, "direct": 1 if membership else 3,
                                 "foreign": 1, GENERATED: 2})
            if choice == "fresh_group":
                params["conversation_id"] = create_conversation(
                    self.caller, [self.bob.id, self.carol.id])["conversation_id"]
            elif choice != GENERATED:
                params["conversation_id"] = getattr(self, choice)["conversation_id"]
        if "user_id" in params:
            choice = pick(data, {"alice": 1, "bob": 1, "carol": 1, "dave": 1, "any_text": 1, GENERATED: 2})
            if choice == "any_text":
                params["user_id"] = data.draw(ANY_TEXT)
            elif choice != GENERATED:
                params["user_id"] = getattr(self, choice).id
        if "device_id" in params:
            choice = pick(data, {"spare": 1, "bob": 1, "new": 2, "any_text": 1, GENERATED: 2})
            if choice == "any_text":
                params["device_id"] = data.draw(ANY_TEXT)
            elif choice == "spare":
                params["device_id"] = self.spare.id
            elif choice == "bob":
                params["device_id"] = self.bob.device.id
            elif choice == "new":
                params["device_id"] = self.alice.add_device().id
        if "before" in (case.query or {}) and pick(data, {"real": 1, GENERATED: 1}) == "real":
            case.query["before"] = self.cursors["history"]
        aim_body = self._BODIES.get(operation)
        if aim_body is not None and isinstance(case.body, dict):
            aim_body(self, case, data)
        headers = self._credentials(case, operation, data)
        case.meta  # noqa: B018 - re-checks the edited case, so negative checks judge what is sent
        return headers

    def _credentials(self, case, operation: str, data) -> dict:
        if operation == "POST /api/v1/auth/logout":
            token = self.fresh_token()  # the caller's own session must outlive the run
        else:
            who = pick(data, {"device": 6, "master": 1, GENERATED: 1})
            if who == GENERATED:
                return {}
            token = self.token if who == "device" else self.alice.master_client().token
        case.headers["Authorization"] = f"Bearer {token}"
        return {"Authorization": case.headers["Authorization"]}

    def _aim_dms_send(self, case, data) -> None:
        choice = pick(data, {"valid": 2, "retry": 1, "reused_id": 1, "stale": 1, "foreign": 1, "bad_signature": 1,
                             "mismatched": 1, "unwrapped": 1, GENERATED: 4})
        if choice == GENERATED:
            return
        if choice == "retry" and self.sent:
            case.body = dict(self.sent[-1])
            return
        conversation = self._fresh(self.foreign if choice == "foreign" else
                                   data.draw(st.sampled_from([self.direct, self.group])))
        if choice == "stale":
            conversation = {**conversation, "epoch": conversation["epoch"] + 100}
        kw = {}
        if choice == "reused_id" and self.sent:
            kw["message_id"] = self.sent[0]["message_id"]
        elif choice == "mismatched":
            kw["recipients"] = [self.dave.device.id]
        elif choice == "unwrapped":
            kw["wrap_for"] = []
        elif choice == "foreign":
            kw["recipients"] = []
        body = build_send(self.caller, conversation, **kw)
        if choice == "bad_signature":
            body["signature"] = protocol.b64e(bytes(64))
        case.body = body

    def _aim_dms_ack(self, case, data) -> None:
        for key in ("message_ids", "failed"):
            choice = pick(data, {"pending": 2, "foreign": 1, GENERATED: 2})
            if choice == "pending":
                case.body[key] = self.pending_ids()[:3]
            elif choice == "foreign":
                case.body[key] = [str(uuid.uuid4())]
        choice = pick(data, {"own": 1, "other": 1, GENERATED: 2})
        if choice != GENERATED:
            case.body["device_id"] = self.caller.id if choice == "own" else self.bob.device.id

    def _aim_dms_sync(self, case, data) -> None:
        if pick(data, {"real": 1, GENERATED: 1}) == "real":
            case.body["after"] = self.cursors["sync"]

    def _aim_dms_conversations(self, case, data) -> None:
        choice = pick(data, {"bob": 1, "group": 1, "dave": 1, GENERATED: 2})
        if choice != GENERATED:
            case.body["participants"] = {"bob": [self.bob.id], "group": [self.bob.id, self.carol.id],
                                         "dave": [self.dave.id]}[choice]

    def _aim_dms_conversation_patch(self, case, data) -> None:
        choice = pick(data, {"ttl": 1, "burn_on_read": 1, "permanent": 1, GENERATED: 2})
        if choice != GENERATED:
            case.body["retention"] = {"policy": choice, "ttl_days": 7 if choice == "ttl" else None}

    def _aim_dms_participants(self, case, data) -> None:
        choice = pick(data, {"dave": 1, "bob": 1, GENERATED: 1})
        if choice != GENERATED:
            case.body["add"] = [getattr(self, choice).id]

    def _aim_auth_challenge(self, case, data) -> None:
        if pick(data, {"real": 1, GENERATED: 1}) == "real":
            case.body["pubkey"] = self.caller.id

    def _aim_auth_verify(self, case, data) -> None:
        choice = pick(data, {"new_device": 1, "known_device": 1, "master": 1, "wrong_origin": 1, GENERATED: 2})
        if choice == GENERATED:
            return
        keys, cert = self.new_device_cert() if choice == "new_device" else (self.caller.keys, None)
        if choice == "master":
            keys = self.alice.master
        challenge = self.caller.client.post("/api/v1/auth/challenge", {"pubkey": keys.id}, format="json").json()
        origin = "http://evil.example" if choice == "wrong_origin" else self.caller.client.origin
        signed = protocol.auth_signed_bytes(challenge=challenge["challenge"], pubkey=keys.id, server=origin)
        case.body = {"pubkey": keys.id, "challenge": challenge["challenge"],
                     "signature": protocol.b64e(keys.sign(signed))}
        if cert is not None:
            case.body["certificate"] = cert

    def _aim_devices(self, case, data) -> None:
        choice = pick(data, {"new": 1, "same": 1, "stale": 1, "other_master": 1, "expired": 1, GENERATED: 3})
        now = int(time.time())
        if choice == "new":
            case.body["certificate"] = self.new_device_cert()[1]
        elif choice == "same":
            case.body["certificate"] = self.caller.cert
        elif choice == "stale":
            case.body["certificate"] = issue_cert(self.alice.master, self.caller.keys, issued_at=now - 3600)
        elif choice == "other_master":
            case.body["certificate"] = issue_cert(self.bob.master, Keys())
        elif choice == "expired":
            case.body["certificate"] = self.new_device_cert(issued_at=now - 7200, expires_at=now - 3600)[1]

    _BODIES = {
        "POST /api/v1/dms/send": _aim_dms_send,
        "POST /api/v1/dms/ack": _aim_dms_ack,
        "POST /api/v1/dms/sync": _aim_dms_sync,
        "POST /api/v1/dms/conversations": _aim_dms_conversations,
        "PATCH /api/v1/dms/conversations/{conversation_id}": _aim_dms_conversation_patch,
        "POST /api/v1/dms/conversations/{conversation_id}/participants": _aim_dms_participants,
        "POST /api/v1/auth/challenge": _aim_auth_challenge,
        "POST /api/v1/auth/verify": _aim_auth_verify,
        "POST /api/v1/devices": _aim_devices,
    }

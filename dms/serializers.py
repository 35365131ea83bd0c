from drf_spectacular.utils import PolymorphicProxySerializer, extend_schema_field
from rest_framework import serializers

from dmclient import protocol
from decentcom.fields import B58KeyField, B64Field, StrictCharField, StrictIntegerField, UuidField
from devices.selectors import device_public_key
from dms.models import DeliveryState, Policy

MAX_RECIPIENTS = 1000
MAX_ACK_IDS = 500
MAX_STATUS_IDS = 500


class RetentionSerializer(serializers.Serializer):
    policy = serializers.ChoiceField(choices=Policy.values)
    ttl_days = StrictIntegerField(required=False, allow_null=True, min_value=1)

    def to_internal_value(self, data):
        value = super().to_internal_value(data)
        return {"policy": value["policy"], "ttl_days": value.get("ttl_days")}


class ConversationOutput(serializers.Serializer):
    conversation_id = serializers.UUIDField()
    kind = serializers.ChoiceField(choices=["direct", "group"])
    participants = serializers.ListField(child=serializers.CharField())
    participants_sha256 = serializers.CharField()
    created_by = serializers.CharField(allow_null=True)
    epoch = serializers.IntegerField()
    retention = RetentionSerializer()
    created_at = serializers.DateTimeField()
    updated_at = serializers.DateTimeField()


def key_wrap_as_sent(value: dict) -> dict:
    """A wrap `protocol.key_wrap_problems` found nothing wrong with, as sent
    (its strings are canonical base64, so it is stored and served back unchanged)."""
    if "v" not in value:
        return {"nonce": value["nonce"], "wrapped_key": value["wrapped_key"]}
    return {"v": 2, "signed_prekey_id": value["signed_prekey_id"], "one_time_id": value["one_time_id"],
            "ephemeral": value["ephemeral"], "nonce": value["nonce"], "wrapped_key": value["wrapped_key"]}


class KeyWrapV1Serializer(serializers.Serializer):
    """Schema only: a v1 wrap (§6)."""

    nonce = B64Field(length=protocol.NONCE_LEN)
    wrapped_key = B64Field(length=protocol.WRAPPED_KEY_LEN)


class KeyWrapV2Serializer(serializers.Serializer):
    """Schema only: a v2 wrap (§6b)."""

    v = serializers.IntegerField(min_value=2, max_value=2, help_text="2: a v2 wrap")
    signed_prekey_id = serializers.IntegerField(min_value=1, max_value=protocol.MAX_PREKEY_ID)
    one_time_id = serializers.IntegerField(min_value=1, max_value=protocol.MAX_PREKEY_ID, allow_null=True)
    ephemeral = B64Field(length=protocol.KEY_LEN)
    nonce = B64Field(length=protocol.NONCE_LEN)
    wrapped_key = B64Field(length=protocol.WRAPPED_KEY_LEN)


@extend_schema_field(PolymorphicProxySerializer(
    component_name="KeyWrap", serializers=[KeyWrapV1Serializer, KeyWrapV2Serializer], resource_type_field_name=None))
class KeyWrapField(serializers.Field):
    """A v1 or v2 key wrap, exactly (§7 check 3); the value is the wrap as sent."""

    def to_internal_value(self, data):
        problems = protocol.key_wrap_problems(data)
        if problems:  # by member where there is one: recipients.0.key_wrap.nonce (§10)
            raise serializers.ValidationError(problems if type(problems) is str else
                                              {key: [message] for key, message in problems.items()})
        return key_wrap_as_sent(data)

    def to_representation(self, value):
        return value


class RecipientSerializer(serializers.Serializer):
    device_id = B58KeyField()
    key_wrap = KeyWrapField(allow_null=True)


class MessageOutput(serializers.Serializer):
    message_id = serializers.UUIDField()
    conversation_id = serializers.UUIDField()
    sender = serializers.CharField()
    sender_device = serializers.CharField()
    sender_certificate = serializers.DictField()
    epoch = serializers.IntegerField()
    key_id = serializers.CharField()
    participants_sha256 = serializers.CharField()
    nonce = serializers.CharField()
    ciphertext = serializers.CharField()
    signature = serializers.CharField()
    key_wrap = KeyWrapField(allow_null=True)
    created_at = serializers.DateTimeField()
    expires_at = serializers.DateTimeField(allow_null=True)
    policy = serializers.ChoiceField(choices=Policy.values)


class MessagePageOutput(serializers.Serializer):
    messages = MessageOutput(many=True)
    has_more = serializers.BooleanField()
    cursor = serializers.CharField()


class SendInput(serializers.Serializer):
    message_id = UuidField()
    conversation_id = UuidField()
    epoch = StrictIntegerField(min_value=0)
    key_id = B64Field(length=32)
    participants_sha256 = B64Field(length=32)
    retention = RetentionSerializer()
    nonce = B64Field(length=protocol.NONCE_LEN)
    ciphertext = B64Field()
    signature = B64Field(length=protocol.SIGNATURE_LEN)
    recipients = serializers.ListField(child=RecipientSerializer(), max_length=MAX_RECIPIENTS)

    def validate_recipients(self, value):
        ids = [r["device_id"] for r in value]
        if len(ids) != len(set(ids)):
            raise serializers.ValidationError("a device appears twice")
        return value


def _b64(value, length: int | None = None) -> bytes:
    return protocol.b64d(value, length=length)


def _wrap(value) -> dict | None:
    if value is None:
        return None
    protocol.key_wrap_shape(value)  # ProtocolError: the slow path words the errors by member
    return key_wrap_as_sent(value)


def _send_input_plain(data) -> dict | None:
    """SendInput's validated data for a body that plainly passes, or None
    for anything else (SendInput then finds and words the errors). DRF's
    nested serializers cost more than the rest of a send's checks."""
    try:
        if type(data) is not dict or type(data.get("retention")) is not dict:
            return None
        retention, recipients, epoch = data["retention"], data["recipients"], data["epoch"]
        ttl_days = retention.get("ttl_days")
        if (not protocol.is_uuid(data["message_id"]) or not protocol.is_uuid(data["conversation_id"])
                or type(epoch) is not int or epoch < 0 or retention["policy"] not in Policy.values
                or (ttl_days is not None and (type(ttl_days) is not int or ttl_days < 1))
                or type(recipients) is not list or len(recipients) > MAX_RECIPIENTS):
            return None
        checked = []
        for recipient in recipients:
            if type(recipient) is not dict:
                return None
            device_public_key(recipient["device_id"])
            checked.append({"device_id": recipient["device_id"], "key_wrap": _wrap(recipient["key_wrap"])})
        if len({r["device_id"] for r in checked}) != len(checked):
            return None
        return {
            "message_id": data["message_id"], "conversation_id": data["conversation_id"], "epoch": epoch,
            "key_id": _b64(data["key_id"], 32), "participants_sha256": _b64(data["participants_sha256"], 32),
            "retention": {"policy": retention["policy"], "ttl_days": ttl_days},
            "nonce": _b64(data["nonce"], protocol.NONCE_LEN), "ciphertext": _b64(data["ciphertext"]),
            "signature": _b64(data["signature"], protocol.SIGNATURE_LEN), "recipients": checked,
        }
    except (KeyError, TypeError, protocol.ProtocolError):
        return None


def send_input_validate(data) -> dict:
    """SendInput's validated data; raises its ValidationError."""
    plain = _send_input_plain(data)
    if plain is not None:
        return plain
    serializer = SendInput(data=data)
    serializer.is_valid(raise_exception=True)
    return serializer.validated_data


class SkippedDeviceOutput(serializers.Serializer):
    device_id = serializers.CharField()
    reason = serializers.ChoiceField(choices=["mailbox_full"])


class SendOutput(serializers.Serializer):
    message_id = serializers.UUIDField()
    created_at = serializers.DateTimeField()
    expires_at = serializers.DateTimeField(allow_null=True)
    policy = serializers.ChoiceField(choices=Policy.values)
    recipients = serializers.IntegerField(help_text="deliveries stored")
    unreachable = serializers.ListField(child=serializers.CharField())
    skipped = SkippedDeviceOutput(many=True, help_text="recipient devices at their pending quota: not delivered")


class SyncInput(serializers.Serializer):
    limit = StrictIntegerField(required=False, min_value=1, max_value=500, default=100)
    after = StrictCharField(required=False, allow_null=True, max_length=200)


class AckInput(serializers.Serializer):
    message_ids = serializers.ListField(child=UuidField(), required=False, default=list)
    failed = serializers.ListField(child=UuidField(), required=False, default=list)
    device_id = B58KeyField(required=False)

    def validate(self, attrs):
        if len(attrs["message_ids"]) + len(attrs["failed"]) > MAX_ACK_IDS:
            raise serializers.ValidationError(f"at most {MAX_ACK_IDS} ids in all")
        return attrs


def _uuid_list(value) -> bool:
    return type(value) is list and all(protocol.is_uuid(item) for item in value)


def ack_input_validate(data) -> dict:
    """AckInput's validated data; raises its ValidationError. A body that
    plainly passes skips DRF's ListField, which cost ~1 ms per 500 ids."""
    if type(data) is dict and data.keys() <= {"message_ids", "failed", "device_id"}:
        message_ids, failed = data.get("message_ids", []), data.get("failed", [])
        if _uuid_list(message_ids) and _uuid_list(failed) and len(message_ids) + len(failed) <= MAX_ACK_IDS:
            plain = {"message_ids": message_ids, "failed": failed}
            if "device_id" not in data:
                return plain
            try:
                protocol.b58_key(data["device_id"])
                return {**plain, "device_id": data["device_id"]}
            except protocol.ProtocolError:
                pass
    serializer = AckInput(data=data)
    serializer.is_valid(raise_exception=True)
    return serializer.validated_data


class AckOutput(serializers.Serializer):
    acked = serializers.ListField(child=serializers.UUIDField())
    unknown = serializers.ListField(child=serializers.UUIDField())



class ServerRetentionOutput(serializers.Serializer):
    default = RetentionSerializer()
    max_ttl_days = serializers.IntegerField()
    permanent_allowed = serializers.BooleanField()
    max_undelivered_days = serializers.IntegerField()


class ServerLimitsOutput(serializers.Serializer):
    max_ciphertext_bytes = serializers.IntegerField()
    max_participants = serializers.IntegerField()
    max_recipients_per_message = serializers.IntegerField()
    max_devices_per_user = serializers.IntegerField()
    pending_quota = serializers.IntegerField(help_text="pending deliveries per device")
    max_request_bytes = serializers.IntegerField(help_text="request bodies over this are refused with 413")


class ServerGatewayOutput(serializers.Serializer):
    url = serializers.CharField(help_text="ws(s)://…/api/v1/gateway")
    heartbeat_interval_ms = serializers.IntegerField()


class ServerDescriptionOutput(serializers.Serializer):
    """§4 `GET /api/v1/server`."""

    protocol = serializers.CharField(help_text="the protocol version served")
    origin = serializers.CharField(help_text="the origin clients sign at login (§3)")
    retention = ServerRetentionOutput()
    limits = ServerLimitsOutput()
    gateway = ServerGatewayOutput()


class DeliveryStateOutput(serializers.Serializer):
    device_id = serializers.CharField()
    user_id = serializers.CharField()
    state = serializers.ChoiceField(choices=DeliveryState.State.values)
    at = serializers.DateTimeField(allow_null=True, help_text="when the final state happened; null while pending")
    reason = serializers.ChoiceField(choices=["revoked", "removed", "mailbox_full"], required=False,
                                     help_text="for dropped (revoked, removed) and skipped (mailbox_full)")


class DeliveryCountsOutput(serializers.Serializer):
    pending = serializers.IntegerField()
    delivered = serializers.IntegerField()
    failed = serializers.IntegerField()
    expired = serializers.IntegerField()
    dropped = serializers.IntegerField()
    skipped = serializers.IntegerField()


class DeliveryStatusOutput(serializers.Serializer):
    message_id = serializers.UUIDField()
    conversation_id = serializers.UUIDField(allow_null=True)
    policy = serializers.ChoiceField(choices=Policy.values)
    created_at = serializers.DateTimeField()
    expires_at = serializers.DateTimeField(allow_null=True)
    devices = DeliveryStateOutput(many=True, help_text="sorted by device_id")
    counts = DeliveryCountsOutput()


class StatusInput(serializers.Serializer):
    message_ids = serializers.ListField(child=UuidField(), max_length=MAX_STATUS_IDS)


class StatusOutput(serializers.Serializer):
    statuses = DeliveryStatusOutput(many=True)
    unknown = serializers.ListField(child=serializers.UUIDField())

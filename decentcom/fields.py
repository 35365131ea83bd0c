"""Strict DRF fields for the protocol's encodings (§1): wrong JSON types are
refused instead of coerced, and every encoding goes through `protocol`."""
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from dmclient import protocol


class _ProtocolField(serializers.Field):
    def to_representation(self, value):
        return value


@extend_schema_field(OpenApiTypes.STR)
class StrictCharField(serializers.CharField):
    def to_internal_value(self, data):
        if not isinstance(data, str):
            raise serializers.ValidationError("must be a string")
        return super().to_internal_value(data)


@extend_schema_field(OpenApiTypes.INT)
class StrictIntegerField(serializers.IntegerField):
    def to_internal_value(self, data):
        if isinstance(data, bool) or not isinstance(data, int):
            raise serializers.ValidationError("must be an integer")
        return super().to_internal_value(data)


@extend_schema_field({"type": "string", "description": "base58 Ed25519 public key (32 bytes)",
                      "pattern": "^[1-9A-HJ-NP-Za-km-z]{32,44}$"})
class B58KeyField(_ProtocolField):
    def to_internal_value(self, data):
        try:
            protocol.b58_key(data)
        except protocol.ProtocolError as exc:
            raise serializers.ValidationError(exc.detail) from None
        return data


@extend_schema_field({"type": "string", "format": "byte"})
class B64Field(_ProtocolField):
    """Canonical base64; the validated value is the decoded bytes."""

    def __init__(self, *, length: int | None = None, **kwargs):
        self.length = length
        super().__init__(**kwargs)

    def to_internal_value(self, data):
        try:
            return protocol.b64d(data, length=self.length, what=self.field_name or "value")
        except protocol.ProtocolError as exc:
            raise serializers.ValidationError(exc.detail) from None

    def to_representation(self, value):
        return protocol.b64e(value) if isinstance(value, bytes) else value


@extend_schema_field({"type": "string", "format": "uuid"})
class UuidField(_ProtocolField):
    """A lower-case UUID string, returned as a string."""

    def to_internal_value(self, data):
        if not protocol.is_uuid(data):
            raise serializers.ValidationError("must be a lower-case UUID string")
        return data


@extend_schema_field({"type": "object", "description": "wire certificate (PROTOCOL.md §2)",
                      "additionalProperties": True})
class CertificateField(_ProtocolField):
    """Structure and master signature checked; the value is a `protocol.Certificate`."""

    def to_internal_value(self, data):
        try:
            return protocol.cert_parse(data)
        except protocol.ProtocolError as exc:
            raise serializers.ValidationError(exc.detail) from None

    def to_representation(self, value):
        return value.wire() if isinstance(value, protocol.Certificate) else value

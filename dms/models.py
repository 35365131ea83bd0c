import uuid

from django.conf import settings
from django.core.validators import MinValueValidator
from django.db import models
from django.db.models import Q


class Policy(models.TextChoices):
    BURN_ON_READ = "burn_on_read", "burn on read"
    TTL = "ttl", "time to live"
    PERMANENT = "permanent", "permanent"


class ServerSettings(models.Model):
    """The admin's knobs (§8). One row; read on every request, so a change
    takes effect without a restart."""

    default_policy = models.CharField(max_length=16, choices=Policy.choices, default=Policy.TTL)
    default_ttl_days = models.PositiveIntegerField(default=14, validators=[MinValueValidator(1)])
    max_ttl_days = models.PositiveIntegerField(default=30, validators=[MinValueValidator(1)])
    allow_permanent = models.BooleanField(default=False)
    max_undelivered_days = models.PositiveIntegerField(default=30, validators=[MinValueValidator(1)])
    max_ciphertext_bytes = models.PositiveIntegerField(default=64 * 1024, validators=[MinValueValidator(1)])
    max_participants = models.PositiveIntegerField(default=50, validators=[MinValueValidator(2)])
    max_devices_per_user = models.PositiveIntegerField(default=10, validators=[MinValueValidator(1)])
    max_conversations_per_user = models.PositiveIntegerField(default=1000, validators=[MinValueValidator(1)])
    pending_quota = models.PositiveIntegerField(
        default=10_000, validators=[MinValueValidator(1)], help_text="pending deliveries per device")
    send_rate_per_device = models.PositiveIntegerField(default=60, help_text="sends per minute; 0 = no limit")
    send_rate_per_user = models.PositiveIntegerField(default=120, help_text="sends per minute; 0 = no limit")
    challenge_rate_per_ip = models.PositiveIntegerField(default=60, help_text="per minute; 0 = no limit")
    registration_rate_per_user = models.PositiveIntegerField(
        default=10, help_text="device registrations per hour; 0 = no limit")
    group_creation_rate_per_user = models.PositiveIntegerField(
        default=30, help_text="group creations per hour; 0 = no limit")
    max_gateway_connections_per_device = models.PositiveIntegerField(default=5, validators=[MinValueValidator(1)])
    max_gateway_master_connections_per_user = models.PositiveIntegerField(
        default=5, validators=[MinValueValidator(1)], help_text="gateway connections of a user's master sessions")
    max_recipients_per_message = models.PositiveIntegerField(default=500, validators=[MinValueValidator(1)])
    prekey_claim_rate_per_device = models.PositiveIntegerField(
        default=120, help_text="prekey claims per minute per calling device (§6b); 0 = no limit")
    max_request_bytes = models.PositiveIntegerField(
        default=256 * 1024, validators=[MinValueValidator(1024)],
        help_text="request bodies over this are refused with 413; the smaller of this and the environment's "
                  "MAX_REQUEST_BYTES wins (the environment caps it)")

    class Meta:
        db_table = "dm_server_settings"
        verbose_name = "server settings"
        verbose_name_plural = "server settings"

    def __str__(self):
        return "Server settings"

    def clean(self):
        from django.core.exceptions import ValidationError

        errors = {}
        if self.default_ttl_days > self.max_ttl_days:
            errors["default_ttl_days"] = "must not exceed max_ttl_days"
        if self.default_policy == Policy.PERMANENT and not self.allow_permanent:
            errors["default_policy"] = "permanent needs allow_permanent"
        if errors:
            raise ValidationError(errors)


class Conversation(models.Model):
    class Kind(models.TextChoices):
        DIRECT = "direct"
        GROUP = "group"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    kind = models.CharField(max_length=8, choices=Kind.choices)
    # "a:b" of the two sorted user ids: one direct conversation per pair.
    direct_key = models.CharField(max_length=100, unique=True, null=True, blank=True)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True,
                                   related_name="+")
    epoch = models.PositiveBigIntegerField(default=1)
    participants_sha256 = models.CharField(max_length=44)
    retention_policy = models.CharField(max_length=16, choices=Policy.choices)
    retention_ttl_days = models.PositiveIntegerField(null=True, blank=True)
    created_at = models.DateTimeField()
    updated_at = models.DateTimeField()
    last_activity_at = models.DateTimeField(db_index=True)

    class Meta:
        db_table = "dm_conversations"

    def __str__(self):
        return f"{self.kind} {self.id}"

    @property
    def retention(self) -> dict:
        return {"policy": self.retention_policy, "ttl_days": self.retention_ttl_days}


class ConversationMember(models.Model):
    # No index of their own: the unique constraint and dm_member_user lead with each.
    conversation = models.ForeignKey(Conversation, on_delete=models.CASCADE, related_name="members", db_index=False)
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="dm_memberships",
                             db_index=False)
    joined_at = models.DateTimeField()

    class Meta:
        db_table = "dm_conversation_members"
        constraints = [models.UniqueConstraint(fields=["conversation", "user"], name="dm_member_unique")]
        indexes = [models.Index(fields=["user", "conversation"], name="dm_member_user")]


class PendingDm(models.Model):
    """One encrypted message, stored once whatever the number of recipients."""

    message_id = models.UUIDField(primary_key=True)
    # No index of its own: pending_dms_conv_time leads with it.
    conversation = models.ForeignKey(Conversation, on_delete=models.CASCADE, related_name="messages", db_index=False)
    sender_device = models.ForeignKey("devices.Device", on_delete=models.CASCADE, related_name="+")
    epoch = models.PositiveBigIntegerField()
    key_id = models.CharField(max_length=44)
    participants_sha256 = models.CharField(max_length=44)
    nonce = models.CharField(max_length=16)
    ciphertext = models.BinaryField()
    ciphertext_sha256 = models.CharField(max_length=44)
    signature = models.CharField(max_length=88)
    policy = models.CharField(max_length=16, choices=Policy.choices)
    ttl_days = models.PositiveIntegerField(null=True)
    created_at = models.DateTimeField()
    expires_at = models.DateTimeField(null=True)

    class Meta:
        db_table = "pending_dms"
        verbose_name = "pending DM"
        indexes = [
            models.Index(fields=["expires_at"], name="pending_dms_expiry",
                         condition=Q(expires_at__isnull=False)),
            models.Index(fields=["conversation", "created_at"], name="pending_dms_conv_time"),
        ]


class Delivery(models.Model):
    """One target device's copy: its key wrap and whether it has ACKed."""

    # No index of its own (one less for each send to write): the unique constraint leads with it.
    message = models.ForeignKey(PendingDm, on_delete=models.CASCADE, related_name="deliveries", db_index=False)
    device = models.ForeignKey("devices.Device", on_delete=models.CASCADE, related_name="dms_deliveries")
    wrap_nonce = models.CharField(max_length=16, null=True)
    wrapped_key = models.CharField(max_length=64, null=True)
    # A v2 wrap's extras (§6b); wrap_ephemeral set means v2 (its nonce and wrapped_key are the two above).
    wrap_signed_prekey_id = models.PositiveBigIntegerField(null=True)
    wrap_one_time_id = models.PositiveBigIntegerField(null=True)
    wrap_ephemeral = models.CharField(max_length=44, null=True)
    created_at = models.DateTimeField()
    acked_at = models.DateTimeField(null=True)

    class Meta:
        db_table = "dm_deliveries"
        constraints = [models.UniqueConstraint(fields=["message", "device"], name="dm_delivery_unique")]
        indexes = [
            # sync: a device's pending deliveries in id order
            models.Index(fields=["device", "id"], name="dm_delivery_pending",
                         condition=Q(acked_at__isnull=True)),
            # purge: pending deliveries past max_undelivered_days
            models.Index(fields=["created_at"], name="dm_delivery_pending_age",
                         condition=Q(acked_at__isnull=True)),
        ]

    @property
    def key_wrap(self) -> dict | None:
        return key_wrap_wire(self.wrap_nonce, self.wrapped_key, self.wrap_signed_prekey_id, self.wrap_one_time_id,
                             self.wrap_ephemeral)


def key_wrap_wire(nonce, wrapped_key, signed_prekey_id, one_time_id, ephemeral) -> dict | None:
    """A stored wrap as it was sent: v1 `{nonce, wrapped_key}`, or v2's six keys in the order of §6b."""
    if wrapped_key is None:
        return None
    if ephemeral is None:
        return {"nonce": nonce, "wrapped_key": wrapped_key}
    return {"v": 2, "signed_prekey_id": signed_prekey_id, "one_time_id": one_time_id, "ephemeral": ephemeral,
            "nonce": nonce, "wrapped_key": wrapped_key}


class Mailbox(models.Model):
    """A device's unACKed deliveries, counted (§7 check 11: the quota is read
    on every send, and counting rows there grew with the mailbox). Kept by
    database triggers on dm_deliveries (migration 0007), so every insert, ACK
    and delete, raw SQL or ORM cascade, keeps it exact; no code writes it.
    A row exists for every device that ever had a delivery."""

    device = models.OneToOneField("devices.Device", on_delete=models.CASCADE, primary_key=True, related_name="+")
    pending = models.PositiveIntegerField(default=0)

    class Meta:
        db_table = "dm_mailboxes"


class KeyReceipt(models.Model):
    """The recipient device holds the sender device's key `key_id` (§7)."""

    conversation = models.ForeignKey(Conversation, on_delete=models.CASCADE, related_name="+")
    sender_device = models.ForeignKey("devices.Device", on_delete=models.CASCADE, related_name="+")
    recipient_device = models.ForeignKey("devices.Device", on_delete=models.CASCADE, related_name="+")
    key_id = models.CharField(max_length=44)
    epoch = models.PositiveBigIntegerField()
    created_at = models.DateTimeField()

    class Meta:
        db_table = "dm_key_receipts"
        constraints = [models.UniqueConstraint(
            fields=["conversation", "sender_device", "key_id", "recipient_device"], name="dm_receipt_unique")]


class UsedMessageId(models.Model):
    """A used message id, kept 7 days past its message so a late retry is
    recognised (§7). Holds no content, only the first answer."""

    message_id = models.UUIDField(primary_key=True)
    sender_device = models.ForeignKey("devices.Device", on_delete=models.CASCADE, related_name="+")
    # Not a foreign key: the delivery status (§7a) names it after the conversation is gone.
    # Null only for ids used before delivery status existed whose message was already gone.
    conversation_id = models.UUIDField(null=True)
    ciphertext_sha256 = models.CharField(max_length=44)
    response = models.JSONField()
    created_at = models.DateTimeField()
    message_gone_at = models.DateTimeField(null=True, db_index=True)

    class Meta:
        db_table = "dm_used_message_ids"


class DeliveryState(models.Model):
    """What became of one device's delivery of a message (§7a), written when
    it happens: device, state, reason and time only, never content or wraps.
    Outlives the message and goes with its remembered id (the purge deletes
    these rows first: DO_NOTHING keeps that delete a plain statement)."""

    class State(models.TextChoices):
        PENDING = "pending"
        DELIVERED = "delivered"
        FAILED = "failed"
        EXPIRED = "expired"
        DROPPED = "dropped"
        SKIPPED = "skipped"

    # No index of their own: the unique constraint serves lookups by message, and devices are never deleted.
    message = models.ForeignKey(UsedMessageId, on_delete=models.DO_NOTHING, related_name="+", db_index=False)
    device = models.ForeignKey("devices.Device", on_delete=models.CASCADE, related_name="+", db_index=False)
    state = models.CharField(max_length=16, choices=State.choices)
    # dropped: "revoked" / "removed"; skipped: "mailbox_full"
    reason = models.CharField(max_length=16, null=True)
    at = models.DateTimeField(null=True)  # when a final state happened; null while pending

    class Meta:
        db_table = "dm_delivery_states"
        constraints = [models.UniqueConstraint(fields=["message", "device"], name="dm_delivery_state_unique")]


class PurgeRun(models.Model):
    """One run of the purge (`dm_purge_expired`): when, as of when, what it
    deleted (or would have, in a dry run) and how long it took. Counts only;
    the dashboard and the admin show the history."""

    started_at = models.DateTimeField(db_index=True)
    as_of = models.DateTimeField()
    dry_run = models.BooleanField(default=False)
    duration_ms = models.PositiveIntegerField()
    counts = models.JSONField(default=dict)

    class Meta:
        db_table = "dm_purge_runs"
        ordering = ["-started_at"]

    def __str__(self):
        return f"purge {self.started_at:%Y-%m-%d %H:%M:%S}{' (dry run)' if self.dry_run else ''}"

    @property
    def deleted_total(self) -> int:
        return sum(self.counts.values())

    @property
    def summary(self) -> str:
        """"expired_messages 3, sessions 1", or "nothing"."""
        return ", ".join(f"{kind} {n}" for kind, n in self.counts.items() if n) or "nothing"

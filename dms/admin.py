"""Metadata only: ciphertext and key wraps are never loaded nor shown."""
from django.conf import settings

from django.contrib import admin, messages
from django.db.models import Count, Q
from django.db.models.functions import Length
from django.http import HttpResponseRedirect
from django.urls import path, reverse
from django.utils import timezone
from django.utils.html import format_html, format_html_join

from decentcom.admin import short_id, short_time
from decentcom.timefmt import rfc3339
from dms import services
from dms.models import Conversation, Delivery, DeliveryState, PendingDm, PurgeRun, ServerSettings
from dms.selectors import server_settings_get


class ReadOnlyAdmin(admin.ModelAdmin):
    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


@admin.register(ServerSettings)
class ServerSettingsAdmin(admin.ModelAdmin):
    fieldsets = (
        ("Retention", {"fields": ("default_policy", "default_ttl_days", "max_ttl_days", "allow_permanent",
                                  "max_undelivered_days")}),
        ("Limits", {"fields": ("max_ciphertext_bytes", "max_participants", "max_devices_per_user",
                               "max_conversations_per_user", "pending_quota", "max_recipients_per_message",
                               "max_request_bytes", "effective_max_request_bytes",
                               "max_gateway_connections_per_device",
                               "max_gateway_master_connections_per_user")}),
        ("Rate limits", {"fields": ("send_rate_per_device", "send_rate_per_user", "prekey_claim_rate_per_device",
                                    "challenge_rate_per_ip", "registration_rate_per_user",
                                    "group_creation_rate_per_user")}),
    )

    readonly_fields = ("effective_max_request_bytes",)

    def has_add_permission(self, request):
        return False

    def has_delete_permission(self, request, obj=None):
        return False

    @admin.display(description="effective max request bytes")
    def effective_max_request_bytes(self, obj):
        cap = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
        value = min(obj.max_request_bytes, cap) if obj else cap
        return format_html("{} bytes: the smaller of max_request_bytes and the MAX_REQUEST_BYTES environment "
                           "variable ({}), which caps it", f"{value:,}", f"{cap:,}")

    def changelist_view(self, request, extra_context=None):
        row = server_settings_get()
        return HttpResponseRedirect(reverse("admin:dms_serversettings_change", args=[row.pk]))

    def save_model(self, request, obj, form, change):
        services.server_settings_update(settings_row=obj)


class DeliveryInline(admin.TabularInline):
    model = Delivery
    fields = ("device", "created_at", "acked_at", "has_key_wrap")
    readonly_fields = fields
    extra = 0
    can_delete = False

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def get_queryset(self, request):
        return super().get_queryset(request).select_related("device").defer("wrap_nonce", "wrapped_key", "wrap_ephemeral").annotate(
            wrap_len=Length("wrapped_key"))

    @admin.display(boolean=True, description="key wrap")
    def has_key_wrap(self, obj):
        return bool(obj.wrap_len)


@admin.register(PendingDm)
class PendingDmAdmin(ReadOnlyAdmin):
    list_display = ("message", "conversation_short", "sender", "policy", "size_bytes", "sha256_prefix",
                    "pending_deliveries", "acked_deliveries", "created", "expires")
    list_filter = ("policy",)
    fields = ("message_id", "conversation", "sender_device", "epoch", "policy", "ttl_days", "size_bytes",
              "sha256_prefix", "created_at", "expires_at", "delivery_states")
    readonly_fields = fields
    inlines = [DeliveryInline]
    list_select_related = ("sender_device",)

    def get_queryset(self, request):
        return (super().get_queryset(request)
                .defer("ciphertext", "signature", "nonce", "key_id")
                .annotate(size=Length("ciphertext"),
                          pending=Count("deliveries", filter=Q(deliveries__acked_at__isnull=True)),
                          acked=Count("deliveries", filter=Q(deliveries__acked_at__isnull=False))))

    @admin.display(description="message", ordering="message_id")
    def message(self, obj):
        return short_id(obj.message_id)

    @admin.display(description="conversation", ordering="conversation_id")
    def conversation_short(self, obj):
        return short_id(obj.conversation_id)

    @admin.display(description="sender", ordering="sender_device__device_id")
    def sender(self, obj):
        return short_id(obj.sender_device.device_id)

    @admin.display(description="created (UTC)", ordering="created_at")
    def created(self, obj):
        return short_time(obj.created_at)

    @admin.display(description="expires (UTC)", ordering="expires_at")
    def expires(self, obj):
        return short_time(obj.expires_at)

    @admin.display(description="bytes", ordering="size")
    def size_bytes(self, obj):
        return obj.size

    @admin.display(description="SHA-256")
    def sha256_prefix(self, obj):
        return obj.ciphertext_sha256[:8] + "…"

    @admin.display(description="pending", ordering="pending")
    def pending_deliveries(self, obj):
        return obj.pending

    @admin.display(description="ACKed", ordering="acked")
    def acked_deliveries(self, obj):
        return obj.acked

    @admin.display(description="delivery states (§7a)")
    def delivery_states(self, obj):
        rows = (DeliveryState.objects.filter(message_id=obj.pk).order_by("device__device_id")
                .values_list("device__device_id", "device__user__username", "state", "reason", "at"))
        return format_html(
            "<table><tr><th>device</th><th>user</th><th>state</th><th>reason</th><th>at</th></tr>{}</table>",
            format_html_join("", "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                             ((device, user[:12] + "…", state, reason or "", rfc3339(at) or "") for
                              device, user, state, reason, at in rows)))

    def get_urls(self):
        return [path("purge/", self.admin_site.admin_view(self.purge_view), name="dms_pendingdm_purge"),
                *super().get_urls()]

    def purge_view(self, request):
        if request.method != "POST" or not request.user.has_perm("dms.change_pendingdm"):  # it deletes
            return HttpResponseRedirect(reverse("admin:dms_pendingdm_changelist"))
        counts = services.dm_purge_expired(now=timezone.now())
        self.message_user(request, "Purge done: " + ", ".join(f"{k} {v}" for k, v in counts.items()),
                          messages.SUCCESS)
        return HttpResponseRedirect(reverse("admin:dms_pendingdm_changelist"))


@admin.register(Conversation)
class ConversationAdmin(ReadOnlyAdmin):
    list_display = ("conversation", "kind", "participant_count", "epoch", "retention_policy", "retention_ttl_days",
                    "message_count", "created", "last_activity")
    list_filter = ("kind", "retention_policy")
    # By id (or its start) or by a participant's user id (or its start).
    search_fields = ("id", "members__user__username")
    search_help_text = "a conversation id, or a participant's user id (or the start of one)"
    readonly_fields = ("id", "kind", "created_by", "epoch", "participants_sha256", "retention_policy",
                       "retention_ttl_days", "created_at", "updated_at", "last_activity_at", "participants")
    exclude = ("direct_key",)

    def get_queryset(self, request):
        return super().get_queryset(request).annotate(
            n_members=Count("members", distinct=True), n_messages=Count("messages", distinct=True))

    @admin.display(description="conversation", ordering="id")
    def conversation(self, obj):
        return short_id(obj.id)

    @admin.display(description="created (UTC)", ordering="created_at")
    def created(self, obj):
        return short_time(obj.created_at)

    @admin.display(description="last activity (UTC)", ordering="last_activity_at")
    def last_activity(self, obj):
        return short_time(obj.last_activity_at)

    @admin.display(description="participants", ordering="n_members")
    def participant_count(self, obj):
        return obj.n_members

    @admin.display(description="messages", ordering="n_messages")
    def message_count(self, obj):
        return obj.n_messages

    @admin.display(description="participants")
    def participants(self, obj):
        return ", ".join(obj.members.values_list("user__username", flat=True).order_by("user__username"))




@admin.register(PurgeRun)
class PurgeRunAdmin(ReadOnlyAdmin):
    """What each purge run deleted; written by dms.services.dm_purge_expired only."""

    list_display = ("started", "as_of_short", "dry_run", "duration_ms", "deleted_total", "what")
    list_filter = ("dry_run",)
    fields = ("started_at", "as_of", "dry_run", "duration_ms", "counts")
    readonly_fields = fields
    date_hierarchy = "started_at"

    @admin.display(description="started (UTC)", ordering="started_at")
    def started(self, obj):
        return short_time(obj.started_at)

    @admin.display(description="as of (UTC)", ordering="as_of")
    def as_of_short(self, obj):
        return short_time(obj.as_of)

    @admin.display(description="deleted")
    def deleted_total(self, obj):
        return obj.deleted_total

    @admin.display(description="what")
    def what(self, obj):
        return obj.summary

"""Users and devices. Every action that changes state needs the model's
*change* permission (view-only staff see, never act), and goes through the
same services as the API."""
import datetime as dt

from django.contrib import admin, messages
from django.contrib.auth.admin import UserAdmin as BaseUserAdmin
from django.db.models import Count, F, IntegerField, OuterRef, Subquery
from django.db.models.functions import Coalesce
from django.utils import timezone

from decentcom.admin import short_id, short_time
from devices.models import Device, OneTimePrekey, User
from devices.services import device_revoke, user_suspend, user_unsuspend


@admin.register(User)
class UserAdmin(BaseUserAdmin):
    list_display = ("username", "is_key_user", "suspended_at", "is_staff", "is_active", "date_joined")
    list_filter = ("is_key_user", "is_staff", "is_active", ("suspended_at", admin.EmptyFieldListFilter))
    search_fields = ("username",)
    ordering = ("-date_joined",)
    readonly_fields = ("is_key_user", "suspended_at", "date_joined", "last_login")
    fieldsets = (
        (None, {"fields": ("username", "password", "is_key_user")}),
        ("Permissions", {"fields": ("is_active", "is_staff", "is_superuser", "groups", "user_permissions")}),
        ("Dates", {"fields": ("last_login", "date_joined")}),
    )
    add_fieldsets = ((None, {"classes": ("wide",), "fields": ("username", "password1", "password2")}),)
    actions = ["suspend_users", "unsuspend_users"]

    def get_fieldsets(self, request, obj=None):
        if obj is not None and obj.is_key_user:  # key users have no password; suspension is an action
            return ((None, {"fields": ("username", "is_key_user")}),
                    ("Status", {"fields": ("suspended_at",)}),
                    ("Dates", {"fields": ("last_login", "date_joined")}))
        return super().get_fieldsets(request, obj)

    def get_readonly_fields(self, request, obj=None):
        if obj is not None and obj.is_key_user:
            return (*self.readonly_fields, "username")
        return self.readonly_fields

    @admin.action(description="Suspend selected key users (their devices become inactive)", permissions=["change"])
    def suspend_users(self, request, queryset):
        count = sum(user_suspend(user=user) for user in queryset.filter(is_key_user=True, suspended_at__isnull=True))
        self.message_user(request, f"Suspended {count} user(s).", messages.SUCCESS)

    @admin.action(description="Lift the suspension of selected key users", permissions=["change"])
    def unsuspend_users(self, request, queryset):
        count = sum(user_unsuspend(user=user) for user in queryset.filter(suspended_at__isnull=False))
        self.message_user(request, f"Lifted the suspension of {count} user(s).", messages.SUCCESS)


@admin.register(Device)
class DeviceAdmin(admin.ModelAdmin):
    # Short ids and minutes: every column fits 1280 px (the detail page has the full values).
    list_display = ("device", "name", "user_short", "issued", "expires", "revoked", "last_seen",
                    "signed_prekey_short", "one_time_supply")
    list_filter = ("revoked_at",)
    search_fields = ("device_id", "name", "user__username")
    list_select_related = ("user",)
    # §6b: of the prekeys only the signed prekey's id and age and the one-time supply, never a key
    readonly_fields = [*(f.name for f in Device._meta.fields), "signed_prekey_detail", "one_time_supply"]
    actions = ["revoke_devices"]

    def get_queryset(self, request):
        supply = (OneTimePrekey.objects.filter(device=OuterRef("pk")).order_by().values("device")
                  .annotate(n=Count("id")).values("n"))
        return super().get_queryset(request).annotate(
            one_time_count=Coalesce(Subquery(supply, output_field=IntegerField()), 0),
            spk_id=F("signed_prekey__prekey_id"), spk_created_at=F("signed_prekey__created_at"),
            spk_uploaded_at=F("signed_prekey__uploaded_at"))

    @staticmethod
    def _age(value) -> str:
        age = timezone.now() - value
        if age < dt.timedelta(hours=1):
            return f"{max(0, int(age.total_seconds() // 60))} min"
        if age < dt.timedelta(days=2):
            return f"{int(age.total_seconds() // 3600)} h"
        return f"{age.days} d"

    @admin.display(description="signed prekey", ordering="spk_id")
    def signed_prekey_short(self, obj):
        if obj.spk_id is None:
            return "-"
        return f"#{obj.spk_id}, {self._age(obj.spk_created_at)} old"

    @admin.display(description="signed prekey")
    def signed_prekey_detail(self, obj):
        if obj.spk_id is None:
            return "none published"
        return (f"id {obj.spk_id}, created {short_time(obj.spk_created_at)} UTC ({self._age(obj.spk_created_at)} "
                f"ago), uploaded {short_time(obj.spk_uploaded_at)} UTC")

    @admin.display(description="one-time prekeys", ordering="one_time_count")
    def one_time_supply(self, obj):
        return obj.one_time_count

    @admin.display(description="device", ordering="device_id")
    def device(self, obj):
        return short_id(obj.device_id)

    @admin.display(description="user", ordering="user__username")
    def user_short(self, obj):
        return short_id(obj.user.username)

    @admin.display(description="issued (UTC)", ordering="issued_at")
    def issued(self, obj):
        return short_time(obj.issued_at)

    @admin.display(description="expires (UTC)", ordering="expires_at")
    def expires(self, obj):
        return short_time(obj.expires_at)

    @admin.display(description="revoked (UTC)", ordering="revoked_at")
    def revoked(self, obj):
        return short_time(obj.revoked_at)

    @admin.display(description="last seen (UTC)", ordering="last_seen_at")
    def last_seen(self, obj):
        return short_time(obj.last_seen_at)

    def has_add_permission(self, request):
        return False  # devices are added by their master key's certificate only

    def has_change_permission(self, request, obj=None):
        return False  # the form stays read-only; revoking is the one change

    def has_delete_permission(self, request, obj=None):
        return False  # revoke instead: a revoked key must stay known to be refused

    def has_revoke_permission(self, request):
        return request.user.has_perm(f"{self.opts.app_label}.change_{self.opts.model_name}")

    @admin.action(description="Revoke selected devices", permissions=["revoke"])
    def revoke_devices(self, request, queryset):
        count = 0
        for device in queryset.filter(revoked_at__isnull=True).select_related("user"):
            device_revoke(device=device, reason="revoked by admin")
            count += 1
        self.message_user(request, f"Revoked {count} device(s).", messages.SUCCESS)

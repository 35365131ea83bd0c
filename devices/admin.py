from django.contrib import admin, messages
from django.contrib.auth.admin import UserAdmin as BaseUserAdmin

from devices.models import Device, User
from devices.services import device_revoke


@admin.register(User)
class UserAdmin(BaseUserAdmin):
    list_display = ("username", "is_key_user", "is_staff", "is_active", "date_joined")
    list_filter = ("is_key_user", "is_staff", "is_active")
    search_fields = ("username",)
    ordering = ("-date_joined",)
    readonly_fields = ("is_key_user", "date_joined", "last_login")
    fieldsets = (
        (None, {"fields": ("username", "password", "is_key_user")}),
        ("Permissions", {"fields": ("is_active", "is_staff", "is_superuser", "groups", "user_permissions")}),
        ("Dates", {"fields": ("last_login", "date_joined")}),
    )
    add_fieldsets = ((None, {"classes": ("wide",), "fields": ("username", "password1", "password2")}),)

    def get_fieldsets(self, request, obj=None):
        if obj is not None and obj.is_key_user:  # key users have no password
            return ((None, {"fields": ("username", "is_key_user")}),
                    ("Status", {"fields": ("is_active",)}),
                    ("Dates", {"fields": ("last_login", "date_joined")}))
        return super().get_fieldsets(request, obj)

    def get_readonly_fields(self, request, obj=None):
        if obj is not None and obj.is_key_user:
            return (*self.readonly_fields, "username")
        return self.readonly_fields


@admin.register(Device)
class DeviceAdmin(admin.ModelAdmin):
    list_display = ("device_id", "name", "user", "issued_at", "expires_at", "revoked_at", "last_seen_at")
    list_filter = ("revoked_at",)
    search_fields = ("device_id", "name", "user__username")
    readonly_fields = [f.name for f in Device._meta.fields]
    actions = ["revoke_devices"]

    def has_add_permission(self, request):
        return False  # devices are added by their master key's certificate only

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False  # revoke instead: a revoked key must stay known to be refused

    @admin.action(description="Revoke selected devices", permissions=["view"])
    def revoke_devices(self, request, queryset):
        count = 0
        for device in queryset.filter(revoked_at__isnull=True):
            device_revoke(device=device, reason="revoked by admin")
            count += 1
        self.message_user(request, f"Revoked {count} device(s).", messages.SUCCESS)

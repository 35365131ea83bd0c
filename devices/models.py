from django.contrib.auth.base_user import AbstractBaseUser, BaseUserManager
from django.contrib.auth.models import PermissionsMixin
from django.db import models
from django.db.models import Q
from django.utils import timezone

from dmclient import protocol


class UserManager(BaseUserManager):
    use_in_migrations = True

    def create_user(self, username, password=None, **extra):
        user = self.model(username=username, **extra)
        user.set_password(password)
        user.save(using=self._db)
        return user

    def create_superuser(self, username, password=None, **extra):
        extra.update(is_staff=True, is_superuser=True)
        return self.create_user(username, password, **extra)


class User(AbstractBaseUser, PermissionsMixin):
    """A key user (`is_key_user`: username is the b58 master public key, no
    password) or a staff user who logs in to the admin with a password."""

    username = models.CharField(max_length=150, unique=True)
    is_key_user = models.BooleanField(default=False, editable=False)
    is_staff = models.BooleanField(default=False)
    is_active = models.BooleanField(default=True)
    date_joined = models.DateTimeField(default=timezone.now)
    # Set by a server admin (§4): the user's devices are inactive everywhere
    # until it is lifted; unlike a revocation nothing is ended for ever.
    suspended_at = models.DateTimeField(null=True, blank=True, editable=False)

    objects = UserManager()
    USERNAME_FIELD = "username"

    class Meta:
        db_table = "users"

    def __str__(self):
        return self.username

    @property
    def user_id(self) -> str | None:
        return self.username if self.is_key_user else None

    @property
    def is_suspended(self) -> bool:
        return self.suspended_at is not None


class ActiveDeviceQuerySet(models.QuerySet):
    def active(self, now=None):
        """Neither revoked nor expired, and its user not suspended (§2, §4)."""
        now = now or timezone.now()
        return (self.filter(revoked_at__isnull=True, user__suspended_at__isnull=True)
                .filter(Q(expires_at__isnull=True) | Q(expires_at__gt=now)))


class Device(models.Model):
    """A device key certified by its user's master key (§2)."""

    device_id = models.CharField(max_length=44, unique=True)
    # No index of its own: devices_user_revoked leads with it.
    user = models.ForeignKey(User, on_delete=models.CASCADE, related_name="devices", db_index=False)
    name = models.CharField(max_length=64)
    certificate = models.JSONField()
    permissions = models.JSONField(default=list)
    issued_at = models.DateTimeField()
    expires_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    revoked_at = models.DateTimeField(null=True, blank=True)
    last_seen_at = models.DateTimeField(null=True, blank=True)

    objects = ActiveDeviceQuerySet.as_manager()

    class Meta:
        db_table = "devices"
        indexes = [models.Index(fields=["user", "revoked_at"], name="devices_user_revoked")]

    def __str__(self):
        return f"{self.name} ({self.device_id[:8]}…)"

    def is_active(self, now=None) -> bool:
        """The device's own state: neither revoked nor expired. Whether its
        user is suspended is `User.is_suspended`, checked beside it."""
        now = now or timezone.now()
        return self.revoked_at is None and (self.expires_at is None or self.expires_at > now)

    @property
    def x25519(self) -> str:
        return protocol.b64e(protocol.x25519_public(protocol.b58_key(self.device_id)))

    @property
    def can_manage_devices(self) -> bool:
        return "manage_devices" in self.permissions


class Challenge(models.Model):
    """A single-use login challenge, bound to the key it was issued to (§3)."""

    challenge = models.CharField(max_length=44, unique=True)
    pubkey = models.CharField(max_length=44)
    client_ip = models.GenericIPAddressField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    expires_at = models.DateTimeField(db_index=True)

    class Meta:
        db_table = "auth_challenges"
        # the outstanding challenges of one key, newest first (at most 5 are kept, §3)
        indexes = [models.Index(fields=["pubkey", "-id"], name="auth_challenges_pubkey")]


class AuthSession(models.Model):
    """A bearer token, stored only as its SHA-256 (§3). `device` null: a master session."""

    token_sha256 = models.CharField(max_length=64, unique=True)
    user = models.ForeignKey(User, on_delete=models.CASCADE, related_name="auth_sessions")
    device = models.ForeignKey(Device, on_delete=models.CASCADE, null=True, blank=True,
                               related_name="auth_sessions")
    created_at = models.DateTimeField(default=timezone.now)
    expires_at = models.DateTimeField(db_index=True)

    class Meta:
        db_table = "auth_sessions"

    @property
    def is_master(self) -> bool:
        return self.device_id is None


class SignedPrekey(models.Model):
    """A device's current signed prekey (§6b), its wire form as uploaded:
    verified against the device key then, handed out as is."""

    device = models.OneToOneField(Device, on_delete=models.CASCADE, primary_key=True, related_name="signed_prekey")
    prekey_id = models.PositiveBigIntegerField()
    # The JSON text as received (key order kept), not a JSONField: PostgreSQL's jsonb would reorder it.
    wire = models.TextField()
    created_at = models.DateTimeField(help_text="the prekey's own created_at (signed by the device)")
    uploaded_at = models.DateTimeField()

    class Meta:
        db_table = "device_signed_prekeys"


class OneTimePrekey(models.Model):
    """One of a device's one-time prekeys (§6b): handed out once, deleted as it is."""

    # No index of its own: the unique constraint leads with it (and serves "lowest id first").
    device = models.ForeignKey(Device, on_delete=models.CASCADE, related_name="one_time_prekeys", db_index=False)
    prekey_id = models.PositiveBigIntegerField()
    x25519 = models.CharField(max_length=44)
    uploaded_at = models.DateTimeField()

    class Meta:
        db_table = "device_one_time_prekeys"
        constraints = [models.UniqueConstraint(fields=["device", "prekey_id"], name="device_otk_unique")]

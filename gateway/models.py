from django.db import models
from django.utils import timezone


class GatewayTicket(models.Model):
    """Single-use, 60-second WebSocket credential, so tokens stay out of URLs (§9)."""

    ticket_sha256 = models.CharField(max_length=64, unique=True)
    session = models.ForeignKey("devices.AuthSession", on_delete=models.CASCADE, related_name="+")
    created_at = models.DateTimeField(default=timezone.now)
    expires_at = models.DateTimeField(db_index=True)

    class Meta:
        db_table = "gateway_tickets"

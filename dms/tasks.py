from celery import shared_task
from django.utils import timezone

from dms import services


@shared_task
def dm_purge_expired_task() -> dict:
    return services.dm_purge_expired(now=timezone.now())

import datetime as dt

from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from dms.services import dm_purge_expired


class Command(BaseCommand):
    help = "Delete what the retention policies say must go (the Celery beat task runs the same)."

    def add_arguments(self, parser):
        parser.add_argument("--as-of", help="purge as if it were this ISO-8601 time (default: now)")
        parser.add_argument("--dry-run", action="store_true", help="count what would be deleted, delete nothing")

    def handle(self, *args, as_of=None, dry_run=False, **options):
        now = timezone.now()
        if as_of:
            try:
                now = dt.datetime.fromisoformat(as_of.replace("Z", "+00:00"))
            except ValueError:
                raise CommandError(f"--as-of {as_of!r} is not ISO-8601") from None
            if timezone.is_naive(now):
                now = timezone.make_aware(now, dt.timezone.utc)
        counts = dm_purge_expired(now=now, dry_run=dry_run)
        verb = "would delete" if dry_run else "deleted"
        self.stdout.write(f"purge as of {now.isoformat()} {verb}:")
        for name, count in counts.items():
            self.stdout.write(f"  {name}: {count}")

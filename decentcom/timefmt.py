import datetime as dt


def rfc3339(value: dt.datetime | None) -> str | None:
    """`2026-11-27T05:00:00.000000Z` (§1)."""
    if value is None:
        return None
    return value.astimezone(dt.timezone.utc).replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"

"""The admin site: Django's, with the mailbox's dashboard on its index page
(metadata and aggregates only, dms.selectors.dashboard_get)."""
import datetime as dt

from django.contrib import admin
from django.utils import timezone
from django.utils.html import format_html

from dms.selectors import dashboard_get


def short_time(value) -> str:
    """Minutes are enough in a list (the detail page has the rest): every column fits 1280 px."""
    return value.astimezone(dt.timezone.utc).strftime("%Y-%m-%d %H:%M") if value else "-"


def short_id(value) -> str:
    """The first 8 characters; the whole id in the tooltip (and on the detail page)."""
    return format_html('<code title="{}">{}…</code>', value, str(value)[:8])


def _bars(rows: list[tuple], *, value_index: int = 1) -> list[dict]:
    """Rows with the width (in %) of their CSS bar, relative to the largest."""
    top = max((row[value_index] for row in rows), default=0) or 1
    return [{"row": row, "pct": round(100 * row[value_index] / top, 1)} for row in rows]


def dashboard_context(*, now) -> dict:
    data = dashboard_get(now=now)
    sends = data["sends_per_hour"]
    top = max((n for _, n in sends), default=0) or 1
    width = 6  # px of one hour in the SVG's own coordinates; the SVG scales to its box
    chart = [{"x": i * width, "y": round(63 - 60 * n / top, 1), "h": round(60 * n / top, 1), "hour": hour, "n": n}
             for i, (hour, n) in enumerate(sends)]
    return {
        **data,
        "pending_bars": _bars(data["pending"]["buckets"]),
        "policy_bars": _bars(data["policies"], value_index=2),
        "last_seen_bars": _bars(data["last_seen"]),
        "sends_chart": chart,
        "sends_chart_width": width * len(sends),
        "sends_total": sum(n for _, n in sends),
        "sends_max": max((n for _, n in sends), default=0),
        "near_cap": data["pending"]["buckets"][-1][1],
        "oldest_age": now - data["pending"]["oldest_at"] if data["pending"]["oldest_at"] else None,
    }


class MailboxAdminSite(admin.AdminSite):
    site_header = "decentcom DM mailbox"
    site_title = "decentcom admin"
    index_title = "Mailbox"
    index_template = "admin/dashboard_index.html"
    # Its 300 px hid the last columns of the lists at 1280 px (point 10); the breadcrumbs and Home remain.
    enable_nav_sidebar = False

    def index(self, request, extra_context=None):
        extra_context = extra_context or {}
        # Staff who may see the mailbox's messages (metadata) see its dashboard.
        if request.user.has_perm("dms.view_pendingdm"):
            extra_context["dashboard"] = dashboard_context(now=timezone.now())
        return super().index(request, extra_context)

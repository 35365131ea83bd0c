from django.contrib.admin.apps import AdminConfig


class MailboxAdminConfig(AdminConfig):
    """django.contrib.admin, with the site that shows the dashboard (decentcom.admin)."""

    default_site = "decentcom.admin.MailboxAdminSite"

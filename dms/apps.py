from django.apps import AppConfig


class DmsConfig(AppConfig):
    name = "dms"
    verbose_name = "Direct messages"

    def ready(self):
        # The device services bump epochs and drop deliveries through this (devices.mailbox).
        from devices.mailbox import mailbox_register
        from dms import services

        mailbox_register(services)

"""What the device services need from the mailbox (the `dms` app) when a
user's set of active devices changes: epochs bumped, pending deliveries dropped;
and the admin's server settings, whose row lives in `dms`.

The dependency runs one way: `dms` builds on `devices` (its models point at
devices and users, its purge revokes expired devices through
`devices.services`), and `devices` never imports `dms`. Instead `dms`
registers itself here when the app registry is ready (`DmsConfig.ready`)."""
import datetime as dt
from typing import Protocol


class Mailbox(Protocol):
    def server_settings_get(self): ...

    def conversations_bump_epoch_for_users(self, *, user_ids: list[int], actor, now: dt.datetime) -> list: ...

    def deliveries_drop_for_devices(self, *, device_ids: list[int]) -> int: ...


_registered: Mailbox | None = None


def mailbox_register(mailbox: Mailbox) -> None:
    global _registered
    _registered = mailbox


def mailbox() -> Mailbox:
    if _registered is None:
        raise RuntimeError("no mailbox registered: is 'dms' in INSTALLED_APPS?")
    return _registered

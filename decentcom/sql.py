"""Helpers for the hand-written SQL of the hot paths (auth, send, sync, ack).

The ORM spent 100-500 µs building each query there, more than the database
took to run it (bench.mailbox); those few statements are written out
instead, for SQLite and PostgreSQL alike. These helpers convert values the
way Django's fields do on each database."""
import datetime as dt
import functools
import json
import uuid

from django.db import connection, models

UTC = dt.timezone.utc


@functools.cache
def _sqlite() -> bool:
    # Asked once: each look at `connection` goes through a thread-local proxy.
    return connection.vendor == "sqlite"


def for_update(of: str | None = None) -> str:
    """The row-lock suffix, empty where the database has none (SQLite);
    `of`: lock only that table's rows of a join."""
    return "" if _sqlite() else f" FOR UPDATE OF {of}" if of else " FOR UPDATE"


def placeholders(n: int) -> str:
    return ", ".join(["%s"] * n)


def among(column: str, values: list) -> tuple[str, list]:
    """`column` is one of `values` (ids as `uuid_param` gives them): the SQL
    and its parameters. One array parameter on PostgreSQL, where parsing an
    IN list of 5,000 literals took longer than running the statement (a
    purge chunk); an IN list on SQLite, which has no arrays."""
    if _sqlite():
        return f"{column} IN ({placeholders(len(values))})", list(values)
    return f"{column} = ANY(%s)", [list(values)]


def uuid_param(value):
    """A UUID (or its string) as a UUID column takes it: hex text on SQLite, native on PostgreSQL."""
    value = value if isinstance(value, uuid.UUID) else uuid.UUID(value)
    return value.hex if _sqlite() else value


def uuid_str(value) -> str:
    """A UUID column's value as the protocol writes it: lower case with dashes."""
    if isinstance(value, uuid.UUID):
        return str(value)
    return f"{value[:8]}-{value[8:12]}-{value[12:16]}-{value[16:20]}-{value[20:]}"


def dt_param(value: dt.datetime | None):
    """As DateTimeField stores it: naive UTC text on SQLite, as is on PostgreSQL."""
    if value is None or not _sqlite():
        return value
    return str(value.astimezone(UTC).replace(tzinfo=None))


def dt_value(value) -> dt.datetime | None:
    """An aware UTC datetime from a DateTimeField column (naive UTC on SQLite)."""
    if value is None:
        return None
    if isinstance(value, str):
        value = dt.datetime.fromisoformat(value)
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def rfc3339_value(value) -> str | None:
    """`2026-11-27T05:00:00.000000Z` straight from a DateTimeField column."""
    if value is None:
        return None
    if value.tzinfo is not None:
        value = value.astimezone(UTC).replace(tzinfo=None)
    return value.isoformat(timespec="microseconds") + "Z"  # half strftime's cost, twice per synced message


def json_param(value):
    return connection.ops.adapt_json_value(value, None)


def json_value(value):
    return None if value is None else json.loads(value)


def _converter(field: models.Field):
    kind = field.get_internal_type()
    if kind == "DateTimeField":
        return dt_value
    if kind == "BooleanField":
        return bool
    if kind == "JSONField":
        return json.loads
    if kind == "UUIDField":
        return lambda v: v if isinstance(v, uuid.UUID) else uuid.UUID(v)
    return None


class Rows:
    """Builds instances of `model` from the columns of a raw row, as the ORM
    would after its own conversions, but without `Model.__init__` (a tenth
    of a request's CPU for the three models of a session): no pre_init or
    post_init signal is sent, so it is only for models that have none."""

    def __init__(self, model: type[models.Model], alias: str):
        fields = model._meta.concrete_fields
        self.model = model
        self.width = len(fields)
        self.select = ", ".join(f"{alias}.{connection.ops.quote_name(f.column)}" for f in fields)
        self.attnames = [f.attname for f in fields]
        self.converters = [_converter(f) for f in fields]

    def build(self, values) -> models.Model:
        instance = self.model.__new__(self.model)
        instance.__dict__.update(zip(self.attnames, [
            v if c is None or v is None else c(v) for c, v in zip(self.converters, values)]))
        instance._state = models.base.ModelState()
        instance._state.adding = False
        instance._state.db = connection.alias
        return instance

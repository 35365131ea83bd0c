"""The API's JSON renderer writes DRF's JSONRenderer bytes (decentcom.renderers)."""
import dataclasses
import datetime as dt
import decimal
import uuid

import pytest
from django.conf import settings
from django.utils.translation import gettext_lazy
from rest_framework.exceptions import ErrorDetail
from rest_framework.renderers import JSONRenderer
from rest_framework.utils.serializer_helpers import ReturnDict

from decentcom.renderers import FastJSONRenderer


@dataclasses.dataclass
class Point:
    x: int


PAYLOADS = [
    {"messages": [{"message_id": str(uuid.uuid4()), "ciphertext": "QUJD" * 300, "key_wrap": None,
                   "epoch": 3, "has_more": False}], "cursor": "abc"},
    {"uuid": uuid.UUID(int=7), "at": dt.datetime(2026, 12, 1, 12, 0, 0, 123456, tzinfo=dt.timezone.utc),
     "naive": dt.datetime(2026, 12, 1, 12, 0), "day": dt.date(2026, 12, 1), "time": dt.time(9, 30, 0, 5),
     "amount": decimal.Decimal("1.10"), "lazy": gettext_lazy("not found"), "ids": {3, 1},
     "detail": ErrorDetail("bad", code="bad"), "text": "é ☃ \u2028 \u2029 \x00 \" \\", 1: "int key",
     "nested": ReturnDict({"a": [1, (2, 3)]}, serializer=None), "tuple": (1, 2), "bytes": b"raw"},
    {"big": 2**70, "negative_big": -(2**65)},  # over orjson's 64 bits: DRF's own path
    [], "plain string", 0, True, None,
]


@pytest.mark.parametrize("data", PAYLOADS)
def test_the_bytes_are_drfs(data):
    assert FastJSONRenderer().render(data) == JSONRenderer().render(data)


@pytest.mark.parametrize("media_type", ["application/json; indent=4", "application/json"])
def test_an_asked_for_indent_is_honoured(media_type):
    data = {"a": [1, {"b": None}]}
    assert (FastJSONRenderer().render(data, media_type, {})
            == JSONRenderer().render(data, media_type, {}))


def test_a_dataclass_is_refused_as_drf_refuses_it():
    with pytest.raises(TypeError):
        JSONRenderer().render({"p": Point(1)})
    with pytest.raises(TypeError):
        FastJSONRenderer().render({"p": Point(1)})


def test_the_api_renders_with_it():
    assert settings.REST_FRAMEWORK["DEFAULT_RENDERER_CLASSES"] == ["decentcom.renderers.FastJSONRenderer"]

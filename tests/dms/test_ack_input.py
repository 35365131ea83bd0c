"""ACK's plain fast path accepts only what the AckInput serializer accepts,
with the same validated data; anything else goes to AckInput, which words
the errors."""
import uuid

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from rest_framework.exceptions import ValidationError

from dms.serializers import MAX_ACK_IDS, AckInput, ack_input_validate

DEVICE = "AKnL4NNf3DGWZJS6cPknBuEGnVsV4A4m5tgebLHaRSZ9"  # a b58 Ed25519 key
ids = st.lists(st.uuids().map(str), max_size=4)
values = (st.none() | st.booleans() | st.integers() | st.text(max_size=40) | ids
          | st.lists(st.text(max_size=40) | st.integers(), max_size=3)
          | st.sampled_from([DEVICE, DEVICE[:-1], str(uuid.uuid4()).upper(), ""]))


def serializer_result(data):
    serializer = AckInput(data=data)
    return dict(serializer.validated_data) if serializer.is_valid() else None


def fast_result(data):
    try:
        return dict(ack_input_validate(data))
    except ValidationError:
        return None


@settings(max_examples=600, deadline=None)
@given(body=st.dictionaries(st.sampled_from(["message_ids", "failed", "device_id", "other"]), values, max_size=4))
def test_fast_path_agrees_with_the_serializer(body):
    assert fast_result(body) == serializer_result(body)


@pytest.mark.parametrize("body", [
    {"message_ids": [str(uuid.uuid4()) for _ in range(MAX_ACK_IDS)]},
    {"message_ids": [str(uuid.uuid4()) for _ in range(MAX_ACK_IDS)], "failed": [str(uuid.uuid4())]},
    {"message_ids": [str(uuid.uuid4())], "device_id": DEVICE},
    {}, [], "x", None, {"message_ids": None},
])
def test_edge_cases_agree(body):
    assert fast_result(body) == serializer_result(body)

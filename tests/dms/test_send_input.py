"""The plain fast path of send's input validation accepts only what the
SendInput serializer accepts, and builds the same validated data; anything
else goes to SendInput, which words the errors."""
import copy

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dms.serializers import SendInput, _send_input_plain, send_input_validate
from tests.factories import build_send, create_conversation, make_person

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-3, 2**40) | st.floats(allow_nan=False) | st.text(max_size=60),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=12), inner, max_size=3),
    max_leaves=6)


@pytest.fixture
def body(db):
    alice, bob = make_person(1), make_person(2)
    return build_send(alice.device, create_conversation(alice.device, [bob.id]))


def serializer_result(data):
    serializer = SendInput(data=data)
    return serializer.validated_data if serializer.is_valid() else None


def plain(value):
    """DRF's OrderedDicts as dicts, to compare."""
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain(v) for v in value]
    return value


def check_agrees(data):
    fast = _send_input_plain(data)
    if fast is not None:
        assert plain(serializer_result(data)) == fast


def test_a_valid_body_takes_the_fast_path(body):
    assert _send_input_plain(body) is not None
    assert plain(send_input_validate(body)) == plain(serializer_result(body))


PATHS = [("message_id",), ("conversation_id",), ("epoch",), ("key_id",), ("participants_sha256",),
         ("retention",), ("retention", "policy"), ("retention", "ttl_days"), ("nonce",), ("ciphertext",),
         ("signature",), ("recipients",), ("recipients", 0), ("recipients", 0, "device_id"),
         ("recipients", 0, "key_wrap"), ("recipients", 0, "key_wrap", "nonce"),
         ("recipients", 0, "key_wrap", "wrapped_key")]


@settings(max_examples=400, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(path=st.sampled_from(PATHS), value=json_values, delete=st.booleans())
def test_fast_path_never_accepts_what_the_serializer_refuses(body, path, value, delete):
    data = copy.deepcopy(body)
    target = data
    for key in path[:-1]:
        target = target[key]
    if delete:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    check_agrees(data)


@pytest.mark.parametrize("mutate", [
    lambda b: b["recipients"].append(dict(b["recipients"][0])),   # a device twice
    lambda b: b["recipients"][0].update(key_wrap=None),
    lambda b: b["retention"].update(ttl_days=None, policy="burn_on_read"),
    lambda b: b.update(epoch=True),
    lambda b: b.update(extra="ignored"),
    lambda b: b.update(recipients=[]),
])
def test_edge_cases_agree(body, mutate):
    data = copy.deepcopy(body)
    mutate(data)
    check_agrees(data)

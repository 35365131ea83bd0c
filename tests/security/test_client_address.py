"""One rule for the client address (issue 10 point 8): TRUSTED_PROXY_COUNT
hops from the right of X-Forwarded-For, else the socket peer, and only ever
an IP address."""
from pathlib import Path

import pytest
from django.test import override_settings
from rest_framework.test import APIClient

from decentcom.ratelimit import client_address
from devices.models import Challenge
from dms.selectors import server_settings_get
from tests.factories import Keys

pytestmark = pytest.mark.django_db

BASE_DIR = Path(__file__).resolve().parent.parent.parent


def ask(client: APIClient, **headers):
    return client.post("/api/v1/auth/challenge", {"pubkey": Keys().id}, format="json", **headers)


def test_without_proxies_x_forwarded_for_is_ignored():
    conf = server_settings_get()
    conf.challenge_rate_per_ip = 2
    conf.save()
    client = APIClient(REMOTE_ADDR="203.0.113.7")
    for i in range(2):
        assert ask(client, HTTP_X_FORWARDED_FOR=f"198.51.100.{i}").status_code == 200
    # a new made-up address in the header each time does not escape the limit
    response = ask(client, HTTP_X_FORWARDED_FOR="198.51.100.99")
    assert response.status_code == 429
    assert set(Challenge.objects.values_list("client_ip", flat=True)) == {"203.0.113.7"}


@override_settings(TRUSTED_PROXY_COUNT=1)
def test_behind_one_proxy_the_right_most_entry_is_the_client():
    conf = server_settings_get()
    conf.challenge_rate_per_ip = 2
    conf.save()
    proxy = APIClient(REMOTE_ADDR="10.0.0.1")
    for i in range(2):  # the client writes whatever it likes on the left; the proxy appends the real peer
        assert ask(proxy, HTTP_X_FORWARDED_FOR=f"1.2.3.{i}, 203.0.113.7").status_code == 200
    assert ask(proxy, HTTP_X_FORWARDED_FOR="9.9.9.9, 203.0.113.7").status_code == 429
    assert ask(proxy, HTTP_X_FORWARDED_FOR="203.0.113.8").status_code == 200
    assert set(Challenge.objects.values_list("client_ip", flat=True)) == {"203.0.113.7", "203.0.113.8"}


@override_settings(TRUSTED_PROXY_COUNT=1)
@pytest.mark.parametrize("forwarded", ["not-an-address", "1.2.3.4:80", "fe80::1%eth0", "999.1.1.1", "\x00"])
def test_a_non_address_is_never_stored(forwarded):
    """It went to an `inet` column: a 500 on PostgreSQL."""
    response = ask(APIClient(REMOTE_ADDR="10.0.0.1"), HTTP_X_FORWARDED_FOR=forwarded)
    assert response.status_code == 200
    assert Challenge.objects.get().client_ip is None


@pytest.mark.parametrize("hops,meta,expected", [
    (0, {"REMOTE_ADDR": "192.0.2.1", "HTTP_X_FORWARDED_FOR": "1.1.1.1"}, "192.0.2.1"),
    (1, {"REMOTE_ADDR": "10.0.0.1", "HTTP_X_FORWARDED_FOR": "1.1.1.1, 192.0.2.1"}, "192.0.2.1"),
    (2, {"REMOTE_ADDR": "10.0.0.1", "HTTP_X_FORWARDED_FOR": "6.6.6.6, 192.0.2.1, 10.0.0.2"}, "192.0.2.1"),
    (2, {"REMOTE_ADDR": "192.0.2.9", "HTTP_X_FORWARDED_FOR": "6.6.6.6"}, "192.0.2.9"),  # bypassed the proxies
    (1, {"REMOTE_ADDR": "10.0.0.1", "HTTP_X_FORWARDED_FOR": "2001:DB8::1"}, "2001:db8::1"),
    (0, {"REMOTE_ADDR": "unix-socket"}, None),
    (0, {}, None),
])
def test_client_address_rule(hops, meta, expected):
    with override_settings(TRUSTED_PROXY_COUNT=hops):
        assert client_address(meta) == expected


def test_procfile_does_not_let_daphne_rewrite_the_peer_from_client_headers():
    """`daphne --proxy-headers` takes the LEFT-most X-Forwarded-For entry, which the client writes."""
    procfile = (BASE_DIR / "Procfile").read_text()
    web = next(line for line in procfile.splitlines() if line.startswith("web:"))
    # the web tier is decentcom.serve, which gives each daphne worker its command line
    assert "decentcom.serve" in web and "--proxy-headers" not in web
    assert "proxy-headers" not in (BASE_DIR / "decentcom" / "serve.py").read_text()

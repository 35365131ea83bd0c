"""HTTP access to a decentcom server: JSON in, JSON out, errors as exceptions
carrying the server's error body (PROTOCOL.md §10)."""
from __future__ import annotations

import time
from collections.abc import Callable

import httpx

API_PREFIX = "/api/v1"
MAX_RETRY_AFTER_S = 300  # a server asking for longer is treated as an error


class ApiError(Exception):
    """A non-2xx answer. `code` is the body's `error`; `body` holds the extra fields."""

    def __init__(self, status: int, body: dict, retry_after: int | None = None):
        self.status = status
        self.body = body
        self.code = str(body.get("error") or f"http_{status}")
        self.detail = str(body.get("detail") or "")
        self.retry_after = retry_after
        super().__init__(f"{status} {self.code}: {self.detail}")


class NetworkError(Exception):
    """The server could not be reached, or the connection broke mid-request."""


def _retry_after(response: httpx.Response) -> int | None:
    value = response.headers.get("Retry-After", "")
    return int(value) if value.isdigit() else None


def redirected(server: str, response: httpx.Response) -> ApiError:
    """A redirect is never followed (a signed login is bound to one origin, §3):
    an error that says where the server points, and why when it is to HTTPS."""
    location = response.headers.get("Location", "")
    target = str(response.url.join(location)) if location else "?"
    if target.startswith("https://") and server.startswith("http://"):
        detail = (f"the server forces HTTPS: it redirects {server} to {target}; "
                  f"use its https:// address ({'https://' + server.removeprefix('http://')})")
    else:
        detail = f"the server redirects to {target}; use the address it names"
    return ApiError(response.status_code, {"error": "redirected", "detail": detail, "location": target})


class Api:
    """One server, optionally with a bearer token. `transport` lets a caller
    run the client against an in-process server (httpx.WSGITransport)."""

    def __init__(self, server: str, *, token: str | None = None, transport: httpx.BaseTransport | None = None,
                 on_wait: Callable[[str, int], None] | None = None, timeout: float = 30.0):
        self.server = server.rstrip("/")
        self.token = token
        self.on_wait = on_wait or (lambda code, seconds: None)
        self.http = httpx.Client(base_url=self.server + API_PREFIX, transport=transport, timeout=timeout)

    def close(self) -> None:
        self.http.close()

    def request(self, method: str, path: str, *, json: dict | None = None, params: dict | None = None,
                token: str | None = None, with_status: bool = False):
        """Send one request; on `429` with `Retry-After` wait and send it again
        (the server refused it before doing anything, so the same body is safe)."""
        token = self.token if token is None else token  # "" sends none
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        while True:
            try:
                response = self.http.request(method, path, json=json, params=params, headers=headers)
            except httpx.TransportError as exc:
                raise NetworkError(f"cannot reach {self.server} ({type(exc).__name__}: {str(exc) or 'no answer'}): "
                                   "is the server running, and is the address right?") from exc
            if response.is_redirect:
                raise redirected(self.server, response)
            try:
                body = None if response.status_code == 204 else response.json()
            except ValueError:
                body = {"error": f"http_{response.status_code}", "detail": response.text[:200]}
            if response.is_success:
                return (response.status_code, body) if with_status else body
            retry_after = _retry_after(response)
            if not isinstance(body, dict):
                body = {"error": f"http_{response.status_code}"}
            # A full mailbox (§7 check 11) does not drain by waiting: no retry, whatever Retry-After says.
            if (response.status_code == 429 and retry_after is not None and retry_after <= MAX_RETRY_AFTER_S
                    and body.get("error") != "mailbox_full"):
                self.on_wait(str(body.get("error", "rate_limited")), retry_after)
                time.sleep(retry_after)
                continue
            raise ApiError(response.status_code, body, retry_after)

    def get(self, path: str, **kw):
        return self.request("GET", path, **kw)

    def post(self, path: str, json: dict | None = None, **kw):
        return self.request("POST", path, json=json if json is not None else {}, **kw)

    def patch(self, path: str, json: dict, **kw):
        return self.request("PATCH", path, json=json, **kw)

    def delete(self, path: str, **kw):
        return self.request("DELETE", path, **kw)

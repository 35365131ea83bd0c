"""Django's HTTP handling under daphne, one thread hop per request.

Django's own ASGIHandler runs every request on a new thread (a
ThreadSensitiveContext each), and with a sync-only middleware between async
ones it hops thread → event loop → thread for each request. bench.mailbox
measured that at about half the server's CPU per send, plus a new database
connection per request (thread-local connections cannot outlive their
thread). Here the whole middleware chain and view run in one hop, on a fixed
pool of threads that keep their connections (CONN_MAX_AGE applies as under
WSGI). `HTTP_THREADS` sets the pool: 1 on SQLite, whose single writer lock
would otherwise make threads sleep in its busy handler."""
import json
from concurrent.futures import ThreadPoolExecutor

from asgiref.sync import sync_to_async
from django.conf import settings
from django.core import signals
from django.core.exceptions import RequestAborted
from django.core.handlers.asgi import ASGIHandler, get_script_prefix
from django.core.handlers.base import BaseHandler
from django.http import FileResponse
from django.urls import set_script_prefix

from decentcom.dbbreaker import database_breaker
from decentcom.errors import database_unavailable, error_body
from decentcom.middleware import as_api_error, is_api_path


class PooledHttpHandler(ASGIHandler):
    def __init__(self):
        BaseHandler.__init__(self)
        self.load_middleware(is_async=False)
        self.executor = ThreadPoolExecutor(max_workers=settings.HTTP_THREADS, thread_name_prefix="http")

    def _in_pool(self, func):
        return sync_to_async(func, thread_sensitive=False, executor=self.executor)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            raise ValueError(f"HTTP only, not {scope['type']}")
        try:
            body_file = await self.read_body(receive)
        except RequestAborted:
            return
        set_script_prefix(get_script_prefix(scope))
        try:
            if database_breaker.is_open and is_api_path(scope["path"]):
                # The database is known to be unreachable: 503 now, not after waiting for a thread.
                response = database_unavailable()
            else:
                response = await self._in_pool(self._respond)(scope, body_file)
            await self.send_response(response, send)
            if response.streaming:
                await self._in_pool(response.close)()
        finally:
            body_file.close()

    def _respond(self, scope, body_file):
        # The request signals run here, so connections are kept or closed in the thread that uses them.
        if database_breaker.is_open and is_api_path(scope["path"]):
            return database_unavailable()  # it went down while this request waited for a thread
        signals.request_started.send(sender=self.__class__, scope=scope)
        request, response = self.create_request(scope, body_file)
        if request is None and is_api_path(scope["path"]):
            response = as_api_error(response)
        elif request is not None:
            response = self.get_response(request)
            response._handler_class = self.__class__
            if isinstance(response, FileResponse):
                response.block_size = self.chunk_size
        if not response.streaming:
            response.close()  # its content is already in memory
        return response


def daphne_api_errors() -> None:
    """§10 for what Twisted answers itself under daphne, before the application runs.

    Twisted parses a POST's multipart body on its own (daphne never uses the
    result) and answers one it cannot parse with a bare `400`, so Django never
    sees the request: switch that off, and the request reaches our parsers
    (which refuse it with the JSON `415`). Twisted's bare `400` for bytes that
    are no valid request (a NUL in a header, a request line that is not ASCII)
    becomes the JSON error body."""
    try:
        from daphne.http_protocol import WebRequest
        from twisted.web.http import HTTPChannel
    except ImportError:  # another ASGI server
        return
    if getattr(WebRequest, "_api_errors", False):
        return
    # Twisted sets this per request in __init__; a data descriptor on the class wins.
    WebRequest._parsePOSTFormSubmission = property(lambda self: False, lambda self, value: None)

    def bad_request_and_disconnect(self):
        # The request line or headers are broken, so there is no path to go by.
        body = json.dumps(error_body("bad_request", "malformed HTTP request")).encode()
        self.transport.write(b"HTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\n"
                             b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body))
        self.loseConnection()

    HTTPChannel._respondToBadRequestAndDisconnect = bad_request_and_disconnect
    WebRequest._api_errors = True

import os

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "decentcom.settings")
django.setup(set_prefix=False)

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402

from decentcom.asgi_http import PooledHttpHandler, daphne_api_errors  # noqa: E402
from gateway.routing import websocket_urlpatterns  # noqa: E402

daphne_api_errors()

# No origin check on the WebSocket: it authenticates by bearer token or
# single-use ticket, never by cookie, so a foreign page gains nothing.
application = ProtocolTypeRouter({
    "http": PooledHttpHandler(),
    "websocket": URLRouter(websocket_urlpatterns),
})

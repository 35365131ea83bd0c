from django.urls import path

from gateway.consumers import GatewayConsumer

websocket_urlpatterns = [
    path("api/v1/gateway", GatewayConsumer.as_asgi()),
]

from django.urls import path

from gateway import apis

urlpatterns = [
    path("ticket", apis.GatewayTicketApi.as_view(), name="gateway-ticket"),
]

from django.urls import path

from devices import apis

urlpatterns = [
    path("auth/challenge", apis.AuthChallengeApi.as_view(), name="auth-challenge"),
    path("auth/verify", apis.AuthVerifyApi.as_view(), name="auth-verify"),
    path("auth/logout", apis.AuthLogoutApi.as_view(), name="auth-logout"),
    path("users/<str:user_id>/devices", apis.UserDeviceListApi.as_view(), name="user-devices"),
    path("devices", apis.DevicesApi.as_view(), name="devices"),
    path("devices/prekeys", apis.PrekeysApi.as_view(), name="device-prekeys"),
    path("devices/<str:device_id>", apis.DeviceRevokeApi.as_view(), name="device-revoke"),
]

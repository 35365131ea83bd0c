from django.contrib import admin
from django.urls import include, path
from django.views.generic import TemplateView
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from decentcom import health, metrics
from decentcom.apis import ApiRootApi
from dms.apis import ServerDescriptionApi

urlpatterns = [
    # `/` is the web client's index.html (whitenoise, from web/dist); this page answers only without a build.
    path("", TemplateView.as_view(template_name="web_missing.html"), name="index"),
    path("about/", TemplateView.as_view(template_name="about.html"), name="about"),
    path("admin/", admin.site.urls),
    path("healthz", health.healthz, name="healthz"),
    path("readyz", health.readyz, name="readyz"),
    path("metrics", metrics.metrics_view, name="metrics"),
    path("api/v1/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/v1/docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="docs"),
    path("api/v1/", ApiRootApi.as_view(), name="api-root"),
    path("api/v1/server", ServerDescriptionApi.as_view(), name="server"),
    path("api/v1/", include("devices.urls")),
    path("api/v1/dms/", include("dms.urls")),
    path("api/v1/gateway/", include("gateway.urls")),
]

"""URL configuration of the shop example."""

from django.contrib import admin
from django.urls import include, path

urlpatterns = [
    path("admin/", admin.site.urls),
    path("orders/", include("orders.urls")),
    path("ticks/", include("ticks.urls")),
    path("live/", include("live.urls")),
    path("", include("store.urls")),
]

from django.urls import path

from . import views

urlpatterns = [
    path("", views.page, name="ticks"),
    path("json/", views.rows, name="ticks-json"),
]

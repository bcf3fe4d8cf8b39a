from django.urls import path

from . import views

urlpatterns = [
    path("", views.orders, name="orders"),
    path("<str:token>/", views.receipts, name="receipts"),
]

"""The shop's pages: what the app was configured with, as a page and as JSON (the tests read the JSON)."""

from django.conf import settings
from django.http import JsonResponse
from django.shortcuts import render


def _masked(secret: str) -> str:
    """A secret as a page may show it: its length and last four characters, never the value."""
    if not secret:
        return "(not set)"
    return "•" * max(len(secret) - 4, 0) + secret[-4:]


def _configuration() -> dict[str, str]:
    return {"shop_name": settings.SHOP_NAME, "stripe_secret_key": _masked(settings.STRIPE_SECRET_KEY)}


def home(request):
    return render(request, "store/home.html", _configuration())


def config(request):
    return JsonResponse(_configuration())

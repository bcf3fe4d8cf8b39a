"""The page that opens the echo WebSocket (served by Django like any page, over WSGI too)."""

from django.shortcuts import render


def echo(request):
    return render(request, "live/echo.html")

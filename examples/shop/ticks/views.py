"""The rows `manage.py tick` wrote, newest first: as a page and as JSON (the tests count them per slot)."""

from django.http import JsonResponse
from django.shortcuts import render

from ticks.models import Tick

SHOWN = 500


def _rows() -> list[dict]:
    return [{"id": tick.pk, "job": tick.job, "slot": tick.slot, "host": tick.host, "at": tick.at.isoformat()}
            for tick in Tick.objects.all()[:SHOWN]]


def page(request):
    return render(request, "ticks/ticks.html", {"ticks": _rows()})


def rows(request):
    return JsonResponse({"ticks": _rows()})

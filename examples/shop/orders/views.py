"""Orders: a form (or a JSON client) queues an order, a Celery worker prices it, its receipt is shown."""

import secrets

from django.http import HttpResponseBadRequest, JsonResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_GET, require_http_methods

from .models import Receipt
from .tasks import price_order


def _quantities(text: str) -> list[int] | None:
    try:
        quantities = [int(part) for part in text.replace(",", " ").split()]
    except ValueError:
        return None
    return quantities if quantities and all(0 < quantity <= 1000 for quantity in quantities) else None


@require_http_methods(["GET", "POST"])
def orders(request):
    if request.method == "GET":
        return render(request, "orders/orders.html", {"receipts": Receipt.objects.all()[:20]})
    quantities = _quantities(request.POST.get("quantities", ""))
    if quantities is None:
        return HttpResponseBadRequest("quantities: whole numbers from 1 to 1000, e.g. 1, 2, 3")
    token = request.POST.get("token") or secrets.token_hex(8)
    price_order.delay(token, quantities, float(request.POST.get("seconds") or 0))
    if "application/json" in request.headers.get("Accept", ""):
        return JsonResponse({"token": token, "queued": True}, status=202)
    return redirect("orders")


@require_GET
def receipts(request, token: str):
    return JsonResponse({"token": token, "receipts": [r.as_json() for r in Receipt.objects.filter(token=token)]})

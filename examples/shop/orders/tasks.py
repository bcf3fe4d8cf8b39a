import os
import socket
import time

from celery import shared_task
from django.conf import settings

from .models import Receipt

PRICE_CENTS = 250
LONGEST_WORK = 10


@shared_task
def price_order(token: str, quantities: list[int], seconds: float = 0) -> int:
    """Price an order (after `seconds` of pretend work, so a test can catch it in progress) and keep the receipt."""
    time.sleep(min(max(seconds, 0), LONGEST_WORK))
    total = sum(quantities) * PRICE_CENTS
    Receipt.objects.create(token=token, quantities=quantities, total_cents=total,
                           # djship's production settings name the release; runserver has none.
                           release=getattr(settings, "DJSHIP_RELEASE", "development"),
                           hostname=socket.gethostname(), pid=os.getpid())
    return total

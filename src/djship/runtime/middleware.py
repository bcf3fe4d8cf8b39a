"""Middleware djship adds around the project's own (the project's code is not edited).

ReleaseHeaderMiddleware comes first, so every response Django makes says which release made it.
HealthCheckMiddleware comes last, so the load balancer's check runs through the project's whole middleware
stack (a release whose middleware breaks every request fails its check) and answers 200 only when Django can
also query the database. The checks carry the site's host name, so they pass ALLOWED_HOSTS.

With DJSHIP_DATABASE_HOLD (database.pooler), a GET or HEAD that failed because the database was gone (PostgreSQL
restarting after a crash) answers its 500 only once the database answers again, or after that many seconds: the
balancer retries it on another server (HAProxy's retry-on), and the retry then finds the database back, where
without the hold all three retries fall inside the outage. The health check waits the same way, for
DJSHIP_HEALTH_HOLD seconds (within HAProxy's check timeout), so the balancer does not take every server out for a
short outage they all share. PgBouncer cannot hold these requests itself: while its logins to PostgreSQL fail it
turns away every client that has no server connection (its check_fast_fail).
"""

import sys
import time

from django.conf import settings
from django.core.signals import got_request_exception
from django.db import DatabaseError, InterfaceError, OperationalError, connection
from django.http import HttpResponse

SAFE_METHODS = ("GET", "HEAD")
RETRY_PAUSE = 0.2


def wait_for_database(seconds: float) -> bool:
    """Whether the database answers SELECT 1 within seconds (a new connection for each try)."""
    deadline = time.monotonic() + seconds
    while True:
        connection.close()
        try:
            with connection.cursor() as cursor:
                cursor.execute("SELECT 1")
            return True
        except DatabaseError:
            if time.monotonic() + RETRY_PAUSE > deadline:
                connection.close()
                return False
            time.sleep(RETRY_PAUSE)


def _hold_while_database_restarts(sender, request=None, **kwargs):
    error = sys.exc_info()[1]
    hold = getattr(settings, "DJSHIP_DATABASE_HOLD", 0)
    if hold and request is not None and request.method in SAFE_METHODS \
            and isinstance(error, (OperationalError, InterfaceError)):
        wait_for_database(hold)


got_request_exception.connect(_hold_while_database_restarts, dispatch_uid="djship-database-hold")

RELEASE_HEADER = "X-Djship-Release"


class ReleaseHeaderMiddleware:
    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        response = self.get_response(request)
        response[RELEASE_HEADER] = settings.DJSHIP_RELEASE
        return response


class HealthCheckMiddleware:
    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        if request.path_info != settings.DJSHIP_HEALTH_PATH:
            return self.get_response(request)
        try:
            with connection.cursor() as cursor:
                cursor.execute("SELECT 1")
                cursor.fetchone()
        except Exception as error:  # any database failure makes this server unhealthy
            if getattr(settings, "DJSHIP_HEALTH_HOLD", 0) and wait_for_database(settings.DJSHIP_HEALTH_HOLD):
                return HttpResponse(f"ok {settings.DJSHIP_RELEASE}\n", content_type="text/plain")
            return HttpResponse(f"database unavailable: {type(error).__name__}\n", status=503, content_type="text/plain")
        return HttpResponse(f"ok {settings.DJSHIP_RELEASE}\n", content_type="text/plain")

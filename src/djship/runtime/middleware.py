"""Middleware djship adds around the project's own (the project's code is not edited).

ReleaseHeaderMiddleware comes first, so every response Django makes says which release made it.
HealthCheckMiddleware comes last, so the load balancer's check runs through the project's whole middleware
stack (a release whose middleware breaks every request fails its check) and answers 200 only when Django can
also query the database. The checks carry the site's host name, so they pass ALLOWED_HOSTS.
"""

from django.conf import settings
from django.db import connection
from django.http import HttpResponse

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
            return HttpResponse(f"database unavailable: {type(error).__name__}\n", status=503, content_type="text/plain")
        return HttpResponse(f"ok {settings.DJSHIP_RELEASE}\n", content_type="text/plain")

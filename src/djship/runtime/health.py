"""The health check the load balancer calls on every app server, through nginx and gunicorn into Django.

It answers before any other middleware, so a check that arrives by IP address or over plain HTTP is neither
rejected as DisallowedHost nor redirected to HTTPS; it answers 200 only when Django can query the database.
"""

from django.db import connection
from django.http import HttpResponse
from django.conf import settings


class HealthCheckMiddleware:
    def __init__(self, get_response):
        self.get_response = get_response
        self.path = settings.DJSHIP_HEALTH_PATH

    def __call__(self, request):
        if request.path_info != self.path:
            return self.get_response(request)
        try:
            with connection.cursor() as cursor:
                cursor.execute("SELECT 1")
                cursor.fetchone()
        except Exception as error:  # any database failure makes this server unhealthy
            return HttpResponse(f"database unavailable: {type(error).__name__}\n", status=503, content_type="text/plain")
        return HttpResponse(f"ok {settings.DJSHIP_RELEASE}\n", content_type="text/plain")

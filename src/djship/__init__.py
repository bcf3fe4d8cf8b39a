"""djship: a Django project from runserver to HTTPS load balancer -> nginx -> gunicorn -> PostgreSQL."""

__version__ = "0.1.0"

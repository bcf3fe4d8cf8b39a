"""The shop's Celery app, as Celery's "First steps with Django" lays it out: configured from the Django settings
(CELERY_*), tasks found in each installed app's tasks.py. The broker is REDIS_URL."""

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "shop.settings")

app = Celery("shop")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()

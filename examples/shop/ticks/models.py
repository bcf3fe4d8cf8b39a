from django.db import models


class Tick(models.Model):
    """One run of `manage.py tick`: which host ran it, for which slot of its schedule, and when."""

    host = models.CharField(max_length=100)
    slot = models.CharField(max_length=40, blank=True)
    job = models.CharField(max_length=100, blank=True)
    at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-at"]

from django.db import models


class Receipt(models.Model):
    """An order priced by a Celery worker: what it computed, and which release and host ran it."""

    token = models.CharField(max_length=64, db_index=True)
    quantities = models.JSONField()
    total_cents = models.IntegerField()
    release = models.CharField(max_length=64)
    hostname = models.CharField(max_length=255)
    pid = models.IntegerField()
    created = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created"]

    def as_json(self) -> dict:
        return {"token": self.token, "quantities": self.quantities, "total_cents": self.total_cents,
                "release": self.release, "hostname": self.hostname, "pid": self.pid,
                "created": self.created.isoformat()}

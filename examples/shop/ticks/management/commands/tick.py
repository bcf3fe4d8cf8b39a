"""`manage.py tick`: one row per run, naming the host and the slot djship's scheduler ran it for. With --sleep it
takes that long first (a job longer than its interval), with --fail it exits 1 after its row (a failing job)."""

import os
import socket
import sys
import time

from django.core.management.base import BaseCommand

from ticks.models import Tick


class Command(BaseCommand):
    help = "Record one tick (a row naming this host) and print it."

    def add_arguments(self, parser):
        parser.add_argument("--sleep", type=float, default=0, help="seconds to take before the row is written")
        parser.add_argument("--fail", action="store_true", help="exit 1 after writing the row")

    def handle(self, *args, sleep: float, fail: bool, **options):
        time.sleep(sleep)
        tick = Tick.objects.create(host=os.environ.get("DJSHIP_HOST") or socket.gethostname(),
                                   slot=os.environ.get("DJSHIP_JOB_SLOT", ""), job=os.environ.get("DJSHIP_JOB", ""))
        self.stdout.write(f"tick {tick.pk} on {tick.host} for {tick.slot or 'no slot'}")
        if fail:
            self.stderr.write("failing on purpose (--fail)")
            sys.exit(1)

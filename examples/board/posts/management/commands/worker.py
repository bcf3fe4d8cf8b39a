"""A background worker as a Procfile process runs one: it takes one "task" at a time (here: counting the posts, a
second's work) and, on SIGTERM, finishes the task in progress before it exits, as Celery's warm shutdown does."""

import os
import signal
import time

from django.conf import settings
from django.core.management.base import BaseCommand

from posts.models import Post


class Command(BaseCommand):
    help = "Run a small worker until SIGTERM, finishing its current task first."

    def handle(self, *args, **options):
        stopping = []
        signal.signal(signal.SIGTERM, lambda signum, frame: stopping.append(signum))
        release = getattr(settings, "DJSHIP_RELEASE", "development")
        self.stdout.write(f"worker {os.getpid()} started on release {release}", ending="\n")
        self.stdout.flush()
        while not stopping:
            posts = Post.objects.count()
            time.sleep(1)  # the rest of the task
            self.stdout.write(f"worker {os.getpid()}: task done ({posts} posts)")
            self.stdout.flush()
        self.stdout.write(f"worker {os.getpid()}: SIGTERM, finished the current task, exiting")
        self.stdout.flush()

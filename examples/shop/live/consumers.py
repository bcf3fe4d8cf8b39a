"""A WebSocket echo: each message comes back with the release and the process that answered, so a client sees a
deploy move it to the new release."""

import json
import os

from channels.generic.websocket import AsyncWebsocketConsumer
from django.conf import settings


def _release() -> str:
    """The release djship built (its production settings name it); "development" under runserver."""
    return getattr(settings, "DJSHIP_RELEASE", "development")


class EchoConsumer(AsyncWebsocketConsumer):
    async def connect(self):
        await self.accept()

    async def receive(self, text_data=None, bytes_data=None):
        await self.send(text_data=json.dumps({"echo": text_data, "release": _release(), "pid": os.getpid()}))

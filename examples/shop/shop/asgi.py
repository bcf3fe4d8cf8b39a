"""ASGI entry point of the shop example: Django's pages over HTTP, the echo WebSocket of the live app (Channels)."""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "shop.settings")

# Django first: it sets up the apps, which the consumers' imports need.
django_application = get_asgi_application()

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from channels.security.websocket import AllowedHostsOriginValidator  # noqa: E402

from live.routing import websocket_urlpatterns  # noqa: E402

application = ProtocolTypeRouter({
    "http": django_application,
    # A page of another site may not open the socket with the visitor's cookies: its Origin must be an allowed host.
    "websocket": AllowedHostsOriginValidator(URLRouter(websocket_urlpatterns)),
})

"""The ASGI application gunicorn serves with app.interface = "asgi": the project's own (DJSHIP_ASGI_APPLICATION),
wrapped so that a worker that stops can close its WebSockets with 1001 "going away" (see asgi_worker.py).

uvicorn closes the WebSockets still open when it shuts down with 1012 ("service restart"). During a deploy the
server is already out of rotation when its gunicorn stops, so its clients are going to another server, which is what
1001 says (RFC 6455 §7.4.1: "a server going down"); clients tell the two apart, e.g. the websockets library reports
1000 and 1001 as a normal closure and 1012 as an error.
"""

import asyncio
import importlib
import os

GOING_AWAY = 1001


class _Session:
    """One WebSocket: the send of its connection, and whether it was accepted and is still open."""

    def __init__(self, send):
        self._send = send
        self.accepted = False
        self.closed = False
        self.ended = asyncio.Event()

    async def send(self, message):
        if self.closed:
            return  # closed by go_away: what the app still sends has nowhere to go
        if message["type"] == "websocket.accept":
            self.accepted = True
        elif message["type"] == "websocket.close":
            self.closed = True
        await self._send(message)

    async def go_away(self):
        self.closed = True
        try:
            await self._send({"type": "websocket.close", "code": GOING_AWAY, "reason": "going away"})
        except Exception:  # noqa: BLE001 the client left already: nothing to close
            pass


class GoingAway:
    """ASGI middleware that knows every open WebSocket of its worker and can close them all with 1001."""

    def __init__(self, app):
        self.app = app
        self.sessions: set[_Session] = set()

    async def __call__(self, scope, receive, send):
        if scope["type"] != "websocket":
            return await self.app(scope, receive, send)
        session = _Session(send)
        self.sessions.add(session)
        try:
            return await self.app(scope, receive, session.send)
        finally:
            self.sessions.discard(session)
            session.ended.set()

    async def close_websockets(self, timeout: float) -> None:
        """Send 1001 to every accepted, open WebSocket; wait (at most timeout seconds) until the app's handlers of
        them end, which they do on the websocket.disconnect that follows."""
        sessions = [session for session in self.sessions if session.accepted and not session.closed]
        if not sessions:
            return
        await asyncio.gather(*(session.go_away() for session in sessions))
        await asyncio.wait([asyncio.ensure_future(session.ended.wait()) for session in sessions], timeout=timeout)


def _project_application(dotted: str):
    """The object a dotted path (mysite.asgi.application) names."""
    module, _, attribute = dotted.rpartition(".")
    return getattr(importlib.import_module(module), attribute)


application = GoingAway(_project_application(os.environ["DJSHIP_ASGI_APPLICATION"]))

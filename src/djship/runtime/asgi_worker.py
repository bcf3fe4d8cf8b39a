"""gunicorn's worker with app.interface = "asgi": uvicorn_worker.UvicornWorker, whose uvicorn first closes the open
WebSockets with 1001 "going away" when the worker stops (gunicorn passes SIGTERM on from a restart or a stop).

uvicorn's own shutdown stops listening, then closes every WebSocket with 1012 before anything of the app hears of it
(the ASGI lifespan shutdown comes after), so the 1001 has to go out just before it: GoingAwayServer's shutdown.
Imported by gunicorn's master too, so it imports nothing of the project (asgi.py does, in each worker).
"""

import sys

from gunicorn.arbiter import Arbiter
from uvicorn.server import Server
from uvicorn_worker import UvicornWorker

# Seconds the clients get to answer the close frames (and the app's handlers to end) before uvicorn's own shutdown.
CLOSE_TIMEOUT = 5


class GoingAwayServer(Server):
    async def shutdown(self, sockets=None):
        from .asgi import application

        try:
            await application.close_websockets(CLOSE_TIMEOUT)
        finally:
            await super().shutdown(sockets)


class Worker(UvicornWorker):
    async def _serve(self) -> None:
        # UvicornWorker._serve with GoingAwayServer in place of uvicorn's Server.
        self.config.app = self.wsgi
        server = GoingAwayServer(config=self.config)
        self._install_sigquit_handler()
        await server.serve(sockets=self.sockets)
        if not server.started:
            sys.exit(Arbiter.WORKER_BOOT_ERROR)

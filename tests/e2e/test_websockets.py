"""ASGI and WebSockets, written once and run on both topologies: one machine (https://localhost:29443) and netns hosts
(1 lb + 3 app hosts + 1 db, each its own sshd and state root; see tests/e2e/hosts.py).

examples/shop is brought up as WSGI (its pages served, no WebSocket), moved to app.interface = "asgi" (`up` refused on
the WSGI release, then `deploy` and `up`), and then serves the live app's echo WebSocket (Django Channels) through
HTTPS; during a deploy under 4 threads of requests (none may fail) every WebSocket opened before it is closed with 1001
"going away" once its server is out of rotation, never reset without a close frame, and its client reconnects and is
answered by the new release.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import pytest
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus
from websockets.sync.client import ClientConnection, connect, unix_connect

from djship.components.probe import Response
from djship.config import with_values
from tests.e2e.conftest import DJSHIP, REPO, Ports, RequestLoop, Site, kill_process_group, run_djship, \
    searchable_directory
from tests.e2e.hosts import netns_hosts
from tests.e2e.test_backup import ON_HOSTS, ONE_MACHINE, Target
from tests.e2e.test_remote_system import write_config

pytestmark = pytest.mark.e2e

SHOP = REPO / "examples" / "shop"
WEBSOCKET_PORTS = Ports.of(https=29443, http=29080, database=21432, app_prefix="127.0.121",
                           database_address="127.0.122.1")
APP_HOSTS = ["app1", "app2", "app3"]
HOSTS = ["lb1", *APP_HOSTS, "db1"]
PAGE = "/config/"
ECHO_PATH = "/ws/echo/"
# How long a handshake or an echo may take, as long as the request loop gives a request (a loaded 2-core machine).
ANSWER_SECONDS = 30
ASGI = {"app.interface": "asgi", "project.asgi_application": "shop.asgi.application"}


def make_shop(directory: Path) -> Path:
    """A fresh copy of examples/shop, without djship.toml."""
    project = directory / "shop"
    shutil.copytree(SHOP, project, ignore=shutil.ignore_patterns("__pycache__", "db.sqlite3", "media", ".djship"))
    return project


@dataclass
class Move:
    """What a system brought up as WSGI did, and how it moved to ASGI."""

    page: Response | str
    """/config/ as WSGI."""
    websocket: str
    """What opening the echo WebSocket did as WSGI."""
    refused: subprocess.CompletedProcess
    """`djship up` with app.interface = "asgi" on the WSGI release."""
    wsgi_release: str
    asgi_release: str


def _moved_to_asgi(target: Target) -> Move:
    """The system runs as WSGI (the fixture brought it up so): look, switch app.interface, `up` (refused), `deploy`,
    `up`."""
    target.status()
    wsgi_release = target.status()["release"]
    page = target.get(PAGE)
    try:
        with open_echo(target):
            websocket = "opened"
    except InvalidStatus as refusal:
        websocket = f"HTTP {refusal.response.status_code}"
    config = target.project / "djship.toml"
    config.write_text(with_values(config.read_text(), ASGI))
    refused = target.djship("up", check=False)
    target.djship("deploy")
    target.djship("up")
    return Move(page, websocket, refused, wsgi_release, target.status()["release"])


def _server_count(target: Target) -> int:
    """Two app servers on one machine, one on each app host."""
    return 2 if target.site else len(APP_HOSTS)


@pytest.fixture(scope="module", params=[ONE_MACHINE, ON_HOSTS])
def target(request) -> Iterator[Target]:
    """The shop up as WSGI, then moved to ASGI (its Move in target.move)."""
    if request.param == ONE_MACHINE:
        with searchable_directory() as directory:
            project = make_shop(directory)
            run_djship(project, "init")
            config = project / "djship.toml"
            config.write_text(with_values(config.read_text(), {**WEBSOCKET_PORTS.settings(), "app.workers": 2}))
            site = Site(project, WEBSOCKET_PORTS)
            try:
                site.up()
                made = Target(project, {"local": project / ".djship"}, site)
                made.move = _moved_to_asgi(made)  # type: ignore[attr-defined]
                yield made
            finally:
                site.stop_everything()
        return
    with netns_hosts(HOSTS) as hosts, searchable_directory() as directory:
        project = make_shop(directory)
        write_config(project, hosts, APP_HOSTS)
        config = project / "djship.toml"
        config.write_text(with_values(config.read_text(), {
            "project.settings_module": "shop.settings", "project.wsgi_application": "shop.wsgi.application",
        }))
        made = Target(project, {name: hosts[name].root for name in HOSTS})
        try:
            made.djship("up")
            made.move = _moved_to_asgi(made)  # type: ignore[attr-defined]
            yield made
        finally:
            subprocess.run([*DJSHIP, "down"], cwd=project, capture_output=True, timeout=300)


def open_echo(target: Target) -> ClientConnection:
    """A WebSocket to the echo through the balancer, its certificate verified against djship's CA for the site's
    name, from an allowed origin (the example refuses any other)."""
    context = ssl.create_default_context(cafile=str(target.ca))
    raw = socket.create_connection((target.address, target.port), timeout=ANSWER_SECONDS)
    return connect(f"wss://localhost:{target.port}{ECHO_PATH}", sock=raw, ssl=context,
                   origin=f"https://localhost:{target.port}", open_timeout=ANSWER_SECONDS, close_timeout=10)


def echo(websocket: ClientConnection, text: str) -> dict:
    websocket.send(text)
    answer = json.loads(websocket.recv(timeout=ANSWER_SECONDS))
    assert answer["echo"] == text, answer
    return answer


class PageLoop(RequestLoop):
    """4 threads of GETs of a plain page through the balancer."""

    def __init__(self, target: Target):
        self.target = target
        super().__init__(target, path=PAGE)  # type: ignore[arg-type]

    def _get(self, session) -> tuple[str | None, str | None]:
        answer = self.target.get(PAGE)
        if isinstance(answer, str):
            return answer, None
        if answer.status != 200:
            return f"HTTP {answer.status}", None
        return None, answer.header("X-Djship-Release") or "?"


@dataclass
class Connection:
    """One WebSocket a client opened: the server that took it, and how it ended."""

    server: str
    before_deploy: bool
    close_code: int | None = None
    """The code of the server's close frame; None while open (or closed by the test at the end)."""
    reset: str | None = None
    """How it ended without a close frame from the server, if it did."""


@dataclass
class EchoClient:
    """A WebSocket client that echoes twice a second and reconnects whenever its socket ends, as a browser's page
    would; it records every connection and the release of its latest answer."""

    target: Target
    connections: list[Connection] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    slow_requests: list[str] = field(default_factory=list)
    release: str | None = None
    stopped: threading.Event = field(default_factory=threading.Event)
    answered: threading.Event = field(default_factory=threading.Event)

    def start(self) -> None:
        """Run until stop(), once its first WebSocket is answered."""
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        assert self.answered.wait(30), f"the first WebSocket was not answered: {self.failures}"

    def _run(self) -> None:
        while not self.stopped.is_set():
            try:
                websocket = open_echo(self.target)
            except (OSError, TimeoutError, InvalidHandshake) as error:
                # HAProxy's own 408: this client did not complete its request within `timeout http-request` (10 s),
                # before any server saw it; a starved test thread on a loaded machine, not a server's failure.
                too_slow = isinstance(error, InvalidStatus) and error.response.status_code == 408
                (self.slow_requests if too_slow else self.failures).append(
                    f"connecting at {time.strftime('%H:%M:%S')}: {error!r}")
                time.sleep(1)  # as the example's page waits before it reconnects
                continue
            with websocket:
                connection = Connection(websocket.response.headers["X-Djship-Server"], not self.connections)
                self.connections.append(connection)
                self._echo_until_closed(websocket, connection)

    def _echo_until_closed(self, websocket: ClientConnection, connection: Connection) -> None:
        try:
            self.release = echo(websocket, "hello")["release"]
            self.answered.set()
            while not self.stopped.wait(0.5):
                self.release = echo(websocket, "ping")["release"]
        except ConnectionClosed as closed:
            if closed.rcvd is None:
                connection.reset = f"no close frame: {closed!r}"
            else:
                connection.close_code = closed.rcvd.code
        except TimeoutError as error:
            connection.reset = f"no answer: {error!r}"

    def stop(self) -> None:
        self.stopped.set()
        self.thread.join(timeout=30)


def test_a_wsgi_system_serves_its_pages_and_moves_to_asgi_with_a_deploy_then_up(target):
    move = target.move
    assert isinstance(move.page, Response) and move.page.status == 200, move.page
    assert json.loads(move.page.body)["shop_name"] == "Example shop"
    assert move.websocket == "HTTP 404"  # Django's WSGI handler has no such URL
    assert move.refused.returncode == 1
    assert move.refused.stderr.strip() == (
        f'error: app.interface: "asgi", but the live release {move.wsgi_release} was built for WSGI; run `djship '
        'deploy` (it builds a release for ASGI, served as WSGI until then), then `djship up`')
    assert move.asgi_release != move.wsgi_release
    back = target.djship("rollback", move.wsgi_release, check=False)
    assert (back.returncode, back.stderr.strip()) == (1, (
        f'error: app.interface: "asgi", but release {move.wsgi_release} was built for WSGI; roll back to a release '
        'built for ASGI, or set app.interface = "wsgi" and run `djship up` first'))
    gunicorns = [c for c in target.status()["components"] if c["name"].endswith("-gunicorn")]
    assert len(gunicorns) == _server_count(target)
    for gunicorn in gunicorns:
        conf = target.roots[gunicorn["host"]] / "servers" / gunicorn["server"] / "gunicorn.conf.py"
        assert 'worker_class = "djship_production.asgi_worker.Worker"' in conf.read_text(), conf
        assert gunicorn["state"] == "RUNNING" and gunicorn["health"] == "up", gunicorn


def test_a_websocket_through_https_echoes_from_every_app_server_and_pages_still_load(target):
    release = target.status()["release"]
    servers = {c["server"] for c in target.status()["components"] if c["role"] == "app"}
    assert len(servers) == _server_count(target), servers
    page = target.get("/")
    assert isinstance(page, Response) and page.status == 200 and b"Example shop" in page.body, page
    live = target.get("/live/")
    assert isinstance(live, Response) and live.status == 200 and b"/ws/echo/" in live.body, live

    # Held open together: the balancer gives each new one to the server holding the fewest, so each gets one.
    with ExitStack() as stack:
        websockets = [stack.enter_context(open_echo(target)) for _ in range(4)]
        answered = {ws.response.headers["X-Djship-Server"]: echo(ws, f"hello {index}") for index, ws in
                    enumerate(websockets)}
    assert set(answered) == servers
    assert {answer["release"] for answer in answered.values()} == {release}


def test_a_deploy_closes_every_websocket_with_1001_and_its_client_reconnects_to_the_new_release(target):
    consumers = target.project / "live" / "consumers.py"
    original = consumers.read_text()
    clients = [EchoClient(target) for _ in range(6)]
    for client in clients:
        client.start()
    assert {c.connections[0].server for c in clients} == {c["server"] for c in target.status()["components"]
                                                         if c["role"] == "app"}
    consumers.write_text(original + "\n# the echo, redeployed\n")
    try:
        with PageLoop(target) as load:
            said = target.djship("deploy").stdout
            load.wait_for(load.served + 30)
    finally:
        consumers.write_text(original)
    release = target.status()["release"]
    deadline = time.monotonic() + 30
    while any(client.release != release for client in clients) and time.monotonic() < deadline:
        time.sleep(0.2)
    for client in clients:
        client.stop()

    assert load.failures == [], f"{len(load.failures)} of {load.served} requests failed: {load.failures[:5]}"
    assert "0 failed" in said, said
    # The drain waits for requests in flight only, not for the WebSockets (the balancer's timeout is 40 s).
    drains = [float(seconds) for seconds in re.findall(r"Draining [^\n]*\n\s*✓ ([\d.]+)s", said)]
    assert len(drains) == _server_count(target) and max(drains) < 10, said
    connections = [connection for client in clients for connection in client.connections]
    assert [c.failures for c in clients] == [[]] * len(clients)
    slow = [attempt for client in clients for attempt in client.slow_requests]
    assert len(slow) <= len(clients), slow
    assert [c.reset for c in connections if c.reset] == [], "a WebSocket ended without a close frame"
    # Both servers restarted: every WebSocket open before the deploy got 1001, none another code.
    assert {c.close_code for c in connections if c.close_code is not None} == {1001}
    assert all(c.close_code == 1001 for c in connections if c.before_deploy), connections
    assert [client.release for client in clients] == [release] * len(clients)


# ---- what uvicorn does alone, and djship's worker: one gunicorn on a unix socket, no system -------------------

ECHO_APP = '''
async def application(scope, receive, send):
    if scope["type"] != "websocket":
        return
    while True:
        event = await receive()
        if event["type"] == "websocket.connect":
            await send({"type": "websocket.accept"})
        elif event["type"] == "websocket.receive":
            await send({"type": "websocket.send", "text": event["text"]})
        else:
            return
'''


def _close_code_when_gunicorn_stops(directory: Path, worker: str, application: str) -> int | None:
    """Open a WebSocket to a gunicorn with this worker class, send gunicorn SIGTERM (as a restart does) and return
    the code of the close frame the client gets (None: no close frame)."""
    sock = directory / "gunicorn.sock"
    process = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "--workers", "1", "--worker-class", worker, "--bind", f"unix:{sock}",
         "--graceful-timeout", "10", application],
        cwd=directory, env={**os.environ, "PYTHONPATH": str(directory), "DJSHIP_ASGI_APPLICATION": "echo.application"},
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                websocket = unix_connect(str(sock), "ws://localhost/", open_timeout=5)
                break
            except OSError:
                assert time.monotonic() < deadline and process.poll() is None, "gunicorn did not start"
                time.sleep(0.2)
        with websocket:
            websocket.send("hello")
            assert websocket.recv(timeout=5) == "hello"
            process.send_signal(signal.SIGTERM)
            try:
                websocket.recv(timeout=15)
            except ConnectionClosed as closed:
                return closed.rcvd.code if closed.rcvd else None
            raise AssertionError("the WebSocket stayed open after SIGTERM")
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            pass
        kill_process_group(process.pid)


def test_djship_worker_closes_with_1001_where_uvicorn_alone_sends_1012():
    with tempfile.TemporaryDirectory(dir="/tmp") as name:
        directory = Path(name)
        (directory / "echo.py").write_text(ECHO_APP)
        package = directory / "djship_production"
        package.mkdir()
        (package / "__init__.py").write_text("")
        for module in ("asgi.py", "asgi_worker.py"):
            (package / module).write_text(resources.files("djship.runtime").joinpath(module).read_text())

        assert _close_code_when_gunicorn_stops(directory, "uvicorn_worker.UvicornWorker", "echo:application") == 1012
        assert _close_code_when_gunicorn_stops(directory, "djship_production.asgi_worker.Worker",
                                               "djship_production.asgi:application") == 1001

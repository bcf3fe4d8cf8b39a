"""app.interface = "asgi": the config keys, finding the ASGI application, what a release gets, and djship's ASGI
wrapper closing WebSockets with 1001 (the rendered files are golden files in test_render.py)."""

from __future__ import annotations

import asyncio
import importlib.util
import sys
import tomllib
from pathlib import Path

import pytest

from djship.config import parse_config
from djship.deploy.pipeline import SUPERVISOR_PACKAGE, wheel_packages
from djship.deploy.release import ASGI_PACKAGES, RUNTIME_PACKAGES, ReleaseBuilder, Release, runtime_packages
from djship.errors import DjshipError
from djship.project import discover, render_config

REPO = Path(__file__).resolve().parents[2]
MINIMAL = '[project]\nsettings_module = "mysite.settings"\nwsgi_application = "mysite.wsgi.application"\n'
ASGI_APP = 'asgi_application = "mysite.asgi.application"\n'


def config_error(text: str) -> str:
    with pytest.raises(DjshipError) as caught:
        parse_config(text)
    return str(caught.value)


def test_the_interface_is_wsgi_unless_asgi_is_asked_for():
    assert parse_config(MINIMAL).app.interface == "wsgi"
    config = parse_config(MINIMAL + ASGI_APP + '[app]\ninterface = "asgi"\n')
    assert (config.app.interface, config.project.asgi_application) == ("asgi", "mysite.asgi.application")


@pytest.mark.parametrize(("text", "expected"), [
    (MINIMAL + '[app]\ninterface = "uwsgi"\n', "djship.toml: app.interface: Input should be 'wsgi' or 'asgi'"),
    (MINIMAL + '[app]\ninterface = "asgi"\n',
     'djship.toml: project.asgi_application: required with app.interface = "asgi"; set it to the project\'s ASGI '
     'callable, e.g. "mysite.asgi.application" (`djship init` finds it)'),
    (MINIMAL + ASGI_APP + '[app]\ninterface = "asgi"\nthreads = 4\n',
     "djship.toml: app.threads: an ASGI worker runs one event loop, not threads; remove app.threads (or set it to 1) "
     "and raise app.workers instead"),
    (MINIMAL + 'asgi_application = "mysite"\n',
     "djship.toml: project.asgi_application: not a dotted path to an ASGI callable (e.g. mysite.asgi.application)"),
], ids=["unknown", "no-application", "threads", "not-dotted"])
def test_a_bad_interface_is_refused_by_its_key(text, expected):
    assert config_error(text) == expected


def test_init_finds_the_asgi_application_channels_names_in_the_settings(django_project: Path):
    settings = django_project / "mysite" / "settings.py"
    settings.write_text(settings.read_text() + 'ASGI_APPLICATION = "mysite.routing.application"\n')

    project = discover(django_project)

    assert project.asgi_application == "mysite.routing.application"
    document = tomllib.loads(render_config(project))
    assert document["project"]["asgi_application"] == "mysite.routing.application"


def test_init_falls_back_to_the_asgi_module_and_writes_a_comment_without_one(django_project: Path):
    assert discover(django_project).asgi_application is None
    assert "asgi_application" not in tomllib.loads(render_config(discover(django_project)))["project"]

    (django_project / "mysite" / "asgi.py").write_text("application = None\n")

    assert discover(django_project).asgi_application == "mysite.asgi.application"


def test_the_shop_example_is_found_with_both_applications():
    project = discover(REPO / "examples" / "shop")

    assert (project.wsgi_application, project.asgi_application) == ("shop.wsgi.application", "shop.asgi.application")


def test_an_asgi_release_gets_uvicorn_and_so_does_the_wheelhouse(make_plan):
    wsgi = make_plan()
    asgi = make_plan(app={"interface": "asgi"}, project={"asgi_application": "board.asgi.application"})

    assert runtime_packages(wsgi) == RUNTIME_PACKAGES
    assert runtime_packages(asgi) == (*RUNTIME_PACKAGES, *ASGI_PACKAGES)
    assert {"uvicorn-worker>=0.4", "uvicorn[standard]>=0.36"} <= set(ASGI_PACKAGES)
    assert wheel_packages(asgi) == (*RUNTIME_PACKAGES, *ASGI_PACKAGES, SUPERVISOR_PACKAGE)
    assert wheel_packages(wsgi) == (*RUNTIME_PACKAGES, SUPERVISOR_PACKAGE)


class RecordingConnector:
    def __init__(self):
        self.files: dict[Path, str] = {}

    def put(self, path: Path, content: str, **_: object) -> None:
        self.files[path] = content


@pytest.mark.parametrize("interface", ["wsgi", "asgi"])
def test_only_an_asgi_release_gets_djship_asgi_entry_point_and_worker(make_plan, interface):
    plan = make_plan(app={"interface": interface}, project={"asgi_application": "board.asgi.application"})
    release = Release("r1", Path("/srv/r1"))
    connector = RecordingConnector()

    ReleaseBuilder(plan, connector, reporter=None).write_settings(release)  # type: ignore[arg-type]

    modules = {path.name for path in connector.files if path.parent.name == "djship_production"}
    asgi = {"asgi.py", "asgi_worker.py"} if interface == "asgi" else set()
    assert modules == {"__init__.py", "middleware.py", "migrate.py", "jobs.py", "settings.py", *asgi}
    assert (release.asgi_worker in connector.files) == (interface == "asgi")


# ---- runtime/asgi.py: the wrapper, on a fake ASGI server ----------------------------------------------------------


@pytest.fixture
def going_away(monkeypatch):
    """runtime/asgi.py's GoingAway, loaded as a release loads it (DJSHIP_ASGI_APPLICATION names the project's app)."""
    monkeypatch.setenv("DJSHIP_ASGI_APPLICATION", "json.dumps")
    spec = importlib.util.spec_from_file_location("djship_release_asgi", REPO / "src/djship/runtime/asgi.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setitem(sys.modules, "djship_release_asgi", module)
    return module.GoingAway


async def echo_app(scope, receive, send):
    """Accepts a WebSocket whose path is not /refuse, then echoes until it is disconnected."""
    event = await receive()
    assert event["type"] == "websocket.connect"
    if scope["path"] == "/refuse":
        await send({"type": "websocket.close", "code": 1008})
        return
    await send({"type": "websocket.accept"})
    while (event := await receive())["type"] == "websocket.receive":
        await send({"type": "websocket.send", "text": event["text"]})


class FakeSocket:
    """The server's side of one WebSocket: what the app sent; websocket.close answered with a disconnect, as uvicorn
    does once it has sent the close frame."""

    def __init__(self):
        self.sent: list[dict] = []
        self.incoming: asyncio.Queue = asyncio.Queue()
        self.incoming.put_nowait({"type": "websocket.connect"})

    async def receive(self) -> dict:
        return await self.incoming.get()

    async def send(self, message: dict) -> None:
        self.sent.append(message)
        if message["type"] == "websocket.close":
            self.incoming.put_nowait({"type": "websocket.disconnect", "code": message.get("code", 1000)})


def test_close_websockets_sends_1001_to_each_open_one_and_waits_for_its_handler(going_away):
    async def scenario():
        application = going_away(echo_app)
        open_one, refused, echoing = FakeSocket(), FakeSocket(), FakeSocket()
        handlers = [asyncio.ensure_future(application({"type": "websocket", "path": path}, s.receive, s.send))
                    for path, s in (("/a", open_one), ("/refuse", refused), ("/b", echoing))]
        echoing.incoming.put_nowait({"type": "websocket.receive", "text": "hi"})
        await asyncio.sleep(0.01)

        await application.close_websockets(timeout=5)

        assert all(handler.done() for handler in handlers)
        going = {"type": "websocket.close", "code": 1001, "reason": "going away"}
        assert open_one.sent == [{"type": "websocket.accept"}, going]
        assert echoing.sent == [{"type": "websocket.accept"}, {"type": "websocket.send", "text": "hi"}, going]
        assert refused.sent == [{"type": "websocket.close", "code": 1008}]  # never accepted: not closed again
        assert application.sessions == set()

    asyncio.run(scenario())


def test_what_the_app_sends_after_the_1001_is_dropped_and_http_passes_through(going_away):
    async def late_sender(scope, receive, send):
        if scope["type"] == "http":
            await send({"type": "http.response.start", "status": 204})
            return
        await receive()
        await send({"type": "websocket.accept"})
        await receive()  # the disconnect after djship's close
        await send({"type": "websocket.send", "text": "too late"})

    async def scenario():
        application = going_away(late_sender)
        socket = FakeSocket()
        handler = asyncio.ensure_future(application({"type": "websocket", "path": "/"}, socket.receive, socket.send))
        await asyncio.sleep(0.01)
        await application.close_websockets(timeout=5)
        await handler
        assert [message["type"] for message in socket.sent] == ["websocket.accept", "websocket.close"]

        http: list[dict] = []

        async def record(message):
            http.append(message)

        await application({"type": "http", "path": "/"}, None, record)
        assert http == [{"type": "http.response.start", "status": 204}]

    asyncio.run(scenario())

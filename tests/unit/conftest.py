"""Shared fixtures of the unit tests: a fake Tools, config and plan factories, the real tools, a startproject tree.

The factories are fixtures that return functions, so tests never import this module:

    def test_something(make_plan):
        plan = make_plan(app={"servers": 3}, running_as_root=True)

Keyword arguments that are dicts are merged into that djship.toml section (over the minimal [project]), other
keyword arguments (state_dir) are top-level keys.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from djship.config import Config
from djship.errors import DjshipError
from djship.plan import Plan, build_plans
from djship.tools import Tools
from djship.topology import local_spec, local_tools

REPO = Path(__file__).resolve().parents[2]
GOLDEN_DIR = REPO / "tests" / "golden"
# A project directory that need not exist: the plan resolves it without touching it, so rendered paths are stable.
GOLDEN_PROJECT_DIR = Path("/srv/example/board")
MINIMAL_PROJECT = {"settings_module": "board.settings", "wsgi_application": "board.wsgi.application"}
FAKE_TOOLS = Tools(
    nginx="/usr/sbin/nginx",
    haproxy="/usr/sbin/haproxy",
    pg_bindir="/usr/lib/postgresql/15/bin",
    mime_types="/etc/nginx/mime.types",
    python="/usr/bin/python3",
    pgbackrest="/usr/bin/pgbackrest",
    tls_curves=("X25519", "prime256v1", "secp384r1"),  # what Debian 12's HAProxy accepts (OpenSSL 3.0)
)


@pytest.fixture
def fake_tools() -> Tools:
    return FAKE_TOOLS


@pytest.fixture
def system_users() -> dict[str, str]:
    """[users] of accounts every Debian machine has, each with a group of its name, for the tests that run the real
    parsers: supervisord refuses a program whose user does not exist, nginx a `user` without its group."""
    return {"app": "daemon", "web": "www-data", "db": "bin", "lb": "sys"}


@pytest.fixture
def golden_dir() -> Path:
    return GOLDEN_DIR


@pytest.fixture
def matches_golden() -> Callable[[str, str], None]:
    """Asserts that text is tests/golden/<name> (DJSHIP_UPDATE_GOLDEN=1 writes it first)."""

    def check(name: str, text: str) -> None:
        golden = GOLDEN_DIR / name
        if os.environ.get("DJSHIP_UPDATE_GOLDEN") == "1":
            golden.write_text(text, encoding="utf-8")
        assert text == golden.read_text(encoding="utf-8"), f"{name} differs; regenerate with DJSHIP_UPDATE_GOLDEN=1"

    return check


@pytest.fixture
def pgbackrest_accepts(short_tmp) -> Callable[[str], None]:
    """Asserts that pgBackRest's own parser takes a rendered pgbackrest.conf without a warning."""

    def check(text: str) -> None:
        conf = short_tmp / "pgbackrest.conf"
        conf.write_text(text)
        result = subprocess.run([shutil.which("pgbackrest") or "pgbackrest", f"--config={conf}", "--stanza=main",
                                 "help", "archive-push"], capture_output=True, text=True, timeout=30)
        assert result.returncode == 0 and "WARN" not in result.stdout + result.stderr, result.stdout + result.stderr

    return check


@pytest.fixture
def make_config() -> Callable[..., Config]:
    def make(**overrides: object) -> Config:
        data: dict[str, object] = {"project": dict(MINIMAL_PROJECT)}
        for key, value in overrides.items():
            if isinstance(value, dict):
                data[key] = {**data.get(key, {}), **value}
            else:
                data[key] = value
        return Config.model_validate(data)

    return make


@pytest.fixture
def make_plan(make_config) -> Callable[..., Plan]:
    def make(
        project_dir: Path = GOLDEN_PROJECT_DIR,
        running_as_root: bool = False,
        tools: Tools = FAKE_TOOLS,
        **overrides: object,
    ) -> Plan:
        config = make_config(**overrides)
        spec = local_spec(config, project_dir, tools, running_as_root)
        return build_plans(config, project_dir, [spec])[spec.name]

    return make


@pytest.fixture
def golden_plan(make_plan) -> Plan:
    """The plan every golden file is rendered from: 2 app servers, as root, at a fixed project directory."""
    return make_plan(running_as_root=True, app={"servers": 2})


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """A temporary directory short enough for unix socket paths under it (pytest's own are too deep)."""
    with tempfile.TemporaryDirectory(dir="/tmp") as directory:
        yield Path(directory)


@pytest.fixture(scope="session")
def real_tools() -> Tools:
    """nginx, HAProxy and PostgreSQL as installed (with the TLS groups HAProxy accepts); a missing one fails the test
    with the command that installs it."""
    try:
        return local_tools()
    except DjshipError as error:
        pytest.fail(f"the real-tool tests need the tools djship drives: {error}")


@pytest.fixture
def django_project() -> Iterator[Path]:
    """A directory laid out as `django-admin startproject mysite` leaves it, plus requirements.txt; under a short
    path, so the unix sockets its plan puts under .djship/ fit (pytest's tmp_path is too deep for them)."""
    with tempfile.TemporaryDirectory(prefix="dj-", dir="/tmp") as directory:
        yield _startproject(Path(directory))


def _startproject(directory: Path) -> Path:
    root = directory / "mysite"
    package = root / "mysite"
    package.mkdir(parents=True)
    (root / "manage.py").write_text(textwrap.dedent('''\
        #!/usr/bin/env python
        """Django's command-line utility for administrative tasks."""
        import os
        import sys


        def main():
            os.environ.setdefault("DJANGO_SETTINGS_MODULE", "mysite.settings")
            from django.core.management import execute_from_command_line
            execute_from_command_line(sys.argv)


        if __name__ == "__main__":
            main()
        '''))
    (package / "__init__.py").write_text("")
    (package / "settings.py").write_text(textwrap.dedent("""\
        from pathlib import Path

        BASE_DIR = Path(__file__).resolve().parent.parent
        SECRET_KEY = "django-insecure-test"
        DEBUG = True
        ROOT_URLCONF = "mysite.urls"
        WSGI_APPLICATION = "mysite.wsgi.application"
        """))
    (package / "wsgi.py").write_text("application = None\n")
    (root / "requirements.txt").write_text("Django>=5.0\n")
    return root

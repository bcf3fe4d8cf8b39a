"""Shipping code once, against a real host that cannot reach any package registry.

The wheels for examples/board are built (or downloaded) here, once; the host, a network namespace of the test's
own with its own sshd and no route off the test bridge, gets them and the packed code over SSH and installs with
pip --no-index. Only the test host's address (10.247.x.y) is contacted over SSH; pip on this machine may use PyPI.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from djship.connectors.local import LocalConnector
from djship.connectors.ssh import SSHConnector, SSHTarget
from djship.deploy.shipping import (
    build_wheelhouse,
    ensure_venv,
    pack_code,
    require_python,
    unpack_code,
    upload_wheelhouse,
)
from tests.e2e.conftest import EXAMPLE
from tests.e2e.hosts import netns_hosts

pytestmark = pytest.mark.e2e

PACKAGES = ("gunicorn>=23", "psycopg[binary]>=3.1", "supervisor>=4.2")
EXCLUDE = ("__pycache__", "*.pyc", "db.sqlite3", "media", ".djship")
# A registry's address (PyPI's CDN); the host must have no route to it. Nothing is sent to it from this machine.
REGISTRY = ("151.101.0.223", 443)
INSTALLED = "import importlib.metadata as m; print(*(f\"{d.name}=={d.version}\" for d in m.distributions()))"


def host_python() -> str:
    """The host's Python: the system one when it is this Python's major.minor (as on Debian), else this one's base."""
    probe = "import sys; print(*sys.version_info[:2])"
    if Path("/usr/bin/python3").exists():
        system = subprocess.run(["/usr/bin/python3", "-c", probe], capture_output=True, text=True, check=False)
        if system.returncode == 0 and system.stdout.split() == [str(part) for part in sys.version_info[:2]]:
            return "/usr/bin/python3"
    return getattr(sys, "_base_executable", sys.executable)


def test_code_built_once_here_installs_on_a_host_with_no_registry(tmp_path):
    cache, log = tmp_path / "wheel-cache", tmp_path / "logs" / "wheels.log"
    wheelhouse = build_wheelhouse(
        EXAMPLE / "requirements.txt", PACKAGES, sys.executable, cache, LocalConnector(), log
    )
    wheels = [wheel.name for wheel in wheelhouse.wheels]
    assert {name.split("-")[0] for name in wheels} >= {"django", "gunicorn", "psycopg", "psycopg_binary", "supervisor"}
    assert build_wheelhouse(EXAMPLE / "requirements.txt", PACKAGES, sys.executable, cache, LocalConnector(), log) == (
        wheelhouse
    )
    archive = pack_code(EXAMPLE, EXCLUDE, EXAMPLE / ".djship")
    python = host_python()

    with netns_hosts(["app1"]) as hosts:
        app1 = hosts["app1"]
        target = SSHTarget(app1.address, key_file=hosts.client_key, known_hosts=hosts.known_hosts)
        with SSHConnector(target) as host:
            offline = host.run([python, "-c", f"import socket; socket.create_connection({REGISTRY!r}, timeout=3)"])
            assert not offline.ok and "unreachable" in offline.stderr

            require_python(host, python, wheelhouse)
            remote_wheels = app1.root / "wheels"
            shipped = upload_wheelhouse(host, wheelhouse, remote_wheels, python)
            assert shipped.copied == len(wheels) > 0

            app = app1.root / "releases" / "r1" / "app"
            unpack_code(host, archive, app, owner="nobody")
            venv = app1.root / "venvs" / "v1"
            assert ensure_venv(host, python, venv, shipped, app / "requirements.txt", PACKAGES) is True

            imported = host.run([
                str(venv / "bin" / "python"), "-c",
                "import django, gunicorn, psycopg, supervisor, PIL; print(psycopg.pq.__impl__)",
            ], cwd=app)
            assert (imported.returncode, imported.stdout, imported.stderr) == (0, "binary\n", "")
            listed = host.run([str(venv / "bin" / "python"), "-c", INSTALLED]).stdout
            installed = {line.partition("==")[0].lower().replace("-", "_"): line.partition("==")[2]
                         for line in listed.split()}
            assert "pip" not in installed  # the wheelhouse's pip installed, from beside the venv
            for name in wheels:  # every host runs exactly the files built here
                project, version = name.split("-")[:2]
                assert project == "pip" or installed.get(project.lower()) == version, name

            shipped = upload_wheelhouse(host, wheelhouse, remote_wheels, python)
            assert shipped.copied == 0
            assert ensure_venv(host, python, venv, shipped, app / "requirements.txt", PACKAGES) is False

        # The test hosts share this machine's file system: the code on the host is the example's, owned by nobody.
        assert (app / "manage.py").read_bytes() == (EXAMPLE / "manage.py").read_bytes()
        assert (app / "manage.py").owner() == "nobody"
        assert not list(app.parent.glob(".*djship-tmp"))

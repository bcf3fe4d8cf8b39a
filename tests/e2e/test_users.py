"""A user per component (issue 11), written once and run on both topologies: one machine and netns hosts (lb1, app1,
db1, each its own sshd and state root; see tests/e2e/hosts.py).

As root: every process of each component runs as its own user. Everything the app must not touch is tried as the
user its gunicorn runs as (`runuser -u djship-app --`, on the app host): the superuser password, the site key, the CA
key, pg_hba.conf, the balancer's runtime socket and each supervisor's socket can be neither read nor written (EACCES),
while the app's own secrets can be read; and the app's database role can neither create a role nor connect to
another database. The netns hosts share this machine's file system, so the files of the lb and
db hosts are tried at their own paths; the database is reached from the app host's namespace, as the app reaches it.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from djship.tools import find_tools
from tests.e2e.conftest import EXAMPLE, Ports, run_djship, running_site, searchable_directory
from tests.e2e.hosts import netns_hosts
from tests.e2e.test_remote_system import write_config

pytestmark = [pytest.mark.e2e, pytest.mark.skipif(os.geteuid() != 0, reason="the components get users of their own "
                                                                           "only when djship runs as root")]

USERS_PORTS = Ports.of(https=26443, http=26080, database=16432, app_prefix="127.0.91", database_address="127.0.92.1")
HOSTS = ["lb1", "app1", "db1"]
ONE_MACHINE, ON_HOSTS = "one machine", "netns hosts"
# Run as the app's user with the paths to try: {path: [errno name or "ok" of reading it, of writing it]}. A socket
# (a path ending in .sock) is read and written by connecting to it.
TRY_ACCESS = """
import errno, json, socket, sys
def attempt(action):
    try:
        action()
        return "ok"
    except OSError as error:
        return errno.errorcode[error.errno]
def connect(path):
    with socket.socket(socket.AF_UNIX) as client:
        client.connect(path)
result = {}
for path in sys.argv[1:]:
    if path.endswith(".sock"):
        result[path] = [attempt(lambda: connect(path))] * 2
    else:
        result[path] = [attempt(lambda: open(path, "rb").close()), attempt(lambda: open(path, "ab").close())]
print(json.dumps(result))
"""


@dataclass
class System:
    """A running system: the project here, the state root of the host holding each role, and the network namespace
    of the app host (None on one machine)."""

    project: Path
    roots: dict[str, Path]
    """By role: "lb", "app", "db"."""
    app_namespace: str | None

    def as_app_user(self, *argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        """argv on the app host as the user the app's gunicorn runs as."""
        app_user = user_of(next(c for name, c in self.components().items() if name.endswith("-gunicorn"))["pid"])
        assert app_user == "djship-app"
        where = ["ip", "netns", "exec", self.app_namespace] if self.app_namespace else []
        return subprocess.run([*where, "runuser", "-u", app_user, "--", *argv], capture_output=True, text=True,
                              env={**os.environ, **(env or {})}, timeout=60)

    def components(self) -> dict[str, dict]:
        report = json.loads(run_djship(self.project, "status", "--json").stdout)
        return {component["name"]: component for component in report["components"]}

    def database_endpoint(self) -> tuple[str, str]:
        address, port = self.components()["postgres"]["address"].rsplit(":", 1)
        return address, port


def user_of(pid: int) -> str:
    return pwd.getpwuid(os.stat(f"/proc/{pid}").st_uid).pw_name


def children_of(pid: int) -> list[int]:
    """Every descendant of pid (the netns hosts share this machine's process table)."""
    parents = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    found, frontier = [], [pid]
    while frontier:
        frontier = [child for child, parent in parents.items() if parent in frontier]
        found += frontier
    return found


@pytest.fixture(scope="module", params=[ONE_MACHINE, ON_HOSTS])
def system(request) -> Iterator[System]:
    if request.param == ONE_MACHINE:
        with running_site(USERS_PORTS) as site:
            state = site.project / ".djship"
            yield System(site.project, {"lb": state, "app": state, "db": state}, None)
        return
    with netns_hosts(HOSTS) as hosts, searchable_directory() as directory:
        project = directory / "board"
        shutil.copytree(EXAMPLE, project, ignore=shutil.ignore_patterns("__pycache__", "db.sqlite3", "media", ".djship"))
        write_config(project, hosts, ["app1"])
        try:
            run_djship(project, "up", timeout=900)
            yield System(project, {"lb": hosts["lb1"].root, "app": hosts["app1"].root, "db": hosts["db1"].root},
                         hosts["app1"].namespace)
        finally:
            run_djship(project, "down", check=False, timeout=300)


def test_each_component_runs_as_its_own_user(system: System):
    components = system.components()
    for name, component in components.items():
        pid = component["pid"]
        workers = {user_of(child) for child in children_of(pid)}
        if name == "postgres":
            assert {user_of(pid), *workers} == {"djship-db"}
        elif name == "haproxy":  # its master is root's where it binds 443 and 80 (on the hosts)
            assert workers == {"djship-lb"} and user_of(pid) in ("djship-lb", "root")
        elif name.endswith("-gunicorn"):
            assert {user_of(pid), *workers} == {"djship-app"}
        elif name.endswith("-nginx"):  # the master reads its config and opens its port and logs; workers serve
            assert (user_of(pid), workers) == ("root", {"djship-web"})
    assert {"postgres", "haproxy"} <= set(components) and len(components) >= 4


def test_the_app_user_can_neither_read_nor_write_what_is_not_its_own(system: System):
    lb, app, db = system.roots["lb"], system.roots["app"], system.roots["db"]
    forbidden = [
        db / "secrets" / "admin.json",  # the PostgreSQL superuser's password
        db / "secrets" / "pgpass",
        lb / "tls" / "site.pem",  # the site's private key
        system.project / ".djship" / "tls" / "ca.key",  # djship's CA key, here and kept on the lb host
        lb / "tls" / "ca.key",
        db / "postgres" / "data" / "pg_hba.conf",
        db / "postgres" / "data" / "postgresql.conf",
        lb / "balancer" / "haproxy.sock",  # HAProxy's runtime API, level admin
        # Each host's supervisord, which starts programs as root.
        *(root / "supervisor" / "supervisor.sock" for root in sorted(set(system.roots.values()))),
    ]
    own = app / "secrets" / "app.json"
    assert all(path.exists() for path in [*forbidden, own]), [str(p) for p in forbidden if not p.exists()]
    before = {path: path.read_bytes() for path in forbidden if path.is_file()}

    tried = system.as_app_user("/usr/bin/python3", "-c", TRY_ACCESS, str(own), *map(str, forbidden))

    assert tried.returncode == 0, tried.stderr
    outcome = json.loads(tried.stdout)
    assert outcome.pop(str(own))[0] == "ok"  # its own secrets it reads
    assert outcome == {str(path): ["EACCES", "EACCES"] for path in forbidden}
    assert {path: path.read_bytes() for path in before} == before


def test_the_app_role_can_neither_create_a_role_nor_reach_another_database(system: System):
    secrets = json.loads((system.project / ".djship" / "secrets" / "app.json").read_text())
    address, port = system.database_endpoint()
    psql = find_tools().pg("psql")

    def as_app_role(database: str, sql: str) -> subprocess.CompletedProcess:
        return system.as_app_user(
            psql, "-X", "-tA", "-v", "ON_ERROR_STOP=1", "-h", address, "-p", port, "-U", "board", "-d", database,
            "-c", sql, env={"PGPASSWORD": secrets["database_password"], "PGCONNECT_TIMEOUT": "10"})

    own = as_app_role("board", "SELECT current_user")
    assert (own.returncode, own.stdout.strip()) == (0, "board"), own.stderr

    role = as_app_role("board", "CREATE ROLE djship_intruder LOGIN")
    assert role.returncode != 0 and "permission denied to create role" in role.stderr, role.stdout + role.stderr
    for other in ("postgres", "template1"):
        reached = as_app_role(other, "SELECT 1")
        assert reached.returncode != 0, f"the app's role connected to {other}"
        assert f'permission denied for database "{other}"' in reached.stderr, reached.stderr

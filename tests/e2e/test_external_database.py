"""An external PostgreSQL (database.url): a server djship does not run, as RDS or a DBA's cluster would be.

Hosts are network namespaces (10.247.x.y) the fixture makes and deletes: lb1 (the balancer, and the uploads the two
app hosts share), app1, app2, and pg1, where the TEST runs PostgreSQL itself, not through djship: its own initdb and
data directory, as an unprivileged user (nobody), `hostssl` only in pg_hba.conf, its certificate signed by a CA the
test makes with openssl. The app's role and database are made by the test, as a DBA would (no admin credentials in
djship.toml). A second PostgreSQL on pg1 offers plaintext only. Both are stopped by PID at the end.

Before the real `up`, the same project is brought up against a wrong CA bundle, the plaintext-only server, a port
where nothing listens and a server whose max_connections is too small for the app servers: each is one line, and
nothing starts on any host.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from djship.tools import _pg_bindir
from tests.e2e.conftest import DJSHIP, EXAMPLE, run_djship, searchable_directory
from tests.e2e.hosts import NetnsHosts, netns_hosts
from tests.e2e.test_backup import CREATE_POSTS
from tests.e2e.test_remote_system import Fleet, FleetLoop, deploy_under_load

pytestmark = pytest.mark.e2e

HOSTS = ["lb1", "app1", "app2", "pg1"]
DJSHIP_HOSTS = ["lb1", "app1", "app2"]
TLS_PORT, PLAIN_PORT, CLOSED_PORT = 5432, 5433, 5439
# A password with what a PGPASSFILE line must escape.
APP_PASSWORD = "s3cret:with\\colon"
SUPERUSER_PASSWORD = "test-superuser"
RUNS_AS = "nobody"
BIN = Path(_pg_bindir() or "/usr/lib/postgresql/15/bin")


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_ca(directory: Path, name: str) -> None:
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout",
             f"{name}.key", "-out", f"{name}.crt", "-days", "2", "-subj", f"/CN={name}", cwd=directory)


def make_server_certificate(directory: Path, address: str) -> None:
    """server.crt for the address (an IP entry: libpq's verify-full matches it), signed by ca.crt."""
    (directory / "san.ext").write_text(f"subjectAltName=IP:{address}\n")
    _openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", "server.key",
             "-out", "server.csr", "-subj", f"/CN={address}", cwd=directory)
    _openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial", "-out",
             "server.crt", "-days", "2", "-extfile", "san.ext", cwd=directory)


def _as_unprivileged(*argv: str) -> list[str]:
    return ["setpriv", f"--reuid={RUNS_AS}", f"--regid={pwd.getpwnam(RUNS_AS).pw_gid}", "--clear-groups", *argv]


@dataclass
class OwnServer:
    """A PostgreSQL the test runs in pg1's namespace (never djship): its postmaster's PID, stopped by it."""

    process: subprocess.Popen
    data: Path
    port: int

    def postmaster_children(self) -> set[int]:
        children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
        return {int(pid) for pid in children.read_text().split()} if children.exists() else set()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)  # fast shutdown
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


def start_postgres(hosts: NetnsHosts, directory: Path, port: int, tls: bool) -> OwnServer:
    data = directory / f"data-{port}"
    data.mkdir(mode=0o700)
    os.chown(data, pwd.getpwnam(RUNS_AS).pw_uid, pwd.getpwnam(RUNS_AS).pw_gid)
    password_file = directory / f"pw-{port}"
    password_file.write_text(SUPERUSER_PASSWORD + "\n")
    os.chown(password_file, pwd.getpwnam(RUNS_AS).pw_uid, -1)
    subprocess.run(_as_unprivileged(str(BIN / "initdb"), "-D", str(data), "-U", "postgres", "--pwfile",
                                    str(password_file), "--auth=scram-sha-256", "--locale=C", "--encoding=UTF8"),
                   check=True, capture_output=True)
    settings = [f"listen_addresses = '{hosts['pg1'].address}'", f"port = {port}", "max_connections = 50",
                f"unix_socket_directories = '{data}'"]
    if tls:
        for name in ("server.crt", "server.key"):
            shutil.copy(directory / name, data / name)
            os.chown(data / name, pwd.getpwnam(RUNS_AS).pw_uid, -1)
        (data / "server.key").chmod(0o600)
        settings += ["ssl = on", "ssl_cert_file = 'server.crt'", "ssl_key_file = 'server.key'"]
        hba = "hostssl all all 0.0.0.0/0 scram-sha-256\n"
    else:
        hba = "hostnossl all all 0.0.0.0/0 scram-sha-256\n"
    with (data / "postgresql.conf").open("a") as conf:
        conf.write("\n".join(settings) + "\n")
    (data / "pg_hba.conf").write_text(hba)
    process = subprocess.Popen(["ip", "netns", "exec", hosts["pg1"].namespace,
                                *_as_unprivileged(str(BIN / "postgres"), "-D", str(data))],
                               stdout=subprocess.DEVNULL, stderr=open(directory / f"postgres-{port}.log", "w"))
    server = OwnServer(process, data, port)
    deadline = time.monotonic() + 30
    while subprocess.run([str(BIN / "pg_isready"), "-h", hosts["pg1"].address, "-p", str(port), "-t", "1"],
                         capture_output=True).returncode != 0:
        if time.monotonic() > deadline or process.poll() is not None:
            server.stop()
            raise AssertionError((directory / f"postgres-{port}.log").read_text())
        time.sleep(0.2)
    return server


def superuser_psql(hosts: NetnsHosts, directory: Path, sql: str, database: str = "postgres") -> str:
    """The test's own administration of the TLS server, as its DBA (over hostssl, verified like djship does)."""
    env = {**os.environ, "PGPASSWORD": SUPERUSER_PASSWORD, "PGSSLMODE": "verify-full",
           "PGSSLROOTCERT": str(directory / "ca.crt")}
    result = subprocess.run([str(BIN / "psql"), "-X", "-tA", "-v", "ON_ERROR_STOP=1", "-h", hosts["pg1"].address,
                             "-p", str(TLS_PORT), "-U", "postgres", "-d", database, "-c", sql],
                            env=env, capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def write_config(project: Path, hosts: NetnsHosts, port: int, bundle: str, workers: int = 2) -> None:
    lines = [
        "[project]", 'settings_module = "board.settings"', 'wsgi_application = "board.wsgi.application"', "",
        "[app]", f"workers = {workers}", "",
        "[database]", f'url = "postgresql://board@{hosts["pg1"].address}:{port}/board"', f'ca_bundle = "{bundle}"', "",
        "[servers]", 'lb = ["lb1"]', 'app = ["app1", "app2"]', 'media = "lb1"', "",
        "[ssh]", f'key = "{hosts.client_key}"', f'known_hosts = "{hosts.known_hosts}"', "",
        *hosts.users_toml,
    ]
    for name in DJSHIP_HOSTS:
        lines += ["", f"[hosts.{name}]", f'address = "{hosts[name].address}"', f'root = "{hosts[name].root}"']
    (project / "djship.toml").write_text("\n".join(lines) + "\n")


def djship_processes(fleet: Fleet) -> dict[str, list[str]]:
    """What runs on each of djship's hosts besides the test harness's sshd."""
    return {name: [command for command in fleet.programs_on(name) if "sshd" not in command]
            for name in DJSHIP_HOSTS}


def postgres_processes(fleet: Fleet, servers: list[OwnServer]) -> dict[str, list[str]]:
    """Every postgres process on every host that is not one of the test's own servers or their backends."""
    ours = {pid for server in servers for pid in (server.process.pid, *server.postmaster_children())}
    found: dict[str, list[str]] = {}
    for name in HOSTS:
        for pid in fleet.hosts[name].pids():
            try:
                command = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
                parent = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            program = os.path.basename(command[0].decode())
            if (program == "postgres" or program.startswith("postgres:")) and pid not in ours and parent not in ours:
                found.setdefault(name, []).append(b" ".join(command).decode())
    return found


@dataclass
class Refused:
    result: subprocess.CompletedProcess
    running: dict[str, list[str]]
    """djship's hosts' processes right after (none expected)."""


@dataclass
class System:
    fleet: Fleet
    servers: list[OwnServer]
    directory: Path
    refused: dict[str, Refused]


def keep_password(project: Path, password: str) -> None:
    subprocess.run([*DJSHIP, "db", "password"], cwd=project, input=password, text=True, check=True,
                   capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def system():
    with netns_hosts(HOSTS) as hosts, searchable_directory() as directory:
        servers: list[OwnServer] = []
        project = directory / "board"
        fleet = Fleet(project, hosts)
        try:
            shutil.copytree(EXAMPLE, project, ignore=shutil.ignore_patterns("__pycache__", "db.sqlite3", "media",
                                                                            ".djship"))
            make_ca(directory, "ca")
            make_ca(directory, "other-ca")
            make_server_certificate(directory, hosts["pg1"].address)
            shutil.copy(directory / "ca.crt", project / "db-ca.pem")
            shutil.copy(directory / "other-ca.crt", project / "wrong-ca.pem")
            servers.append(start_postgres(hosts, directory, TLS_PORT, tls=True))
            servers.append(start_postgres(hosts, directory, PLAIN_PORT, tls=False))
            quoted = APP_PASSWORD.replace("'", "''")
            superuser_psql(hosts, directory, f"CREATE ROLE board LOGIN CREATEDB PASSWORD '{quoted}'")
            superuser_psql(hosts, directory, "CREATE DATABASE board OWNER board")

            refused = {}
            for case, port, bundle, workers in (("wrong CA", TLS_PORT, "wrong-ca.pem", 2),
                                                ("plaintext only", PLAIN_PORT, "db-ca.pem", 2),
                                                ("unreachable", CLOSED_PORT, "db-ca.pem", 2),
                                                ("too few connections", TLS_PORT, "db-ca.pem", 30)):
                write_config(project, hosts, port, bundle, workers)
                keep_password(project, APP_PASSWORD if port == TLS_PORT else SUPERUSER_PASSWORD)
                result = run_djship(project, "up", check=False, timeout=300)
                refused[case] = Refused(result, djship_processes(fleet))
            write_config(project, hosts, TLS_PORT, "db-ca.pem")
            keep_password(project, APP_PASSWORD)
            fleet.djship("up")
            yield System(fleet, servers, directory, refused)
        finally:
            run_djship(project, "down", check=False, timeout=300)
            for server in servers:
                server.stop()


@pytest.mark.parametrize("case, says", [
    ("wrong CA", "has a certificate database.ca_bundle does not verify"),
    ("plaintext only", "refuses TLS"),
    ("unreachable", "cannot reach PostgreSQL at"),
    ("too few connections", "has max_connections = 50"),
])
def test_a_server_that_cannot_be_used_is_one_line_and_nothing_starts(system: System, case: str, says: str):
    refused = system.refused[case]
    lines = refused.result.stderr.strip().splitlines()
    assert refused.result.returncode == 1 and len(lines) == 1 and says in lines[0], refused.result.stderr
    assert "Traceback" not in refused.result.stderr + refused.result.stdout
    assert refused.running == {name: [] for name in DJSHIP_HOSTS}


def test_up_runs_the_app_on_the_external_database_over_verified_tls(system: System):
    fleet = system.fleet
    assert fleet.servers_answering(10)
    database = next(c for c in fleet.status()["components"] if c["role"] == "database")
    assert database["state"] == "EXTERNAL" and database["health"] == "accepting" and database["pid"] is None
    # Every connection of the app's role is encrypted (the server accepts nothing else, and says so).
    connections = superuser_psql(fleet.hosts, system.directory,
                                 "SELECT count(*), bool_and(ssl) FROM pg_stat_ssl JOIN pg_stat_activity USING (pid) "
                                 "WHERE usename = 'board'")
    count, encrypted = connections.split("|")
    assert int(count) > 0 and encrypted == "t"
    # The password is a secret: never in djship.toml, 0600 here and on the app hosts.
    assert APP_PASSWORD not in (fleet.project / "djship.toml").read_text()
    kept = fleet.project / ".djship" / "secrets" / "database.json"
    assert json.loads(kept.read_text())["password"] == APP_PASSWORD and kept.stat().st_mode & 0o777 == 0o600
    for name in ("app1", "app2"):
        app_json = fleet.hosts[name].root / "secrets" / "app.json"
        assert app_json.stat().st_mode & 0o777 == 0o600
        assert json.loads(app_json.read_text())["database_password"] == APP_PASSWORD


def test_a_deploy_fails_no_request(system: System):
    load = deploy_under_load(system.fleet, "a deploy against the external database")
    assert load.failures == []


def _titles(fleet: Fleet) -> set[str]:
    return {post["title"] for post in json.loads(fleet.get("/api/posts/").body)["posts"]}


def test_backup_then_restore_into_a_new_database_on_that_server_fails_no_request(system: System):
    fleet = system.fleet
    fleet.djship("manage", "--", "shell", "-c", CREATE_POSTS.format(titles=["before the backup"]))
    at_backup = _titles(fleet)
    backed_up = fleet.djship("backup")
    assert "Backed up" in backed_up.stdout, backed_up.stdout
    [entry] = json.loads(fleet.djship("backups", "--json").stdout)
    fleet.djship("manage", "--", "shell", "-c", CREATE_POSTS.format(titles=["after the backup"]))
    assert _titles(fleet) != at_backup

    with FleetLoop(fleet) as load:
        restored = fleet.djship("restore", entry["name"], "--yes")
        load.wait_for(load.served + 50)
    assert load.failures == [] and "Restored" in restored.stdout, restored.stdout
    assert _titles(fleet) == at_backup
    live = fleet.status()["database"]
    assert live.startswith("board_")
    # The new database is on the external server, owned by the app's role; the previous one is kept.
    owned = superuser_psql(fleet.hosts, system.directory,
                           "SELECT string_agg(datname, ',' ORDER BY datname) FROM pg_database "
                           "WHERE datdba = (SELECT oid FROM pg_roles WHERE rolname = 'board')")
    assert owned.split(",") == ["board", live]
    listed = {row["name"]: row for row in json.loads(fleet.djship("databases", "--json").stdout)}
    assert set(listed) == {"board", live}
    fleet.djship("drop-database", "board", "--yes")
    assert [row["name"] for row in json.loads(fleet.djship("databases", "--json").stdout)] == [live]
    # database.url's own database is gone: djship goes by the live one (its check before `up`, its administration).
    assert "Already up and unchanged" in fleet.djship("up").stdout


def test_the_doctor_checks_the_connection_budget_against_the_servers_own_max_connections(system: System):
    report = json.loads(system.fleet.djship("doctor", "--json", check=False).stdout)
    checks = {check["id"]: check for check in report["checks"]}
    assert checks["connections"]["status"] == "pass" and "max_connections 50" in checks["connections"]["cause"]


def test_djship_started_no_postgres_on_any_host(system: System):
    assert postgres_processes(system.fleet, system.servers) == {}
    for name in DJSHIP_HOSTS:
        assert not (system.fleet.hosts[name].root / "postgres").exists()

"""The example project on real hosts: 1 lb + 3 app + 1 db, each a network namespace with its own sshd.

Only loopback and those hosts' addresses (10.247.x.y, in namespaces the fixture makes and deletes) are contacted.
Every process djship starts on a host lives in that host's namespace; the harness kills them all by PID on exit.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest

from djship.components.probe import Response, request
from tests.e2e.conftest import DJSHIP, EXAMPLE, RequestLoop, run_djship, searchable_directory
from tests.e2e.hosts import NetnsHosts, netns_hosts

pytestmark = pytest.mark.e2e

ROLES = {"lb1": "lb", "app1": "app", "app2": "app", "app3": "app", "db1": "db"}
DATABASE_PORT = 15432


def write_config(project: Path, hosts: NetnsHosts, apps: list[str]) -> None:
    lines = [
        "[project]",
        'settings_module = "board.settings"',
        'wsgi_application = "board.wsgi.application"',
        "",
        "[app]",
        "workers = 2",
        "",
        "[servers]",
        'lb = ["lb1"]',
        f"app = {json.dumps(apps)}",
        'db = "db1"',
        "",
        "[ssh]",
        f'key = "{hosts.client_key}"',
        f'known_hosts = "{hosts.known_hosts}"',
        "",
        *hosts.users_toml,
    ]
    for name in ["lb1", *apps, "db1"]:
        lines += ["", f"[hosts.{name}]", f'address = "{hosts[name].address}"', f'root = "{hosts[name].root}"']
    (project / "djship.toml").write_text("\n".join(lines) + "\n")


@dataclass
class Fleet:
    project: Path
    hosts: NetnsHosts

    @property
    def lb(self) -> str:
        return self.hosts["lb1"].address

    @property
    def url(self) -> str:
        return f"https://{self.lb}"

    def session(self) -> None:
        """The request loop's session: none, as FleetLoop connects to the balancer host itself."""

    def programs_on(self, host: str) -> list[str]:
        commands = []
        for pid in self.hosts[host].pids():
            try:
                commands.append(Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode())
            except OSError:
                pass
        return commands

    @property
    def ca(self) -> Path:
        return self.project / ".djship" / "tls" / "ca.crt"

    def djship(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return run_djship(self.project, *args, check=check, timeout=900)

    def get(self, path: str = "/api/posts/") -> Response | str:
        """Through the balancer host, the certificate verified against djship's CA for the site's name."""
        return request(self.lb, 443, "localhost", "GET", path, tls_name="localhost", ca_file=self.ca, timeout=30)

    def servers_answering(self, count: int = 30) -> Counter[str]:
        seen: Counter[str] = Counter()
        for _ in range(count):
            answer = self.get()
            assert isinstance(answer, Response) and answer.status == 200, answer
            seen[answer.header("X-Djship-Server")] += 1
        return seen

    def status(self) -> dict:
        return json.loads(self.djship("status", "--json").stdout)

    def in_namespace(self, host: str, *argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        prefix = ["ip", "netns", "exec", self.hosts[host].namespace]
        if env:
            prefix += ["env", *(f"{key}={value}" for key, value in env.items())]
        return subprocess.run([*prefix, *argv], capture_output=True, text=True, timeout=60)


class FleetLoop(RequestLoop):
    """The tests' request loop, through the balancer host."""

    def __init__(self, fleet: Fleet, threads: int = 4):
        self.fleet = fleet
        super().__init__(fleet, threads=threads)  # type: ignore[arg-type]

    def _get(self, session) -> tuple[str | None, str | None]:
        answer = self.fleet.get()
        if isinstance(answer, str):
            return answer, None
        if answer.status != 200:
            return f"HTTP {answer.status}", None
        return None, answer.header("X-Djship-Release") or "?"


def deploy_under_load(target, note: str) -> FleetLoop:
    """`djship deploy` of a one-line code change while 4 threads of requests run through target's balancer; the
    request loop, for its counts."""
    views = target.project / "posts" / "views.py"
    original = views.read_text()
    views.write_text(original + f"\n# {note}\n")
    try:
        with FleetLoop(target) as load:
            served = load.served
            said = target.djship("deploy").stdout
            during = load.served - served
            load.wait_for(load.served + 30)
    finally:
        views.write_text(original)
    # The balancers' own count of what they answered while the deploy ran (after djship's start, which this loop's
    # count includes): this loop is their only client, so no more than it got, give or take its threads in flight.
    counted = re.search(r"([\d,]+) requests during the deploy, (\d+) failed", said)
    assert counted, said
    assert 0 < int(counted[1].replace(",", "")) <= during + 8 and counted[2] == "0", (said, during)
    return load


@pytest.fixture(scope="module")
def fleet():
    with netns_hosts(list(ROLES)) as hosts, searchable_directory() as directory:
        project = directory / "board"
        shutil.copytree(EXAMPLE, project, ignore=shutil.ignore_patterns("__pycache__", "db.sqlite3", "media", ".djship"))
        write_config(project, hosts, ["app1", "app2", "app3"])
        made = Fleet(project, hosts)
        try:
            made.djship("up")
            yield made
        finally:
            run_djship(project, "down", check=False, timeout=300)


def test_the_site_answers_over_https_through_the_balancer_host_from_every_app_host(fleet: Fleet):
    assert set(fleet.servers_answering()) == {"app1", "app2", "app3"}
    static = fleet.get("/static/css/board.css")
    assert isinstance(static, Response) and static.status == 200
    assert fleet.get("/").header("Strict-Transport-Security")


def test_status_names_every_host_and_component(fleet: Fleet):
    report = fleet.status()
    by_name = {component["name"]: component for component in report["components"]}
    assert by_name["haproxy"]["host"] == "lb1" and by_name["postgres"]["host"] == "db1"
    for app in ("app1", "app2", "app3"):
        for program in (f"{app}-nginx", f"{app}-gunicorn"):
            assert by_name[program]["host"] == app
            assert (by_name[program]["state"], by_name[program]["health"]) == ("RUNNING", "up")
    assert by_name["postgres"]["health"] == "accepting"
    assert [host["name"] for host in report["hosts"]] == list(ROLES)


def test_logs_come_from_every_host_prefixed(fleet: Fleet):
    output = fleet.djship("logs", "-n", "5").stdout
    prefixes = {line.split(" ", 1)[0] for line in output.splitlines() if " | " in line}
    assert prefixes >= set(ROLES)


def test_logs_follow_streams_new_lines_from_the_host(fleet: Fleet):
    errors = fleet.project / "logs-follow.err"
    follower = subprocess.Popen([*DJSHIP, "logs", "-f", "-n", "0", "app1"], cwd=fleet.project,
                                stdout=subprocess.PIPE, stderr=errors.open("w"), text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(follower.stdout), daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 60
        while not any("followed" in line for line in lines):  # until tail follows (djship starts slowly on a busy machine)
            assert time.monotonic() < deadline, f"no followed line in {lines}; stderr: {errors.read_text()}"
            for _ in range(3):  # round robin over three app hosts: app1 gets one
                fleet.get("/api/posts/?followed")
            time.sleep(0.5)
        assert all(line.startswith("app1 app1-nginx-access | ") for line in lines if "followed" in line)
    finally:
        follower.kill()
        follower.wait(timeout=10)


def test_manage_runs_in_the_live_release_on_an_app_host(fleet: Fleet):
    result = fleet.djship("manage", "--", "shell", "-c", "from django.conf import settings; "
                          "print(settings.DATABASES['default']['HOST'], settings.DEBUG)")
    assert result.stdout.strip().splitlines()[-1].split() == [fleet.hosts["db1"].address, "False"]
    failed = fleet.djship("manage", "--", "nosuchcommand", check=False)
    assert failed.returncode == 1 and "Unknown command: 'nosuchcommand'" in failed.stdout


def test_manage_in_a_terminal_gets_one_on_the_host_too(fleet: Fleet):
    command = f"{' '.join(DJSHIP)} manage -- shell -c 'import sys; print(sys.stdin.isatty(), 4242 * 2)'"
    result = subprocess.run(["script", "-qec", command, "/dev/null"], cwd=fleet.project, capture_output=True, stdin=subprocess.DEVNULL,
                            text=True, timeout=120)  # script(1) gives djship a terminal, as a person's shell would
    assert result.returncode == 0 and "True 8484" in result.stdout, result.stdout + result.stderr


def test_the_database_accepts_the_app_hosts_only(fleet: Fleet):
    secrets = json.loads((fleet.project / ".djship" / "secrets" / "app.json").read_text())
    psql = shutil.which("psql") or "psql"
    db = fleet.hosts["db1"].address
    argv = [psql, "-X", "-h", db, "-p", str(DATABASE_PORT), "-U", "board", "-d", "board", "-tAc", "SELECT 1"]
    env = {"PGPASSWORD": secrets["database_password"], "PGCONNECT_TIMEOUT": "5"}
    from_app = fleet.in_namespace("app2", *argv, env=env)
    assert from_app.returncode == 0 and from_app.stdout.strip() == "1", from_app.stderr
    from_lb = fleet.in_namespace("lb1", *argv, env=env)
    assert from_lb.returncode != 0
    assert f'no pg_hba.conf entry for host "{fleet.lb}"' in from_lb.stderr


# A GET of argv[1] (the app server's health check, as the balancer sends it) over HTTPS verified against the CA file
# argv[2]; prints the HTTP status, or the error.
APP_SERVER_PROBE = (
    "import ssl, sys, urllib.request, urllib.error\n"
    "ask = urllib.request.Request(sys.argv[1], headers={'Host': 'localhost', 'X-Forwarded-Proto': 'https'})\n"
    "try:\n    print(urllib.request.urlopen(ask, timeout=5, context=ssl.create_default_context(cafile=sys.argv[2])).status)\n"
    "except urllib.error.HTTPError as error:\n    print(error.code)\n"
    "except OSError as error:\n    print(error)"
)


def test_app_servers_accept_requests_from_the_balancer_only(fleet: Fleet):
    probe = ["python3", "-c", APP_SERVER_PROBE, f"https://{fleet.hosts['app1'].address}:8000/-/djship/health",
             str(fleet.ca)]
    assert fleet.in_namespace("db1", *probe).stdout.strip() == "403"
    assert fleet.in_namespace("app2", *probe).stdout.strip() == "403"
    assert fleet.in_namespace("lb1", *probe).stdout.strip() == "200"


def test_the_balancer_reaches_every_app_server_over_tls_verified_against_djships_ca(fleet: Fleet):
    ca = fleet.hosts["lb1"].root / "tls" / "ca.crt"  # the CA HAProxy verifies with, on the lb host
    assert ca.read_bytes() == fleet.ca.read_bytes()
    haproxy = (fleet.hosts["lb1"].root / "balancer" / "haproxy.cfg").read_text()
    for app in ("app1", "app2", "app3"):
        address = fleet.hosts[app].address
        assert f"server {app} {address}:8000 ssl verify required ca-file '{ca}' verifyhost {address}\n" in haproxy
        handshake = fleet.in_namespace("lb1", "openssl", "s_client", "-connect", f"{address}:8000", "-brief",
                                       "-CAfile", str(ca), "-verify_ip", address, "-verify_return_error")
        assert handshake.returncode == 0, handshake.stderr
        assert "Verification: OK" in handshake.stderr and "Protocol version: TLSv1.3" in handshake.stderr, handshake.stderr
        stranger = fleet.in_namespace("lb1", "openssl", "s_client", "-connect", f"{address}:8000", "-brief",
                                      "-CAfile", "/etc/ssl/certs/ca-certificates.crt", "-verify_return_error")
        assert stranger.returncode != 0 and "verify error" in stranger.stderr, stranger.stderr
    # HAProxy's own health checks, over those verified connections, see every app server UP.
    states = {c["name"]: c["health"] for c in fleet.status()["components"] if c["name"].endswith("-nginx")}
    assert states == {"app1-nginx": "up", "app2-nginx": "up", "app3-nginx": "up"}


def test_a_plaintext_request_to_an_app_server_is_refused(fleet: Fleet):
    plain = ["python3", "-c", "import http.client, sys\n"
             "connection = http.client.HTTPConnection(sys.argv[1], 8000, timeout=5)\n"
             "connection.request('GET', '/-/djship/health', headers={'Host': 'localhost', 'X-Forwarded-Proto': 'https'})\n"
             "answer = connection.getresponse()\n"
             "print(answer.status, answer.read().decode(errors='replace'))",
             fleet.hosts["app2"].address]
    answer = fleet.in_namespace("lb1", *plain)  # from the balancer's own host: the address is let in, plain HTTP is not
    assert answer.stdout.startswith("400 ") and "The plain HTTP request was sent to HTTPS port" in answer.stdout, (
        answer.stdout + answer.stderr)


def test_every_connection_of_the_app_role_to_postgresql_is_encrypted(fleet: Fleet):
    assert set(fleet.servers_answering()) == {"app1", "app2", "app3"}  # every app server holds a connection now
    secrets = json.loads((fleet.project / ".djship" / "secrets" / "admin.json").read_text())
    db = fleet.hosts["db1"].address
    psql = [shutil.which("psql") or "psql", "-X", "-h", db, "-p", str(DATABASE_PORT), "-U", "postgres", "-d", "board",
            "-tAc", "SELECT a.client_addr, s.ssl, s.version FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) "
                    "WHERE a.usename = 'board' ORDER BY 1"]
    seen = fleet.in_namespace("db1", *psql, env={"PGPASSWORD": secrets["postgres_password"], "PGCONNECT_TIMEOUT": "5"})
    assert seen.returncode == 0, seen.stderr
    rows = [line.split("|") for line in seen.stdout.split()]
    assert {address for address, _, _ in rows} == {fleet.hosts[app].address for app in ("app1", "app2", "app3")}, rows
    assert {(ssl, version) for _, ssl, version in rows} == {("t", "TLSv1.3")}, rows


def test_postgresql_refuses_the_app_role_without_tls(fleet: Fleet):
    secrets = json.loads((fleet.project / ".djship" / "secrets" / "app.json").read_text())
    argv = [shutil.which("psql") or "psql", "-X", "-h", fleet.hosts["db1"].address, "-p", str(DATABASE_PORT),
            "-U", "board", "-d", "board", "-tAc", "SELECT 1"]
    env = {"PGPASSWORD": secrets["database_password"], "PGCONNECT_TIMEOUT": "5"}
    plain = fleet.in_namespace("app2", *argv, env={**env, "PGSSLMODE": "disable"})
    assert plain.returncode != 0 and "no encryption" in plain.stderr, plain.stderr
    verified = fleet.in_namespace("app2", *argv, env={**env, "PGSSLMODE": "verify-full", "PGSSLROOTCERT": str(fleet.ca)})
    assert verified.returncode == 0 and verified.stdout.strip() == "1", verified.stderr


def test_secrets_reach_each_host_0600(fleet: Fleet):
    for name in ("app1", "app2", "app3"):
        secrets = fleet.hosts[name].root / "secrets" / "app.json"
        assert secrets.stat().st_mode & 0o777 == 0o600
    assert (fleet.hosts["db1"].root / "secrets" / "admin.json").stat().st_mode & 0o777 == 0o600
    assert not (fleet.hosts["lb1"].root / "secrets" / "app.json").exists()


def test_up_again_changes_nothing_and_says_so(fleet: Fleet):
    result = fleet.djship("up")
    assert "Already up and unchanged" in result.stdout
    assert "Starting" not in result.stdout and "Reloading" not in result.stdout


def test_up_dry_run_shows_a_config_change_changes_nothing_and_up_then_applies_it(fleet: Fleet):
    config = fleet.project / "djship.toml"
    original = config.read_text()
    config.write_text(original.replace("workers = 2", "workers = 3"))
    try:
        before = {path: path.read_bytes() for name in ROLES for path in (fleet.hosts[name].root / "servers").rglob("*.py")}
        dry = fleet.djship("up", "--dry-run").stdout
        assert "app1: restart app1-gunicorn out of rotation (configuration changed)" in dry
        assert "app3: write " in dry and "nothing was changed (--dry-run)" in dry
        assert {path: path.read_bytes() for path in before} == before
        with FleetLoop(fleet) as load:
            applied = fleet.djship("up").stdout
            load.wait_for(load.served + 30)
        assert "Restarting app2-gunicorn (configuration changed)" in applied
        assert load.failures == []
    finally:
        config.write_text(original)
        fleet.djship("up")
    assert "Nothing to change." in fleet.djship("up", "--dry-run").stdout


def test_scale_runs_two_app_servers_per_host_and_back_without_a_failed_request(fleet: Fleet):
    with FleetLoop(fleet) as load:
        fleet.djship("scale", "2")
        assert set(fleet.servers_answering(60)) == {"app1", "app1-2", "app2", "app2-2", "app3", "app3-2"}
        fleet.djship("scale", "1")
        load.wait_for(load.served + 30)
    assert load.failures == []
    assert set(fleet.servers_answering()) == {"app1", "app2", "app3"}


def test_rolling_deploy_across_hosts_fails_no_request(fleet: Fleet):
    before = fleet.status()["release"]
    load = deploy_under_load(fleet, "deployed by the remote e2e test")
    after = fleet.status()["release"]
    assert after != before
    assert load.failures == []
    assert set(load.releases) >= {before, after}
    releases = {host: (fleet.hosts[host].root / "servers" / host / "release").resolve().name for host in ("app1", "app2", "app3")}
    assert set(releases.values()) == {after}


def test_rollback_across_hosts_fails_no_request(fleet: Fleet):
    before = fleet.status()["release"]
    with FleetLoop(fleet) as load:
        fleet.djship("rollback")
        load.wait_for(load.served + 30)
    assert load.failures == []
    assert fleet.status()["release"] != before


def test_a_control_machine_that_lost_its_state_reads_it_back_from_the_hosts(fleet: Fleet):
    secrets = (fleet.hosts["app1"].root / "secrets" / "app.json").read_bytes()
    ca = fleet.ca.read_bytes()
    live = fleet.status()["release"]
    shutil.rmtree(fleet.project / ".djship")  # the laptop is lost; a fresh clone has the same djship.toml and key
    report = fleet.status()
    assert report["release"] == live and report["tls"]["certificate"] is not None
    assert fleet.ca.read_bytes() == ca
    assert deploy_under_load(fleet, "deployed from a fresh clone").failures == []
    assert fleet.status()["release"] != live
    assert "Already up and unchanged" in fleet.djship("up").stdout
    for name in ("app1", "app2", "app3"):  # no secret was made anew
        assert (fleet.hosts[name].root / "secrets" / "app.json").read_bytes() == secrets
    assert json.loads((fleet.project / ".djship" / "secrets" / "app.json").read_bytes()) == json.loads(secrets)


def test_a_killed_app_host_fails_no_request_and_rejoins_after_up(fleet: Fleet):
    with FleetLoop(fleet) as load:
        fleet.hosts["app2"].kill()
        load.wait_for(load.served + 100)
    assert load.failures == []
    assert "app2" not in fleet.servers_answering(20)
    report = fleet.status()  # the other hosts still report; the dead one says why
    problems = {host["name"]: host["problem"] for host in report["hosts"]}
    assert problems["app2"].startswith(f"app2: cannot reach {fleet.hosts['app2'].address}:22 over SSH")
    assert {name for name, problem in problems.items() if problem} == {"app2"}
    states = {component["name"]: component for component in report["components"]}
    assert states["app2-gunicorn"]["state"] == "UNREACHABLE" and states["app2-nginx"]["health"] == "down"
    assert states["app1-gunicorn"]["state"] == "RUNNING" and states["haproxy"]["health"] == "up"
    refused = fleet.djship("deploy", check=False)
    assert refused.returncode == 1 and "app2: cannot reach" in refused.stderr
    fleet.hosts.start_sshd(fleet.hosts["app2"])
    fleet.djship("up")
    deadline = time.monotonic() + 30
    while "app2" not in fleet.servers_answering(12):
        assert time.monotonic() < deadline, "app2 did not rejoin"


def test_removing_and_adding_an_app_host_fails_no_request(fleet: Fleet):
    with FleetLoop(fleet) as load:
        write_config(fleet.project, fleet.hosts, ["app1", "app2"])
        fleet.djship("up")
        load.wait_for(load.served + 30)
        assert set(fleet.servers_answering(20)) == {"app1", "app2"}
        assert not any("supervisord" in command for command in fleet.programs_on("app3"))
        assert "app3-nginx" not in {component["name"] for component in fleet.status()["components"]}
        write_config(fleet.project, fleet.hosts, ["app1", "app2", "app3"])
        fleet.djship("up")
        load.wait_for(load.served + 30)
    assert load.failures == []
    assert set(fleet.servers_answering()) == {"app1", "app2", "app3"}


def test_down_stops_every_process_on_every_host_and_up_brings_the_same_data_back(fleet: Fleet):
    secrets = json.loads((fleet.project / ".djship" / "secrets" / "app.json").read_text())
    psql = [shutil.which("psql") or "psql", "-X", "-h", fleet.hosts["db1"].address, "-p", str(DATABASE_PORT),
            "-U", "board", "-d", "board", "-tAc"]
    env = {"PGPASSWORD": secrets["database_password"], "PGCONNECT_TIMEOUT": "5"}
    inserted = fleet.in_namespace("app1", *psql, "INSERT INTO auth_user (password, is_superuser, username, first_name, "
                                  "last_name, email, is_staff, is_active, date_joined) VALUES ('!', false, 'kept', '', "
                                  "'', '', false, true, now())", env=env)
    assert inserted.returncode == 0, inserted.stderr
    release = fleet.status()["release"]

    result = fleet.djship("down")
    assert "Stopping PostgreSQL (data stays in" in result.stdout
    for name in ROLES:  # only the harness's sshd is left in each host
        assert [command for command in fleet.programs_on(name) if "sshd" not in command] == []

    fleet.djship("up")
    assert fleet.status()["release"] == release
    assert set(fleet.servers_answering()) == {"app1", "app2", "app3"}
    kept = fleet.in_namespace("app3", *psql, "SELECT count(*) FROM auth_user WHERE username = 'kept'", env=env)
    assert kept.stdout.strip() == "1", kept.stderr


def test_destroy_lists_every_host_and_deletes_each_state_root(fleet: Fleet):
    refused = fleet.djship("destroy", check=False)
    assert refused.returncode == 1
    for name in ROLES:
        assert f"{fleet.hosts[name].root} on {name}" in refused.stderr
    fleet.djship("destroy", "--yes")
    for name in ROLES:
        assert not fleet.hosts[name].root.exists()
        assert [command for command in fleet.programs_on(name) if "sshd" not in command] == []
    assert not (fleet.project / ".djship").exists()

"""balancer.external = true on hosts: 2 app hosts + 1 db host run by djship, behind an HAProxy that this test starts
itself on a fourth host (alb1), configured like an AWS ALB target group: TLS terminated with the test's own
certificate, X-Forwarded-For appended and X-Forwarded-Proto set, a health check every 2 s, 2 failures out and 2
successes in, no retries and no runtime API socket. djship can only drain a server by failing its health check.

Only the namespaces' addresses (10.247.x.y) are contacted; the test's HAProxy is stopped by its PID at the end.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from djship.components.probe import Response, request
from djship.tls import local_ca
from tests.e2e.conftest import EXAMPLE, searchable_directory
from tests.e2e.hosts import NetnsHosts, netns_hosts
from tests.e2e.test_remote_system import Fleet, FleetLoop

pytestmark = pytest.mark.e2e

HOSTS = ["alb1", "app1", "app2", "db1"]
APP_PORT = 8000
DRAIN_SECONDS = 6  # the test balancer: a check every 2 s, 2 failures out (4 s), and 2 s to spare
FORGED = "203.0.113.9"

# A view the test's copy of the example gets: what Django sees of the client.
WHOAMI = '''

def djship_test_whoami(request):
    from django.http import JsonResponse
    return JsonResponse({"real_ip": request.META.get("HTTP_X_REAL_IP"),
                         "forwarded_for": request.META.get("HTTP_X_FORWARDED_FOR"), "secure": request.is_secure()})
'''

# argv: url, the CA file to verify with (empty: no verification); sends forged X-Forwarded-* headers and prints the
# status and the body.
FORGING_CLIENT = (
    "import ssl, sys, urllib.request, urllib.error\n"
    "ask = urllib.request.Request(sys.argv[1], headers={'Host': 'localhost', 'X-Forwarded-For': '" + FORGED + "', "
    "'X-Forwarded-Proto': 'https', 'X-Real-IP': '" + FORGED + "'})\n"
    "context = ssl.create_default_context(cafile=sys.argv[2]) if sys.argv[2] else ssl._create_unverified_context()\n"
    "context.check_hostname = False  # the chain is verified; the name is localhost, the URL an address\n"
    "try:\n    answer = urllib.request.urlopen(ask, timeout=10, context=context)\n    print(answer.status, answer.read().decode())\n"
    "except urllib.error.HTTPError as error:\n    print(error.code, error.read().decode())\n"
    "except OSError as error:\n    print(0, error)"
)


def balancer_cfg(hosts: NetnsHosts, pem: Path) -> str:
    servers = [f"    server {name} {hosts[name].address}:{APP_PORT} check ssl verify none" for name in ("app1", "app2")]
    return "\n".join([
        "global",
        "    maxconn 2000",
        "defaults",
        "    mode http",
        "    retries 0",
        "    timeout connect 5s",
        "    timeout client 60s",
        "    timeout server 60s",
        "frontend https",
        f"    bind {hosts['alb1'].address}:443 ssl crt {pem}",
        "    http-request set-header X-Forwarded-Proto https",
        '    http-request set-header X-Forwarded-For "%[req.hdr(X-Forwarded-For)], %[src]" if { req.hdr(X-Forwarded-For) -m found }',
        "    http-request set-header X-Forwarded-For %[src] unless { req.hdr(X-Forwarded-For) -m found }",
        "    default_backend targets",
        "backend targets",
        "    balance roundrobin",
        "    option httpchk GET /-/djship/health",
        "    http-check expect status 200",
        "    default-server inter 2s fall 2 rise 2",
        *servers,
        "",
    ])


def write_config(project: Path, hosts: NetnsHosts) -> None:
    lines = [
        "[project]",
        'settings_module = "board.settings"',
        'wsgi_application = "board.wsgi.application"',
        "",
        "[app]",
        "workers = 2",
        f"port = {APP_PORT}",
        "",
        "[balancer]",
        "external = true",
        f'trusted = ["{hosts["alb1"].address}/32"]',
        "tls = true",
        "healthy_threshold = 2",
        "health_interval = 2",
        "",
        "[deploy]",
        f"drain_seconds = {DRAIN_SECONDS}",
        "",
        "[servers]",
        'app = ["app1", "app2"]',
        'db = "db1"',
        "",
        "[ssh]",
        f'key = "{hosts.client_key}"',
        f'known_hosts = "{hosts.known_hosts}"',
        "",
        *hosts.users_toml,
    ]
    for name in ("app1", "app2", "db1"):
        lines += ["", f"[hosts.{name}]", f'address = "{hosts[name].address}"', f'root = "{hosts[name].root}"']
    (project / "djship.toml").write_text("\n".join(lines) + "\n")


@dataclass
class ExternalFleet(Fleet):
    balancer_ca: Path = Path()
    balancer_pid: int = 0

    @property
    def lb(self) -> str:
        return self.hosts["alb1"].address

    def get(self, path: str = "/api/posts/") -> Response | str:
        """Through the test's balancer, its certificate verified against the test's own CA."""
        return request(self.lb, 443, "localhost", "GET", path, tls_name="localhost", ca_file=self.balancer_ca,
                       timeout=30)

    def forging(self, host: str, url: str, ca: str = "") -> tuple[int, str]:
        answer = self.in_namespace(host, "python3", "-c", FORGING_CLIENT, url, ca).stdout.strip()
        status, _, body = answer.partition(" ")
        return int(status or 0), body


@pytest.fixture(scope="module")
def fleet():
    with netns_hosts(HOSTS) as hosts, searchable_directory() as directory:
        project = directory / "board"
        shutil.copytree(EXAMPLE, project, ignore=shutil.ignore_patterns("__pycache__", "db.sqlite3", "media", ".djship"))
        (project / "posts" / "views.py").write_text((project / "posts" / "views.py").read_text() + WHOAMI)
        urls = project / "board" / "urls.py"
        urls.write_text(urls.read_text().replace(
            'path("admin/", admin.site.urls),', 'path("admin/", admin.site.urls),\n'
            '    path("whoami/", posts_views.djship_test_whoami),'))
        write_config(project, hosts)
        authority = local_ca.new_authority("test balancer")
        pem, ca = directory / "alb.pem", directory / "alb-ca.crt"
        pem.write_bytes(local_ca.issue_site_certificate(authority, ("localhost",)))
        ca.write_bytes(authority.cert_pem())
        cfg = directory / "alb.cfg"
        cfg.write_text(balancer_cfg(hosts, pem))
        made = ExternalFleet(project, hosts, ca)
        balancer = None
        try:
            made.djship("up")
            balancer = subprocess.Popen(["ip", "netns", "exec", hosts["alb1"].namespace, shutil.which("haproxy")
                                         or "/usr/sbin/haproxy", "-db", "-f", str(cfg)],
                                        stdout=subprocess.DEVNULL, stderr=(directory / "alb.log").open("wb"))
            made.balancer_pid = balancer.pid
            deadline = time.monotonic() + 60
            while set(_servers_answering(made)) != {"app1", "app2"}:
                assert balancer.poll() is None, (directory / "alb.log").read_text()
                assert time.monotonic() < deadline, "the test balancer did not reach both app servers"
                time.sleep(0.5)
            yield made
        finally:
            if balancer is not None:
                balancer.send_signal(signal.SIGTERM)
                try:
                    balancer.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    balancer.kill()
                    balancer.wait(timeout=10)
            made.djship("down", check=False)


def _servers_answering(fleet: ExternalFleet, count: int = 6) -> list[str]:
    seen = []
    for _ in range(count):
        answer = fleet.get()
        if isinstance(answer, Response) and answer.status == 200:
            seen.append(answer.header("X-Djship-Server"))
    return seen


def _under_load(fleet: ExternalFleet, *command: str) -> tuple[FleetLoop, str]:
    """`djship COMMAND` while 4 threads of requests run through the test's balancer (from before it starts until 20
    requests after it ends); the loop, with its counts, and what djship said."""
    with FleetLoop(fleet) as load:
        before = load.served
        said = fleet.djship(*command).stdout
        during = load.served - before
        load.wait_for(load.served + 20)
    print(f"djship {' '.join(command)}: {during} requests served while it ran, {len(load.failures)} failed")
    assert during >= 50, (during, said)  # the servers were drained and restarted under real load
    return load, said


def test_the_site_answers_through_the_external_balancer_from_both_app_hosts(fleet: ExternalFleet):
    assert set(_servers_answering(fleet, 10)) == {"app1", "app2"}


def test_a_forged_request_straight_to_an_app_server_is_refused(fleet: ExternalFleet):
    for app in ("app1", "app2"):
        url = f"https://{fleet.hosts[app].address}:{APP_PORT}/whoami/"
        assert fleet.forging("db1", url)[0] == 403
        assert fleet.forging("app1" if app == "app2" else "app2", url)[0] == 403  # another app host is no balancer


def test_through_the_balancer_django_sees_the_clients_address_not_a_forged_one(fleet: ExternalFleet):
    status, body = fleet.forging("db1", f"https://{fleet.lb}/whoami/", str(fleet.balancer_ca))
    assert status == 200, body
    seen = json.loads(body)
    client = fleet.hosts["db1"].address
    assert seen == {"real_ip": client, "forwarded_for": client, "secure": True}


def test_status_shows_the_balancers_last_health_check_of_each_app_server(fleet: ExternalFleet):
    report = fleet.status()
    assert report["balancer"] == {"external": True, "trusted": [f"{fleet.lb}/32"]}
    nginx = {c["server"]: c for c in report["components"] if c["name"].endswith("-nginx")}
    for app in ("app1", "app2"):
        last = nginx[app]["balancer"]["last_check"]
        assert (last["status"], last["peer"]) == (200, fleet.lb) and last["seconds_ago"] < 10, last
        assert nginx[app]["health"] == "up"
    shown = fleet.djship("status").stdout
    assert f"app1: last health check from {fleet.lb}" in shown, shown


def test_up_again_changes_nothing_and_says_so(fleet: ExternalFleet):
    result = fleet.djship("up")
    assert "Already up and unchanged" in result.stdout, result.stdout
    assert "Draining" not in result.stdout and "Starting" not in result.stdout


def test_a_deploy_under_load_fails_no_request(fleet: ExternalFleet):
    views = fleet.project / "posts" / "views.py"
    original = views.read_text()
    views.write_text(original + "\n# external balancer deploy\n")
    try:
        load, said = _under_load(fleet, "deploy")
    finally:
        views.write_text(original)
    assert load.failures == [], (load.failures[:5], said)
    assert "Draining app1: their health checks answer 503 for 6s" in said, said
    assert len(load.releases) == 2, load.releases  # the old release, then the new one, answered


def test_a_rollback_under_load_fails_no_request(fleet: ExternalFleet):
    load, said = _under_load(fleet, "rollback")
    assert load.failures == [], (load.failures[:5], said)
    assert len(load.releases) == 2, load.releases


def test_an_env_change_under_load_fails_no_request(fleet: ExternalFleet):
    load, said = _under_load(fleet, "env", "set", "BOARD_GREETING=hello from the external balancer")
    assert load.failures == [], (load.failures[:5], said)
    answer = fleet.get("/api/environment/")
    assert isinstance(answer, Response) and json.loads(answer.body)["greeting"] == "hello from the external balancer"
    report = fleet.status()
    assert {c["health"] for c in report["components"] if c["name"].endswith("-nginx")} == {"up"}


def test_after_up_and_every_change_djship_started_no_haproxy_on_any_host(fleet: ExternalFleet):
    # Last in the module (pytest runs them in file order): after up, a deploy, a rollback and an env change.
    for host in ("app1", "app2", "db1"):
        assert not [command for command in fleet.programs_on(host) if "haproxy" in command], host
    on_balancer = [pid for pid in fleet.hosts["alb1"].pids()
                   if "haproxy" in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")]
    assert on_balancer == [fleet.balancer_pid]  # the test's own, nothing else

"""`djship doctor` against a real running system: healthy it passes; each test breaks one thing for real (a stopped
gunicorn, a socket nginx cannot open, hand-edited nginx.conf and haproxy.cfg, a missing static file, a certificate
about to expire, a project setting deployed, djship.toml changed without `djship up`, another SECRET_KEY on one host),
sees the doctor name it, and puts it back. Every scenario that makes sense on both runs on one machine and on netns
hosts (1 lb + 3 app + 1 db) through the `target` fixture; the direct request to an app server, the deploy and the
stopped system are one machine's only, another secrets file on one host is the hosts' only."""

from __future__ import annotations

import datetime
import json
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from djship.config import with_values
from djship.tls import local_ca
from tests.e2e.conftest import EXAMPLE, Ports, Site, make_project, run_djship, running_site, searchable_directory
from tests.e2e.hosts import netns_hosts
from tests.e2e.test_remote_system import ROLES, write_config

pytestmark = pytest.mark.e2e

DOCTOR_PORTS = Ports.of(https=23443, http=23080, database=30432, app_prefix="127.0.61", database_address="127.0.62.1")
# Checks that may warn on the example project: its default cache is Django's LocMemCache, one per worker.
MAY_WARN = {"cache-sessions"}


@pytest.fixture(scope="module")
def site() -> Site:
    with running_site(DOCTOR_PORTS) as running:
        yield running


@dataclass
class Target:
    """A running system and how a test reaches into its hosts (netns hosts share this machine's file system, so a
    host's files are edited in place; its programs are driven by supervisorctl inside its namespace)."""

    djship: Callable[..., subprocess.CompletedProcess]
    project: Path
    https_port: int
    roots: dict[str, Path]
    """Host -> its state root."""
    namespaces: dict[str, list[str]]
    """Host -> the command prefix that runs a program on it."""
    servers: dict[str, str]
    """App server -> its host."""
    lb: str
    db: str
    may_warn: set[str]

    @property
    def control(self) -> Path:
        """What the control machine keeps (.djship/ beside manage.py)."""
        return self.project / ".djship"

    @property
    def app_hosts(self) -> list[str]:
        return list(dict.fromkeys(self.servers.values()))

    def server_dir(self, server: str) -> Path:
        return self.roots[self.servers[server]] / "servers" / server

    def origin(self, domain: str) -> str:
        return f"https://{domain}" if self.https_port == 443 else f"https://{domain}:{self.https_port}"

    def where(self, server: str) -> str:
        """How the doctor names the host of a server's programs: only when there are several hosts."""
        return f"{self.servers[server]}: " if len(self.roots) > 1 else ""

    def supervisorctl(self, host: str, *args: str) -> None:
        conf = self.roots[host] / "supervisor" / "supervisord.conf"
        subprocess.run([*self.namespaces[host], sys.executable, "-m", "supervisor.supervisorctl", "-c", str(conf), *args],
                       check=True, capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def one_machine(site: Site) -> Target:
    return Target(site.djship, site.project, DOCTOR_PORTS.https, {"local": _state(site)}, {"local": []},
                  {"app1": "local", "app2": "local"}, "local", "local", MAY_WARN)


@pytest.fixture(scope="module")
def on_hosts() -> Target:
    """The example on 1 lb + 3 app + 1 db netns hosts; the db host holds the uploads every app host mounts."""
    with netns_hosts(list(ROLES)) as hosts, searchable_directory() as directory:
        project = directory / "board"
        shutil.copytree(EXAMPLE, project, ignore=shutil.ignore_patterns("__pycache__", "db.sqlite3", "media", ".djship"))
        write_config(project, hosts, ["app1", "app2", "app3"])

        def djship(*args: str, check: bool = True) -> subprocess.CompletedProcess:
            return run_djship(project, *args, check=check, timeout=900)

        try:
            djship("up")
            yield Target(djship, project, 443, {name: hosts[name].root for name in ROLES},
                         {name: ["ip", "netns", "exec", hosts[name].namespace] for name in ROLES},
                         {name: name for name in ("app1", "app2", "app3")}, "lb1", "db1", MAY_WARN)
        finally:
            run_djship(project, "down", check=False, timeout=300)


@pytest.fixture(scope="module", params=["one machine", "netns hosts"])
def target(request) -> Target:
    return request.getfixturevalue({"one machine": "one_machine", "netns hosts": "on_hosts"}[request.param])


def _state(site: Site) -> Path:
    return site.project / ".djship"


def doctor(system: Site | Target, *args: str) -> tuple[int, dict[str, dict]]:
    result = system.djship("doctor", "--json", *args, check=False)
    assert result.returncode in (0, 1) and result.stdout, result.stderr
    document = json.loads(result.stdout)
    assert document["ok"] is (result.returncode == 0)
    return result.returncode, {check["id"]: check for check in document["checks"]}


def wait_clean(system: Site | Target, timeout: float = 90) -> dict[str, dict]:
    """Until the doctor finds nothing failing (after a breakage is put back, the balancer needs a few checks)."""
    deadline = time.monotonic() + timeout
    while True:
        code, checks = doctor(system)
        if code == 0:
            return checks
        failing = {key: check["cause"] for key, check in checks.items() if check["status"] == "fail"}
        assert time.monotonic() < deadline, f"still failing after {timeout}s: {failing}"
        time.sleep(1)


def until(target: Target, check_id: str, status: str, saying: str = "",
          timeout: float = 45) -> tuple[int, dict[str, dict]]:
    """Run the doctor until check_id has status and its cause says this (a reloaded or restarted process takes a
    moment), or time is up."""
    deadline = time.monotonic() + timeout
    while True:
        code, checks = doctor(target)
        found = checks[check_id]
        if (found["status"] == status and saying in found["cause"]) or time.monotonic() > deadline:
            return code, checks
        time.sleep(0.5)


@contextmanager
def edited(target: Target, host: str, path: Path, old: str, new: str, program: str, reload_signal: str):
    """path on host with old replaced by new, the program told to reload; afterwards the original back and
    reloaded."""
    original = path.read_text()
    assert old in original, f"{old!r} not in {path}"
    path.write_text(original.replace(old, new))
    target.supervisorctl(host, "signal", reload_signal, program)
    try:
        yield
    finally:
        path.write_text(original)
        target.supervisorctl(host, "signal", reload_signal, program)


@pytest.fixture(autouse=True)
def _clean_afterwards(request):
    """Every breakage is put back by its test; the next test starts only once the doctor finds nothing failing."""
    used = next((name for name in ("target", "on_hosts", "site") if name in request.fixturenames), None)
    system = request.getfixturevalue(used) if used else None
    yield
    if system is not None:
        wait_clean(system)


def test_a_healthy_system_passes(target: Target):
    result = target.djship("doctor")
    lines = result.stdout.splitlines()
    assert any(line.startswith("✓ CSRF: Origin checking failed — a form POST to /accounts/login/") for line in lines), lines
    assert lines[-1].endswith("0 failed"), lines
    code, checks = doctor(target)
    assert code == 0
    assert len(checks) == 18
    assert checks["redis"]["cause"].startswith("no [redis] in djship.toml")
    assert checks["archive-verified"]["cause"].startswith("no archive (backup.archive is off)")
    assert checks["archiving"]["cause"] == "no archive (backup.archive is off)"
    not_passing = {key: check for key, check in checks.items() if check["status"] != "pass" and key not in target.may_warn}
    assert not not_passing
    assert "/static/css/board.css" in checks["static-files"]["cause"]
    assert "days left" in checks["certificate"]["cause"]
    assert f"one SECRET_KEY on all {len(target.servers)} app servers" in checks["secret-key"]["cause"]
    assert all(f"{host} " in checks["clock-skew"]["cause"] for host in target.roots), checks["clock-skew"]


def test_a_stopped_gunicorn_is_named_and_djship_up_fixes_it(target: Target):
    target.supervisorctl(target.servers["app2"], "stop", "app2-gunicorn")
    code, checks = doctor(target)
    assert code == 1
    assert checks["components"]["status"] == "fail"
    assert f"{target.where('app2')}app2-gunicorn is STOPPED" in checks["components"]["cause"], checks["components"]
    assert "app2" in checks["gunicorn-socket"]["cause"]
    assert "app1" not in checks["gunicorn-socket"]["cause"]
    assert "`djship up`" in checks["components"]["fix"]
    human = target.djship("doctor", check=False)
    assert human.returncode == 1
    line = next(line for line in human.stdout.splitlines() if "Component up/healthy" in line)
    assert line.startswith("✗ Component up/healthy — ") and "app2-gunicorn is STOPPED" in line and "; fix: " in line
    target.djship("up")  # the fix the doctor names


def test_another_secret_key_on_one_host_is_named_and_passes_once_put_back(on_hosts: Target):
    secrets_file = on_hosts.roots["app3"] / "secrets" / "app.json"
    original = secrets_file.read_text()
    secrets_file.write_text(json.dumps({**json.loads(original), "secret_key": "another-key-on-app3-only"}))
    on_hosts.supervisorctl("app3", "restart", "app3-gunicorn")
    try:
        code, checks = doctor(on_hosts)
    finally:
        secrets_file.write_text(original)
        on_hosts.supervisorctl("app3", "restart", "app3-gunicorn")
    assert code == 1
    check = checks["secret-key"]
    assert check["status"] == "fail"
    assert "app3 uses another SECRET_KEY than the one djship keeps, which app1, app2 use" in check["cause"], check
    assert "logged out at random" in check["cause"]


def test_a_socket_nginx_cannot_open_is_a_502(site: Site):
    socket_path = _state(site) / "servers" / "app1" / "socket" / "gunicorn.sock"
    mode = socket_path.stat().st_mode & 0o777
    socket_path.chmod(0)
    try:
        direct = requests.Session()
        direct.trust_env = False  # no proxy from the environment: straight to app1's nginx
        answer = direct.get(f"http://{DOCTOR_PORTS.app_prefix}.1:8000/", timeout=10,
                            headers={"Host": "localhost", "X-Forwarded-Proto": "https"})
        assert answer.status_code == 502
        code, checks = doctor(site)
        assert code == 1
        check = checks["gunicorn-socket"]
        assert check["status"] == "fail"
        assert "app1: nginx's user" in check["cause"] and "Permission denied" in check["cause"], check
        assert "app2" not in check["cause"]
    finally:
        socket_path.chmod(mode)


def test_hand_edited_nginx_timeout_and_body_size_are_named(target: Target):
    host, conf = target.servers["app1"], target.server_dir("app1") / "nginx.conf"
    with edited(target, host, conf, "client_max_body_size 10M;", "client_max_body_size 1m;", "app1-nginx", "HUP"):
        with edited(target, host, conf, "proxy_read_timeout 35s;", "proxy_read_timeout 300s;", "app1-nginx", "HUP"):
            code, checks = doctor(target)
    assert code == 1
    check = checks["timeouts-body-size"]
    assert check["status"] == "fail"
    assert "app1: timeouts balancer 40s, nginx 300s, gunicorn 30s" in check["cause"], check
    assert "app1 1m" in check["cause"] and "413" in check["cause"]
    assert "app2" not in check["cause"]


def test_a_missing_static_file_is_a_404(target: Target):
    # Gone from the release and from the store of every kept release's files (shared/static) that nginx falls back
    # to, with its pre-compressed copies, on every app host: as if collectstatic had never found it.
    collected = [target.roots[host] / directory / "css" / f"board.css{encoding}"
                 for host in target.app_hosts for directory in ("current/static", "shared/static")
                 for encoding in ("", ".gz", ".br")]
    moved = {path: path.with_name(path.name + ".doctor-test") for path in collected if path.exists()}
    assert len(moved) >= 2 * len(target.app_hosts), collected
    for path, aside in moved.items():
        path.rename(aside)
    try:
        code, checks = doctor(target)
    finally:
        for path, aside in moved.items():
            aside.rename(path)
    assert code == 1
    check = checks["static-files"]
    assert check["status"] == "fail"
    assert "app1's nginx answers 404 for /static/css/board.css" in check["cause"], check
    assert "the balancer answers 404 for /static/css/board.css" in check["cause"]


def test_a_balancer_that_stops_setting_x_forwarded_proto_is_a_redirect_loop(target: Target):
    conf = target.roots[target.lb] / "balancer" / "haproxy.cfg"
    with edited(target, target.lb, conf, "    http-request set-header X-Forwarded-Proto https\n", "", "haproxy", "USR2"):
        code, checks = until(target, "redirect-loop", "fail")
    assert code == 1
    check = checks["redirect-loop"]
    assert check["status"] == "fail"
    assert "redirect loop" in check["cause"] and "(again)" in check["cause"], check
    assert "haproxy.cfg does not set X-Forwarded-Proto https" in check["cause"]
    assert "X-Forwarded-Proto" in check["fix"]


def test_a_certificate_about_to_expire_is_named(target: Target, monkeypatch):
    tls = target.control / "tls"
    authority = local_ca.load_authority((tls / "ca.crt").read_bytes(), (tls / "ca.key").read_bytes())
    monkeypatch.setattr(local_ca, "SITE_LIFETIME", datetime.timedelta(days=2))
    short = local_ca.issue_site_certificate(authority, ("localhost",))
    pem = target.roots[target.lb] / "tls" / "site.pem"
    original = pem.read_bytes()
    pem.write_bytes(short)  # keeps the file's owner and mode
    target.supervisorctl(target.lb, "signal", "USR2", "haproxy")
    try:
        code, checks = until(target, "certificate", "fail")
    finally:
        pem.write_bytes(original)
        target.supervisorctl(target.lb, "signal", "USR2", "haproxy")
    assert code == 1
    assert checks["certificate"]["status"] == "fail"
    assert "expires in 2.0 days" in checks["certificate"]["cause"], checks["certificate"]


def restart_gunicorns(target: Target) -> None:
    for server, host in target.servers.items():
        target.supervisorctl(host, "restart", f"{server}-gunicorn")


def test_a_proxy_that_hides_https_and_no_trusted_origins_answer_403_to_a_real_post(target: Target):
    originals = {path: path.read_text() for path in
                 (target.roots[host] / "current" / "djship_production" / "settings.py" for host in target.app_hosts)}
    # The classic CSRF failure behind a TLS proxy: the proxy does not say the client came over HTTPS and the origin
    # is not trusted, so Django compares the browser's https Origin with an http request and refuses the POST.
    # (No https redirect either, which would loop instead; gunicorn itself trusts X-Forwarded-Proto on its socket,
    # so the balancer must stop sending it.)
    for path, original in originals.items():
        path.write_text(original + "\nSECURE_SSL_REDIRECT = False\nCSRF_TRUSTED_ORIGINS = []\n")
    restart_gunicorns(target)
    conf = target.roots[target.lb] / "balancer" / "haproxy.cfg"
    try:
        with edited(target, target.lb, conf, "    http-request set-header X-Forwarded-Proto https\n", "", "haproxy",
                    "USR2"):
            code, checks = until(target, "csrf", "fail", saying="answers 403")
    finally:
        for path, original in originals.items():
            path.write_text(original)
        restart_gunicorns(target)
    assert code == 1
    check = checks["csrf"]
    assert "POST /accounts/login/ through the balancer answers 403" in check["cause"], check
    assert f"app1: CSRF_TRUSTED_ORIGINS lacks {target.origin('localhost')}" in check["cause"]
    assert "haproxy.cfg does not set X-Forwarded-Proto https" in check["cause"]


def test_max_connections_lowered_below_the_budget_is_named(target: Target):
    conf = target.roots[target.db] / "postgres" / "data" / "postgresql.conf"
    original = conf.read_text()
    conf.write_text(original.replace("max_connections = 100", "max_connections = 15"))
    target.supervisorctl(target.db, "restart", "postgres")
    try:
        code, checks = until(target, "connections", "fail")
    finally:
        conf.write_text(original)
        target.supervisorctl(target.db, "restart", "postgres")
    assert code == 1
    check = checks["connections"]
    assert "= 16, but PostgreSQL's max_connections 15 leaves 12" in check["cause"], check
    assert "database.max_connections" in check["fix"]


def test_nginx_serving_media_from_elsewhere_on_one_server_is_named(target: Target):
    server = target.server_dir("app2")
    with edited(target, target.servers["app2"], server / "nginx.conf", f'alias "{server}/media/";',
                "alias /var/empty/;", "app2-nginx", "HUP"):
        code, checks = until(target, "media", "fail")
    assert code == 1
    check = checks["media"]
    assert "app2: nginx serves /media/ from /var/empty," in check["cause"], check
    assert "app2: a file just written to" in check["cause"] and "answers 404" in check["cause"]
    assert "app1" not in check["cause"]


def test_a_check_deploy_warning_in_the_live_release_is_named(target: Target):
    settings = target.roots[target.app_hosts[0]] / "current" / "djship_production" / "settings.py"
    original = settings.read_text()
    settings.write_text(original + "\nSECURE_HSTS_SECONDS = 0\n")
    try:
        code, checks = doctor(target)
    finally:
        settings.write_text(original)
    assert code == 1
    assert checks["check-deploy"]["status"] == "fail"
    assert "security.W004" in checks["check-deploy"]["cause"], checks["check-deploy"]


def test_a_domain_added_without_djship_up_is_named(target: Target):
    config = target.project / "djship.toml"
    original = config.read_text()
    config.write_text(with_values(original, {"site.domains": ["localhost", "www.example.com"]}))
    try:
        code, checks = doctor(target)
    finally:
        config.write_text(original)
    assert code == 1
    assert "lacks www.example.com" in checks["allowed-hosts"]["cause"], checks["allowed-hosts"]
    assert "does not name www.example.com" in checks["certificate"]["cause"], checks["certificate"]
    assert f"lacks {target.origin('www.example.com')}" in checks["csrf"]["cause"], checks["csrf"]


def test_sessions_in_a_per_process_cache_are_named_after_a_deploy(site: Site):
    settings = site.project / "board" / "settings.py"
    original = settings.read_text()
    settings.write_text(original + '\nSESSION_ENGINE = "django.contrib.sessions.backends.cache"\n')
    try:
        site.djship("deploy")
        site.status()
        code, checks = doctor(site)
    finally:
        settings.write_text(original)
        site.djship("deploy")
        site.status()
    assert code == 1
    check = checks["cache-sessions"]
    assert check["status"] == "fail"
    assert "LocMemCache" in check["cause"] and "logged out at random" in check["cause"], check


def test_a_stopped_system_is_one_line_and_exit_1(workdir):
    project = make_project(workdir, DOCTOR_PORTS)
    for args in (("doctor",), ("doctor", "--json")):
        result = run_djship(project, *args, check=False)
        assert result.returncode == 1
        assert result.stdout == ""
        assert result.stderr.strip() == "error: not running; `djship up` first"

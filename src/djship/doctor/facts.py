"""What `djship doctor` observes on the running system: the config files actually on disk, the processes, the
balancer's view, the live release's effective Django settings, PostgreSQL, and real HTTP(S) requests.

Nothing here judges; checks.py does. Every probe records what it saw (or the error it got) instead of raising,
so one broken part never hides the others.
"""

from __future__ import annotations

import ast
import email.utils
import json
import os
import re
import secrets
import socket
import ssl
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature

from djship.components import appserver, balancer
from djship.components.probe import Response, describe_error, request
from djship.deploy.live import read_live
from djship.deploy.release import Release
from djship.errors import DjshipError
from djship.plan import MEDIA_URL, AppServer, Plan
from djship.system import System

# Pages tried, in order, for the CSRF round trip when --form-path is not given: the first that answers 200 and sets
# the csrftoken cookie is used. Django's auth views and the admin's login page both render a CSRF-protected form.
DEFAULT_FORM_PATHS = ("/accounts/login/", "/admin/login/")
MAX_REDIRECTS = 10
MAX_STATIC_PROBES = 5

# Run with the release's Python and production settings; prints the settings the doctor judges, as JSON.
# The SECRET_KEY itself never leaves the process: only a short hash of it, to compare servers.
SETTINGS_SCRIPT = """
import hashlib, json
from django.conf import settings
print(json.dumps({
    "DEBUG": settings.DEBUG,
    "ALLOWED_HOSTS": list(settings.ALLOWED_HOSTS),
    "CSRF_TRUSTED_ORIGINS": list(settings.CSRF_TRUSTED_ORIGINS),
    "SECURE_PROXY_SSL_HEADER": list(settings.SECURE_PROXY_SSL_HEADER or []) or None,
    "SECURE_SSL_REDIRECT": settings.SECURE_SSL_REDIRECT,
    "CACHES": {alias: {"BACKEND": c.get("BACKEND", ""), "LOCATION": str(c.get("LOCATION", ""))}
               for alias, c in settings.CACHES.items()},
    "SESSION_ENGINE": settings.SESSION_ENGINE,
    "SESSION_CACHE_ALIAS": settings.SESSION_CACHE_ALIAS,
    "SESSION_FILE_PATH": str(settings.SESSION_FILE_PATH),
    "SECRET_KEY_SHA256": hashlib.sha256(str(settings.SECRET_KEY).encode()).hexdigest()[:16],
    "CONN_MAX_AGE": settings.DATABASES["default"].get("CONN_MAX_AGE", 0),
    "MEDIA_ROOT": str(settings.MEDIA_ROOT),
    "STATIC_ROOT": str(settings.STATIC_ROOT),
}))
"""
# Run as the user nginx runs as: can it connect to gunicorn's socket?
CONNECT_SCRIPT = "import socket, sys; s = socket.socket(socket.AF_UNIX); s.settimeout(3); s.connect(sys.argv[1])"
_STATIC_REFERENCE = re.compile(r"""(?:href|src)=["'](/static/[^"'?#]+)""")
_CSRF_INPUT = re.compile(r"""name=["']csrfmiddlewaretoken["'] value=["']([^"']+)""")


@dataclass(frozen=True)
class NginxConf:
    """What the nginx.conf on disk actually says."""

    client_max_body_size: str | None
    proxy_read_timeout: int | None
    static_dir: str | None
    """Where /static/ is served from: the location's root joined with the URL (or its alias)."""
    media_alias: str | None
    upstream_socket: str | None


def _match(pattern: str, text: str) -> str | None:
    found = re.search(pattern, text, re.MULTILINE)
    return found.group(1) if found else None


# One nginx word: a double-quoted string (as djship writes paths) or a bare word.
_NGINX_WORD = r'("(?:[^"\\]|\\.)*"|[^\s;"]+)'


def _nginx_word(pattern: str, text: str) -> str | None:
    word = _match(pattern, text)
    if word is None or not word.startswith('"'):
        return word
    return re.sub(r"\\(.)", r"\1", word[1:-1])


def _static_dir(text: str, static_url: str) -> str | None:
    location = rf"location\s+{re.escape(static_url)}\s*\{{[^}}]*?"
    root = _nginx_word(location + rf"\broot\s+{_NGINX_WORD}\s*;", text)
    if root:
        return f"{root.rstrip('/')}{static_url}"
    return _nginx_word(location + rf"\balias\s+{_NGINX_WORD}\s*;", text)


def parse_nginx_conf(text: str, static_url: str = "/static/", media_url: str = MEDIA_URL) -> NginxConf:
    timeout = _match(r"^\s*proxy_read_timeout\s+(\d+)s?\s*;", text)
    upstream = _nginx_word(r'^\s*server\s+("unix:(?:[^"\\]|\\.)*"|unix:[^\s;"]+)', text)
    return NginxConf(
        client_max_body_size=_match(r"^\s*client_max_body_size\s+(\S+)\s*;", text),
        proxy_read_timeout=int(timeout) if timeout else None,
        static_dir=_static_dir(text, static_url),
        media_alias=_nginx_word(rf"location\s+{re.escape(media_url)}\s*\{{[^}}]*?\balias\s+{_NGINX_WORD}\s*;", text),
        upstream_socket=upstream.removeprefix("unix:") if upstream else None,
    )


def parse_gunicorn_conf(text: str) -> dict[str, object]:
    """The literal assignments of a gunicorn.conf.py (read, never executed)."""
    values: dict[str, object] = {}
    for node in ast.parse(text).body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            try:
                values[node.targets[0].id] = ast.literal_eval(node.value)
            except ValueError:
                continue
    return values


def parse_haproxy_timeouts(text: str) -> dict[str, int]:
    """`timeout NAME Ns` lines of haproxy.cfg, in seconds (ms and m units converted)."""
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "": 0.001}
    timeouts = {}
    for name, number, unit in re.findall(r"^\s*timeout\s+([\w-]+)\s+(\d+)(ms|s|m|h|)\s*$", text, re.MULTILINE):
        timeouts[name] = int(int(number) * units[unit])
    return timeouts


def sets_forwarded_proto(haproxy_cfg: str) -> bool:
    """Whether the balancer tells the app servers that the client came over HTTPS."""
    pattern = r"^\s*http-request\s+set-header\s+X-Forwarded-Proto\s+https\s*$"
    return re.search(pattern, haproxy_cfg, re.MULTILINE | re.IGNORECASE) is not None


@dataclass
class ServerFacts:
    name: str
    release: str | None = None
    health: str = ""
    """What a GET of the health path through this server's nginx answered ("HTTP 200 ok …" or the error)."""
    socket_exists: bool = False
    socket_error: str | None = None
    """None when the service user (as nginx runs) can connect to gunicorn's socket, else why not."""
    nginx: NginxConf | None = None
    gunicorn: dict[str, object] = field(default_factory=dict)
    static: dict[str, int | str] = field(default_factory=dict)
    """Static URL -> HTTP status (or error) when fetched directly from this server's nginx."""
    media_served: str | None = None
    """The directory nginx's /media/ alias resolves to (a link that a restore switches with the database)."""
    media_probe: int | str | None = None
    """HTTP status of a file just written to the live media directory, fetched from this server's nginx."""
    settings: dict | None = None
    settings_error: str | None = None


@dataclass
class CsrfFacts:
    path: str | None = None
    tried: tuple[str, ...] = ()
    get_status: int | str | None = None
    token_found: bool = False
    post_status: int | str | None = None
    post_reason: str = ""


@dataclass
class CertificateFacts:
    days_left: float | None = None
    names: tuple[str, ...] = ()
    issued_by_ca: bool = False
    error: str | None = None


@dataclass
class Facts:
    processes: dict[str, str] = field(default_factory=dict)
    """Supervised program -> its state (RUNNING, STOPPED, FATAL, …)."""
    balancer: dict[str, str] = field(default_factory=dict)
    """App server -> HAProxy's status for it (UP, DOWN, DRAIN, MAINT, …)."""
    database_ready: bool = False
    database: dict | None = None
    """max_connections, connections (pg_stat_activity rows) and now (UNIX time) as PostgreSQL reports them."""
    database_error: str | None = None
    media_dir: str = ""
    """The live media directory (live.json names it after a restore): where every server must save uploads."""
    haproxy_timeouts: dict[str, int] = field(default_factory=dict)
    haproxy_sets_forwarded_proto: bool | None = None
    """Whether haproxy.cfg on disk sets X-Forwarded-Proto https (None: the file could not be read)."""
    servers: list[ServerFacts] = field(default_factory=list)
    hosts: dict[str, int | str] = field(default_factory=dict)
    """Each domain -> the status of GET / through the balancer with that Host (400 = DisallowedHost)."""
    redirects: list[tuple[str, int | str]] = field(default_factory=list)
    """The chain from http://domain/ : (URL, status) per hop."""
    static_via_balancer: dict[str, int | str] = field(default_factory=dict)
    csrf: CsrfFacts = field(default_factory=CsrfFacts)
    certificate: CertificateFacts = field(default_factory=CertificateFacts)
    check_deploy: tuple[bool, str] | None = None
    clock_skew: dict[str, float] = field(default_factory=dict)
    """Host (or service) -> its clock minus this machine's, in seconds. More hosts, more entries."""


def _https(plan: Plan, method: str, path: str, domain: str | None = None, **kwargs) -> Response | str:
    domain = domain or plan.domains[0]
    return request(
        plan.balancer_bind, plan.https_port, f"{domain}:{plan.https_port}", method, path, tls_name=domain,
        ca_file=plan.local_ca_cert, **kwargs,
    )


def _direct(plan: Plan, server: AppServer, path: str) -> Response | str:
    """A GET straight to one app server's nginx, as the balancer sends it."""
    return request(
        server.address, server.port, plan.health_host, "GET", path, headers={"X-Forwarded-Proto": "https"}, timeout=5,
    )


def _status(answer: Response | str) -> int | str:
    return answer.status if isinstance(answer, Response) else answer


def release_settings(system: System, release: Release) -> dict:
    """The effective Django settings of a release, run with its Python and the production settings."""
    result = system.db_host.connector.run(
        [str(release.python), "-c", SETTINGS_SCRIPT], user=system.plan.service_user, env=release.environment(),
        cwd=release.app, timeout=60,
    )
    lines = result.stdout.strip().splitlines()
    if not result.ok or not lines:
        detail = (result.stderr.strip() or result.stdout.strip() or f"exit {result.returncode}").splitlines()[-1]
        raise DjshipError(detail)
    return json.loads(lines[-1])


def _server_facts(system: System, server: AppServer, settings_by_release: dict[str, dict | str]) -> ServerFacts:
    plan, connector = system.plan, system.db_host.connector
    facts = ServerFacts(server.name)
    _, facts.health = appserver.health(plan, server)
    facts.socket_exists = server.socket.is_socket()
    # The release's Python: the service user can run it (djship's own may live where that user cannot reach).
    python = server.release_link / "venv" / "bin" / "python"
    reach = connector.run([str(python), "-c", CONNECT_SCRIPT, str(server.socket)], user=plan.service_user, timeout=10)
    if not reach.ok:
        lines = reach.stderr.strip().splitlines()
        facts.socket_error = lines[-1] if lines else f"exit {reach.returncode}"
    if (text := connector.get(server.nginx_conf)) is not None:
        facts.nginx = parse_nginx_conf(text.decode())
        if facts.nginx.media_alias:
            facts.media_served = os.path.realpath(facts.nginx.media_alias)
    if (text := connector.get(server.gunicorn_conf)) is not None:
        try:
            facts.gunicorn = parse_gunicorn_conf(text.decode())
        except SyntaxError:
            facts.gunicorn = {}
    if server.release_link.is_symlink() and server.release_link.resolve().is_dir():
        release = Release.at(server.release_link.resolve())
        facts.release = release.id
        if release.id not in settings_by_release:
            try:
                settings_by_release[release.id] = release_settings(system, release)
            except (DjshipError, ValueError) as error:
                settings_by_release[release.id] = str(error)
        found = settings_by_release[release.id]
        if isinstance(found, dict):
            facts.settings = found
        else:
            facts.settings_error = found
    else:
        facts.settings_error = f"{server.release_link} does not point at a release"
    return facts


def _static_paths(home: Response | str, release: Release | None) -> list[str]:
    """The static files the home page references; else one collected file, so there is always something to fetch."""
    paths: list[str] = []
    if isinstance(home, Response):
        for path in _STATIC_REFERENCE.findall(home.body.decode(errors="replace")):
            if path not in paths:
                paths.append(path)
    if not paths and release is not None and release.static.is_dir():
        collected = sorted(path for path in release.static.rglob("*") if path.is_file())
        if collected:
            paths.append("/static/" + collected[0].relative_to(release.static).as_posix())
    return paths[:MAX_STATIC_PROBES]


def _media_probe(system: System, facts: Facts) -> None:
    """Write a file into the live media directory, fetch it from every app server's nginx, delete it."""
    plan = system.plan
    name = f"djship-doctor-{secrets.token_hex(6)}.txt"
    probe = Path(facts.media_dir) / name
    try:
        system.db_host.connector.put(probe, "djship doctor probe\n", owner=plan.service_user)
    except OSError as error:
        for server_facts in facts.servers:
            server_facts.media_probe = f"cannot write {probe}: {error.strerror}"
        return
    try:
        for server, server_facts in zip(plan.app_servers, facts.servers):
            server_facts.media_probe = _status(_direct(plan, server, f"{MEDIA_URL}{name}"))
    finally:
        probe.unlink(missing_ok=True)


def _csrf_round_trip(plan: Plan, form_path: str | None) -> CsrfFacts:
    """GET a page with a CSRF-protected form through the balancer, then POST it back as a browser does."""
    facts = CsrfFacts(tried=(form_path,) if form_path else DEFAULT_FORM_PATHS)
    for path in facts.tried:
        page = _https(plan, "GET", path)
        facts.path, facts.get_status = path, _status(page)
        if isinstance(page, Response) and page.status == 200 and "csrftoken" in page.cookies():
            break
    else:
        return facts
    cookie = page.cookies()["csrftoken"]
    field_token = _CSRF_INPUT.search(page.body.decode(errors="replace"))
    facts.token_found = field_token is not None
    token = field_token.group(1) if field_token else cookie
    origin = f"https://{plan.domains[0]}:{plan.https_port}"
    body = urllib.parse.urlencode({
        "csrfmiddlewaretoken": token, "username": "djship-doctor", "password": secrets.token_urlsafe(16),
    }).encode()
    answer = _https(plan, "POST", facts.path, body=body, headers={
        "Cookie": f"csrftoken={cookie}", "Origin": origin, "Referer": origin + facts.path,
        "Content-Type": "application/x-www-form-urlencoded",
    })
    facts.post_status = _status(answer)
    if isinstance(answer, Response) and answer.status == 403:
        reason = re.search(r"<p>(CSRF verification failed[^<]*)</p>|Reason given[^:]*:</p>\s*<pre>\s*([^<]+)", answer.body.decode(errors="replace"))
        facts.post_reason = " ".join(part.strip() for part in (reason.groups() if reason else ()) if part)
    return facts


def _redirect_chain(plan: Plan) -> list[tuple[str, int | str]]:
    """Follow redirects from http://domain/ (as a browser typing the name does), at most MAX_REDIRECTS hops or
    until a URL comes round again."""
    domain = plan.domains[0]
    url = f"http://{domain}:{plan.http_port}/"
    chain: list[tuple[str, int | str]] = []
    for _ in range(MAX_REDIRECTS + 1):
        if url in (seen for seen, _ in chain):  # sent back to a URL already visited: a loop
            chain.append((url, "again"))
            break
        parts = urllib.parse.urlsplit(url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
        path = parts.path + (f"?{parts.query}" if parts.query else "")
        if parts.hostname not in plan.domains or port not in (plan.http_port, plan.https_port):
            chain.append((url, "leaves the site"))
            break
        answer = request(
            plan.balancer_bind, port, parts.netloc, "GET", path or "/",
            tls_name=parts.hostname if parts.scheme == "https" else None, ca_file=plan.local_ca_cert,
        )
        chain.append((url, _status(answer)))
        if not isinstance(answer, Response) or answer.status not in (301, 302, 303, 307, 308):
            break
        url = urllib.parse.urljoin(url, answer.header("Location") or "/")
    return chain


def _certificate(plan: Plan) -> CertificateFacts:
    """The certificate HAProxy actually serves, read over TLS (unverified, so an expired one is still read)."""
    facts = CertificateFacts()
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    try:
        with socket.create_connection((plan.balancer_bind, plan.https_port), timeout=5) as raw:
            with context.wrap_socket(raw, server_hostname=plan.domains[0]) as tls:
                der = tls.getpeercert(binary_form=True)
    except (OSError, ssl.SSLError) as error:
        facts.error = describe_error(error)
        return facts
    certificate = x509.load_der_x509_certificate(der)
    facts.days_left = (certificate.not_valid_after_utc.timestamp() - time.time()) / 86400
    try:
        names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        facts.names = tuple(names.get_values_for_type(x509.DNSName))
    except x509.ExtensionNotFound:
        facts.names = ()
    if plan.local_ca_cert is None:  # acme or files mode: a public CA, checked by the HTTPS requests above
        return facts
    try:
        authority = x509.load_pem_x509_certificate(plan.local_ca_cert.read_bytes())
        certificate.verify_directly_issued_by(authority)
        facts.issued_by_ca = True
    except (OSError, ValueError, TypeError, InvalidSignature):
        facts.issued_by_ca = False
    return facts


def _database(system: System, facts: Facts) -> None:
    facts.database_ready = system.database.is_ready()
    if not facts.database_ready:
        return
    try:
        facts.database = system.database.observe(system.secrets().superuser_password)
        facts.clock_skew["postgres"] = facts.database["now"] - facts.database.pop("local_time")
    except (DjshipError, KeyError, ValueError, OSError) as error:
        facts.database_error = str(error)


def gather(system: System, form_path: str | None = None) -> Facts:
    plan = system.plan
    if not system.topology.one_machine:
        raise DjshipError("the doctor examines the one-machine target so far; on real hosts it is not built yet")
    if system.db_host.supervisor.pid() is None:
        raise DjshipError("not running; `djship up` first")
    facts = Facts(media_dir=str(read_live(plan, system.db_host.connector).media))
    facts.processes = {name: status.state for name, status in system.db_host.supervisor.status().items()}
    facts.balancer = {name: state.status for name, state in balancer.Balancer(plan.paths.haproxy_socket).states().items()}
    _database(system, facts)
    if (text := system.db_host.connector.get(plan.paths.haproxy_conf)) is not None:
        facts.haproxy_timeouts = parse_haproxy_timeouts(text.decode())
        facts.haproxy_sets_forwarded_proto = sets_forwarded_proto(text.decode())
    settings_by_release: dict[str, dict | str] = {}
    facts.servers = [_server_facts(system, server, settings_by_release) for server in plan.app_servers]
    for domain in plan.domains:
        facts.hosts[domain] = _status(_https(plan, "GET", "/", domain))
    home = _https(plan, "GET", "/")
    if isinstance(home, Response) and (date := home.header("Date")):
        # HTTP dates have one-second resolution; the app server's clock, as Django's response carries it.
        facts.clock_skew["app servers (HTTP Date)"] = email.utils.parsedate_to_datetime(date).timestamp() - time.time()
    static_paths = _static_paths(home, system.current())
    for path in static_paths:
        facts.static_via_balancer[path] = _status(_https(plan, "GET", path))
        for server, server_facts in zip(plan.app_servers, facts.servers):
            server_facts.static[path] = _status(_direct(plan, server, path))
    _media_probe(system, facts)
    facts.redirects = _redirect_chain(plan)
    facts.csrf = _csrf_round_trip(plan, form_path)
    facts.certificate = _certificate(plan)
    release = system.current()
    if release is None:
        facts.check_deploy = (False, "there is no live release; `djship up` first")
    else:
        result = system.db_host.connector.run(
            [str(release.python), str(release.app / "manage.py"), "check", "--deploy", "--fail-level", "WARNING"],
            user=plan.service_user, env=release.environment(), cwd=release.app, timeout=120)
        facts.check_deploy = (result.ok, (result.stderr.strip() or result.stdout.strip()))
    return facts

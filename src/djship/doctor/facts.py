"""What `djship doctor` observes on the running system, on each host through its connector: the config files
actually there, each host's supervisor, the balancer's view, each app server's effective Django settings, its socket
and what it answers to a balancer host, PostgreSQL as psql on the db host sees it, each host's clock; and real
HTTP(S) requests from this machine through the balancer, as a browser sends them.

Nothing here judges; checks.py does. Every probe records what it saw (or the error it got) instead of raising,
so one broken part never hides the others.
"""

from __future__ import annotations

import ast
import hashlib
import json
import math
import re
import secrets
import socket
import ssl
import time
import urllib.parse
from dataclasses import dataclass, field, replace
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature

from djship import render
from djship.components import appserver
from djship.components.probe import Response, describe_error, request
from djship.components.jobs import JobReport
from djship.components.pgbackrest import LAST_ARCHIVED
from djship.connectors import on_each
from djship.deploy.live import read_live
from djship.deploy.release import Release
from djship.errors import DjshipError
from djship.plan import MEDIA_URL, AppServer, Plan
from djship.system import System
from djship.topology import Host

# Pages tried, in order, for the CSRF round trip when --form-path is not given: the first that answers 200 and sets
# the csrftoken cookie is used. Django's auth views and the admin's login page both render a CSRF-protected form.
DEFAULT_FORM_PATHS = ("/accounts/login/", "/admin/login/")
MAX_REDIRECTS = 10
MAX_STATIC_PROBES = 5

# Run with the release's Python and production settings, as a server's gunicorn loads them; prints the settings the
# doctor judges, as JSON. The SECRET_KEY itself never leaves the process: only a short hash of it, to compare servers.
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
# Run as the user nginx's workers run as: can it connect to gunicorn's socket?
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
    host: str = ""
    """The host of the topology it runs on."""
    release: str | None = None
    health: str = ""
    """What a GET of the health path through this server's nginx, from a balancer host, answered ("HTTP 200 ok …"
    or the error)."""
    socket_exists: bool = False
    socket_error: str | None = None
    """None when nginx's workers' user can connect to gunicorn's socket, else why not."""
    nginx: NginxConf | None = None
    gunicorn: dict[str, object] = field(default_factory=dict)
    static: dict[str, int | str] = field(default_factory=dict)
    """Static URL -> HTTP status (or error) when fetched through this server's nginx from a balancer host."""
    media_dir: str = ""
    """The live media directory on its host (live.json names it after a restore): where its uploads must go."""
    media_served: str | None = None
    """The directory nginx's /media/ alias resolves to (a link that a restore switches with the database)."""
    media_probe: int | str | None = None
    """HTTP status of a file just written to its host's live media directory, fetched through this server's nginx."""
    media_elsewhere: dict[str, int | str] = field(default_factory=dict)
    """Each other app host -> the HTTP status, through this server, of a file just written to that host's media
    directory (200 everywhere when the app hosts share their uploads)."""
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
    programs: dict[str, tuple[str, ...]] = field(default_factory=dict)
    """Host -> the programs its plan runs (what djship.toml asks of it)."""
    processes: dict[str, dict[str, str] | None] = field(default_factory=dict)
    """Host -> each program its supervisor runs -> its state (RUNNING, STOPPED, FATAL, …); None when the host's
    supervisor itself is not running."""
    balancer: dict[str, dict[str, str]] = field(default_factory=dict)
    """Lb host -> app server -> HAProxy's status for it (UP, DOWN, DRAIN, MAINT, …)."""
    database_ready: bool = False
    database: dict | None = None
    """max_connections and connections (pg_stat_activity rows) as PostgreSQL reports them."""
    database_error: str | None = None
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
    jobs: list[JobReport] = field(default_factory=list)
    """Each job of [jobs] with its last run, as recorded in the live database."""
    jobs_error: str | None = None
    """Host -> its clock minus this machine's, in seconds, at least (the time a question takes to reach the host
    and come back is given to the host's favour)."""
    redis_reply: str | None = None
    archive_verified: dict | None = None
    """backup.archive: the last `djship backup verify` as the db host recorded it (None: never run)."""
    """What Redis answered AUTH and PING from the first app host ("+OK +PONG"); None: no [redis]."""
    archiver: dict | None = None
    """backup.archive: the primary's pg_stat_archiver ({"last", "failed", "last_failed"}, epochs; None: not read)."""
    secret_key_sha256: str = ""
    """The same short hash of the SECRET_KEY djship keeps (secrets/app.json), to tell which server departs from it."""


def _https(plan: Plan, method: str, path: str, domain: str | None = None, **kwargs) -> Response | str:
    domain = domain or plan.domains[0]
    return request(
        plan.balancer_bind, plan.https_port, f"{domain}:{plan.https_port}", method, path, tls_name=domain,
        ca_file=plan.local_ca_cert, **kwargs,
    )


def _status(answer: Response | str) -> int | str:
    return answer.status if isinstance(answer, Response) else answer


def server_settings(host: Host, server: AppServer, release: Release) -> dict:
    """The effective Django settings of one app server, as its gunicorn loads them: on its host, with the release's
    Python, the production settings and the server's own live.json."""
    result = host.connector.run(
        render.with_app_environment(host.plan, [str(release.python), "-c", SETTINGS_SCRIPT]), user=host.plan.user_of("app"),
        env={**release.environment(), "DJSHIP_LIVE_FILE": str(server.live_file)}, cwd=release.app, timeout=60,
    )
    lines = result.stdout.strip().splitlines()
    if not result.ok or not lines:
        detail = (result.stderr.strip() or result.stdout.strip() or f"exit {result.returncode}").splitlines()[-1]
        raise DjshipError(detail)
    return json.loads(lines[-1])


def _server_facts(system: System, server: AppServer) -> ServerFacts:
    """What the server's own host shows of it: its socket, its config files, its release and settings."""
    host = system.host_of(server)
    connector, plan = host.connector, host.plan
    facts = ServerFacts(server.name, host.name, media_dir=str(read_live(plan, connector).media))
    facts.socket_exists = connector.run(["test", "-S", str(server.socket)]).ok
    # As nginx's workers connect, with the release's Python: every user can run it (djship's own may live where they
    # cannot reach).
    python = server.release_link / "venv" / "bin" / "python"
    try:
        reach = connector.run([str(python), "-c", CONNECT_SCRIPT, str(server.socket)], user=plan.user_of("web"),
                              timeout=30)
    except DjshipError as error:
        facts.socket_error = str(error)
    else:
        if not reach.ok:
            lines = reach.stderr.strip().splitlines()
            facts.socket_error = lines[-1] if lines else f"exit {reach.returncode}"
    if (text := connector.get(server.nginx_conf)) is not None:
        facts.nginx = parse_nginx_conf(text.decode())
        if facts.nginx.media_alias:
            resolved = connector.run(["realpath", "-m", "--", facts.nginx.media_alias])
            facts.media_served = resolved.stdout.strip() if resolved.ok else facts.nginx.media_alias
    if (text := connector.get(server.gunicorn_conf)) is not None:
        try:
            facts.gunicorn = parse_gunicorn_conf(text.decode())
        except SyntaxError:
            facts.gunicorn = {}
    release = system.release_of(server)
    if release is None:
        facts.settings_error = f"{server.release_link} does not point at a release"
        return facts
    facts.release = release.id
    try:
        facts.settings = server_settings(host, server, release)
    except (DjshipError, ValueError) as error:
        facts.settings_error = str(error)
    return facts


def _static_paths(home: Response | str, host: Host, release: Release | None) -> list[str]:
    """The static files the home page references; else one collected file of the live release on that host, so
    there is always something to fetch."""
    paths: list[str] = []
    if isinstance(home, Response):
        for path in _STATIC_REFERENCE.findall(home.body.decode(errors="replace")):
            if path not in paths:
                paths.append(path)
    if not paths and release is not None:
        found = host.connector.run(["find", str(release.static), "-type", "f"])
        collected = sorted(line for line in found.stdout.splitlines() if line) if found.ok else []
        if collected:
            paths.append("/static/" + Path(collected[0]).relative_to(release.static).as_posix())
    return paths[:MAX_STATIC_PROBES]


def _write_media_probes(system: System) -> dict[str, Path | str]:
    """One file written into each app host's live media directory: host -> that file, or why it could not be
    written."""

    def write(host: Host) -> Path | str:
        probe = read_live(host.plan, host.connector).media / f"djship-doctor-{secrets.token_hex(6)}.txt"
        # As the app writes an upload: as the service user (into a media host's mount, the SFTP user owns it).
        try:
            written = host.connector.run(["tee", str(probe)], user=host.plan.user_of("app"),
                                         input="djship doctor probe\n", timeout=30)
        except DjshipError as error:
            return f"cannot write {probe}: {error}"
        if not written.ok:
            reason = (written.stderr.strip() or f"exit code {written.returncode}").splitlines()[-1]
            return f"cannot write {probe}: {reason}"
        return probe

    return on_each(system.app_hosts, write)


def _through_servers(system: System, facts: Facts, static_paths: list[str]) -> None:
    """The health path, the static files and each app host's media probe, fetched through every app server's nginx
    from a balancer host (the only place the app servers accept requests from)."""
    lb = system.lb_hosts[0]
    probes = _write_media_probes(system)
    media = {host: f"{MEDIA_URL}{probe.name}" for host, probe in probes.items() if isinstance(probe, Path)}
    paths = [system.plan.health_path, *static_paths, *media.values()]

    def remove(host: Host) -> None:
        if host.name in media:
            host.connector.run(["rm", "-f", "--", str(probes[host.name])], user=host.plan.user_of("app"))

    def through(server: AppServer) -> list[tuple[int, str]]:
        try:
            return appserver.probe_from(lb.connector, lb.plan, system.plan, server, paths)
        except DjshipError as error:
            return [(0, str(error))] * len(paths)

    try:
        answers = on_each({server.name: server for server in system.plan.app_servers}, through)
    finally:
        on_each(system.app_hosts, remove)
    for seen in facts.servers:
        seen_by_path = {path: status or text for path, (status, text) in zip(paths, answers[seen.name])}
        status, text = answers[seen.name][0]
        seen.health = f"HTTP {status} {text}".strip() if status else text
        seen.static = {path: seen_by_path[path] for path in static_paths}
        for host, probe in probes.items():
            seen_there = seen_by_path[media[host]] if host in media else str(probe)
            if host == seen.host:
                seen.media_probe = seen_there
            else:
                seen.media_elsewhere[host] = seen_there


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
    except (DjshipError, ValueError) as error:
        facts.database_error = str(error)
    if system.db_host.plan.backup.archive is not None:
        try:
            facts.archiver = json.loads(system.database.admin_psql(system.secrets().superuser_password,
                                                                   "reading pg_stat_archiver", LAST_ARCHIVED))
        except (DjshipError, ValueError):
            facts.archiver = None
    if system.plan.jobs:
        try:
            facts.jobs = system.job_reports()
        except (DjshipError, ValueError) as error:
            facts.jobs_error = str(error)


def _processes(host: Host) -> dict[str, str] | None:
    if host.supervisor.pid() is None:
        return None
    return {name: status.state for name, status in host.supervisor.status().items()}


def _clock_skew(host: Host) -> float | None:
    """The host's clock minus this machine's: the least it can be, given how long the question took."""
    asked = time.time()
    try:
        theirs = float(host.connector.run(["date", "+%s.%N"], timeout=30).stdout.strip())
    except (DjshipError, ValueError):
        return None
    answered = time.time()
    skew = theirs - (asked + answered) / 2
    return math.copysign(max(0.0, abs(skew) - (answered - asked) / 2), skew)


def _live_release(system: System) -> tuple[Host, Release | None]:
    """The first app host and the live release on it (what `current` points at there)."""
    host = next(iter(system.app_hosts.values()))
    link = host.connector.readlink(host.plan.paths.current)
    return host, None if link is None else system.pipeline.on(host, link.name)


def _check_deploy(host: Host, release: Release | None) -> tuple[bool, str]:
    if release is None:
        return (False, "there is no live release; `djship up` first")
    try:
        result = host.connector.run(
            render.with_app_environment(host.plan, [str(release.python), str(release.app / "manage.py"), "check",
                                                    "--deploy", "--fail-level", "WARNING"]),
            user=host.plan.user_of("app"), env=release.environment(), cwd=release.app, timeout=120)
    except DjshipError as error:
        return (False, str(error))
    return (result.ok, (result.stderr.strip() or result.stdout.strip()))


def gather(system: System, form_path: str | None = None) -> Facts:
    plan = system.plan
    if plan.external:
        raise DjshipError("djship doctor checks the site through djship's own HAProxy, and balancer.external = true "
                          "runs none: not built for an external balancer yet; `djship status` shows what the app "
                          "servers see of it")
    processes = on_each(system.hosts, _processes)
    if all(view is None for view in processes.values()):
        raise DjshipError("not running; `djship up` first")
    facts = Facts(
        programs={name: tuple(program.name for program in render.programs(host.plan))
                  for name, host in system.hosts.items()},
        processes=processes,
        balancer={host.name: {name: state.status for name, state in instance.states().items()}
                  for host, instance in zip(system.lb_hosts, system.balancers)},
        secret_key_sha256=hashlib.sha256(system.secrets().secret_key.encode()).hexdigest()[:16],
    )
    _database(system, facts)
    facts.redis_reply = system.redis_reply()
    facts.archive_verified = system.status_of_archive_verification()
    lb = system.lb_hosts[0]
    if (text := lb.connector.get(lb.plan.paths.haproxy_conf)) is not None:
        facts.haproxy_timeouts = parse_haproxy_timeouts(text.decode())
        facts.haproxy_sets_forwarded_proto = sets_forwarded_proto(text.decode())
    facts.servers = list(on_each({server.name: server for server in plan.app_servers},
                                 lambda server: _server_facts(system, server)).values())
    # Requests from here go where a browser's go: to the first balancer host, trusting the CA kept on this machine.
    web = replace(system.control_plan, balancer_bind=lb.address)
    for domain in plan.domains:
        facts.hosts[domain] = _status(_https(web, "GET", "/", domain))
    home = _https(web, "GET", "/")
    app_host, release = _live_release(system)
    static_paths = _static_paths(home, app_host, release)
    for path in static_paths:
        facts.static_via_balancer[path] = _status(_https(web, "GET", path))
    _through_servers(system, facts, static_paths)
    facts.redirects = _redirect_chain(web)
    facts.csrf = _csrf_round_trip(web, form_path)
    facts.certificate = _certificate(web)
    facts.check_deploy = _check_deploy(app_host, release)
    skews = on_each(system.hosts, _clock_skew)
    facts.clock_skew = {name: skew for name, skew in skews.items() if skew is not None}
    return facts

"""The doctor's checks: pure functions from the plan (what should be) and the facts (what is) to a verdict with the
cause and the fix, named the way a Django developer searches for the problem."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime, timezone

from djship.doctor.facts import MAX_REDIRECTS, Facts, ServerFacts
from djship.plan import CONNECTION_HEADROOM, MEDIA_PROGRAM, SUPERUSER_RESERVED, Plan

PASS, WARN, FAIL = "pass", "warn", "fail"
CERT_WARN_DAYS = 14
CERT_FAIL_DAYS = 3
CLOCK_WARN_SECONDS = 2
CLOCK_FAIL_SECONDS = 60
CONNECTIONS_WARN_SHARE = 0.8
# Cache backends that keep their data inside one process (so: one per worker, one per server).
PER_PROCESS_CACHES = ("django.core.cache.backends.locmem.LocMemCache", "django.core.cache.backends.dummy.DummyCache")
PROXY_SSL_HEADER = ["HTTP_X_FORWARDED_PROTO", "https"]


@dataclass(frozen=True)
class CheckResult:
    id: str
    name: str
    status: str
    cause: str
    fix: str = ""

    def as_dict(self) -> dict:
        return asdict(self)


def _size(value: str | None) -> int | None:
    """nginx size syntax (10M, 512k, 1g, 100) in bytes."""
    if value is None or not re.fullmatch(r"\d+[kKmMgG]?", value):
        return None
    factor = {"k": 1024, "m": 1024**2, "g": 1024**3}.get(value[-1].lower(), 1)
    return int(value.rstrip("kKmMgG")) * factor


def _settings_problem(servers: list[ServerFacts]) -> str | None:
    missing = [f"{server.name}: {server.settings_error}" for server in servers if server.settings is None]
    return f"cannot read the live Django settings ({'; '.join(missing)})" if missing else None


_SETTINGS_FIX = "run `djship logs` and `djship manage -- check` to see why the release's settings do not load"

_NO_FORWARDED_PROTO = "haproxy.cfg does not set X-Forwarded-Proto https, so Django sees every request as plain http"

# (status, cause) or (status, cause, fix)
Verdict = tuple[str, ...]
CHECKS: list[Callable[[Plan, Facts], CheckResult]] = []


def check(check_id: str, name: str, *, needs_settings: bool = False):
    """Register a check under its id and the name a Django developer searches for. needs_settings: it reads the
    live Django settings, so it fails (naming why) when they could not be read from some app server."""

    def register(judge: Callable[[Plan, Facts], Verdict]) -> Callable[[Plan, Facts], CheckResult]:
        def run(plan: Plan, facts: Facts) -> CheckResult:
            if needs_settings and (problem := _settings_problem(facts.servers)):
                return CheckResult(check_id, name, FAIL, problem, _SETTINGS_FIX)
            status, cause, *fix = judge(plan, facts)
            return CheckResult(check_id, name, status, cause, fix[0] if fix else "")

        run.__name__ = judge.__name__
        CHECKS.append(run)
        return run

    return register


@check("components", "Component up/healthy")
def components(plan: Plan, facts: Facts) -> Verdict:
    problems = []
    on = (lambda host: f"{host}: ") if len(facts.programs) > 1 else (lambda host: "")
    for host, wanted in facts.programs.items():
        running = facts.processes.get(host)
        if running is None:
            problems.append(f"{on(host)}supervisord is not running, so none of {', '.join(wanted)} is")
            continue
        problems += [f"{on(host)}{program} is {running.get(program, 'not configured')}"
                     for program in wanted if running.get(program) != "RUNNING"]
    for host, view in facts.balancer.items():
        if (facts.processes.get(host) or {}).get("haproxy") != "RUNNING":
            continue
        balancer = f"the balancer on {host}" if len(facts.balancer) > 1 else "the balancer"
        problems += [f"{balancer} sees {server.name} {view.get(server.name, 'not listed')}"
                     for server in plan.app_servers if view.get(server.name) != "UP"]
    if not facts.database_ready:
        problems.append(f"PostgreSQL on {plan.database.endpoint} is not accepting connections")
    if problems:
        return (FAIL, "; ".join(problems),
            "see `djship logs COMPONENT` for why; `djship up` starts what is stopped")
    hosts = f" on {len(facts.programs)} hosts" if len(facts.programs) > 1 else ""
    return (PASS,
        f"{sum(map(len, facts.programs.values()))} processes running{hosts}, {len(plan.app_servers)} app servers UP "
        "in the balancer, PostgreSQL accepting")


@check("gunicorn-socket", "502 Bad Gateway: gunicorn socket")
def gunicorn_socket(plan: Plan, facts: Facts) -> Verdict:
    user = plan.user_of("web") or "the user djship runs as"
    problems = []
    for server, seen in zip(plan.app_servers, facts.servers):
        found_before = len(problems)
        if seen.nginx and seen.nginx.upstream_socket != str(server.socket):
            problems.append(f"{server.name}'s nginx proxies to {seen.nginx.upstream_socket} but gunicorn binds {server.socket}")
        if not seen.socket_exists:
            problems.append(f"{server.name}: gunicorn's socket {server.socket} does not exist (gunicorn is not running)")
        elif seen.socket_error:
            problems.append(f"{server.name}: nginx's user {user} cannot connect to {server.socket} ({seen.socket_error})")
        if seen.health.startswith(("HTTP 502", "HTTP 504")) and len(problems) == found_before:
            problems.append(f"{server.name}: nginx answers {seen.health.split()[1]} for the health check")
    if problems:
        return (
            FAIL, "; ".join(problems),
            f"the socket and its directory must be readable and writable by {user}, which nginx's workers run as; "
            "`djship up` restarts a stopped gunicorn, which recreates its socket",
        )
    return (PASS,
        f"nginx on every app server reaches gunicorn's socket as {user}")


def _bad(statuses: dict[str, int | str]) -> dict[str, int | str]:
    return {path: status for path, status in statuses.items() if status != 200}


@check("static-files", "Static files 404 with DEBUG=False")
def static_files(plan: Plan, facts: Facts) -> Verdict:
    problems = []
    for server, seen in zip(plan.app_servers, facts.servers):
        expected = f"{server.release_link}/static/"
        if seen.nginx and seen.nginx.static_dir != expected:
            problems.append(f"{server.name}'s nginx serves /static/ from {seen.nginx.static_dir}, not {expected}")
        if seen.settings and seen.release and not seen.settings["STATIC_ROOT"].rstrip("/").endswith(f"/{seen.release}/static"):
            problems.append(f"{server.name}: STATIC_ROOT is {seen.settings['STATIC_ROOT']}, outside its release")
        problems += [f"{server.name}'s nginx answers {status} for {path}" for path, status in _bad(seen.static).items()]
    problems += [f"the balancer answers {status} for {path}" for path, status in _bad(facts.static_via_balancer).items()]
    if problems:
        return (
            FAIL, "; ".join(problems),
            "with DEBUG = False Django serves no static files: nginx serves what collectstatic put in the release; "
            "check that the file is in a STATICFILES_DIRS or app static/ directory and deploy again (`djship deploy`)",
        )
    if not facts.static_via_balancer:
        return (WARN, "no static file found to fetch (the home page references none "
            "and collectstatic collected none)", "if your pages use static files, run `djship deploy`")
    return (PASS,
        f"{len(facts.static_via_balancer)} static file(s) served by nginx on every app server and "
        f"through the balancer: {', '.join(facts.static_via_balancer)}")


@check("allowed-hosts", "DisallowedHost", needs_settings=True)
def allowed_hosts(plan: Plan, facts: Facts) -> Verdict:
    problems = []
    for seen in facts.servers:
        hosts = seen.settings["ALLOWED_HOSTS"]
        missing = [domain for domain in plan.domains if domain not in hosts and "*" not in hosts
                   and not any(host.startswith(".") and domain.endswith(host) for host in hosts)]
        if missing:
            problems.append(f"{seen.name}: ALLOWED_HOSTS {hosts} lacks {', '.join(missing)}")
    problems += [f"GET / with Host {domain} answers {status}" for domain, status in facts.hosts.items()
                 if status == 400 or not isinstance(status, int)]
    if problems:
        return (
            FAIL, "; ".join(problems),
            "the domains belong in site.domains in djship.toml (djship sets ALLOWED_HOSTS from it); "
            "a project setting that overrides it after import wins; then `djship up` and `djship deploy`",
        )
    return (PASS,
        f"ALLOWED_HOSTS holds {', '.join(plan.domains)}; each answers through the balancer")


@check("csrf", "CSRF: Origin checking failed", needs_settings=True)
def csrf(plan: Plan, facts: Facts) -> Verdict:
    problems = []
    for seen in facts.servers:
        missing = [origin for origin in plan.origins if origin not in seen.settings["CSRF_TRUSTED_ORIGINS"]]
        if missing:
            problems.append(f"{seen.name}: CSRF_TRUSTED_ORIGINS lacks {', '.join(missing)}")
        if seen.settings["SECURE_PROXY_SSL_HEADER"] != PROXY_SSL_HEADER:
            problems.append(f"{seen.name}: SECURE_PROXY_SSL_HEADER is {seen.settings['SECURE_PROXY_SSL_HEADER']}, "
                            "so Django thinks requests arrive over http")
    trip = facts.csrf
    if trip.post_status == 403 and facts.haproxy_sets_forwarded_proto is False:
        problems.append(_NO_FORWARDED_PROTO)
    if trip.post_status == 403:
        problems.append(f"POST {trip.path} through the balancer answers 403 {trip.post_reason or 'CSRF verification failed'}")
    elif trip.post_status is not None and not isinstance(trip.post_status, int):
        problems.append(f"POST {trip.path} through the balancer failed: {trip.post_status}")
    fix = ("djship sets CSRF_TRUSTED_ORIGINS (https://<domain>:<port>) and SECURE_PROXY_SSL_HEADER, and the balancer "
           "sets X-Forwarded-Proto; a project setting that overrides them, or a balancer config edited by hand, "
           "breaks that: `djship up` rewrites the configuration")
    if problems:
        return (FAIL, "; ".join(problems), fix)
    if trip.post_status is None:
        return (WARN,
            f"settings are consistent, but no page with a CSRF form found at {', '.join(trip.tried)} "
            f"(last answered {trip.get_status}) to try a real POST",
            "pass `--form-path /a/page/with/a/form/` (it must set the csrftoken cookie)")
    return (PASS,
        f"a form POST to {trip.path} over HTTPS through the balancer passed CSRF "
        f"(HTTP {trip.post_status}); origins {', '.join(plan.origins)} trusted")


@check("redirect-loop", "Redirect loop")
def redirect_loop(plan: Plan, facts: Facts) -> Verdict:
    chain = facts.redirects
    hops = " → ".join(f"{url} ({status})" for url, status in chain)
    urls = [url for url, _ in chain]
    looping = len(set(urls)) < len(urls) or (len(chain) > MAX_REDIRECTS and chain[-1][1] in (301, 302, 303, 307, 308))
    fix_loop = ("Django redirects to https because it does not see the request as secure: the balancer must set "
                "X-Forwarded-Proto https and SECURE_PROXY_SSL_HEADER must name it; `djship up` rewrites both")
    if not chain:
        return (FAIL, "nothing was requested", "")
    if looping:
        hint = f"; {_NO_FORWARDED_PROTO}" if facts.haproxy_sets_forwarded_proto is False else ""
        return (FAIL, f"redirect loop: {hops}{hint}", fix_loop)
    last_url, last_status = chain[-1]
    if not isinstance(last_status, int):
        return (FAIL, f"the chain breaks: {hops}",
            "see `djship logs haproxy`; `djship up` starts a stopped balancer")
    if not last_url.startswith("https://"):
        return (FAIL, f"plain http is served without a redirect to https: {hops}",
            "the balancer's http frontend redirects to https; `djship up` rewrites haproxy.cfg")
    if last_status >= 500:
        return (WARN, f"no loop, but the page answers {last_status}: {hops}",
            "see `djship logs`")
    return (PASS, f"no loop: {hops}")


@check("timeouts-body-size", "413/504: body size and timeouts")
def timeouts_and_body_size(plan: Plan, facts: Facts) -> Verdict:
    balancer_timeout = facts.haproxy_timeouts.get("server")
    problems = []
    sizes = {}
    for seen in facts.servers:
        gunicorn = seen.gunicorn.get("timeout")
        nginx = seen.nginx.proxy_read_timeout if seen.nginx else None
        if None in (balancer_timeout, nginx, gunicorn):
            problems.append(f"{seen.name}: cannot read every timeout (balancer {balancer_timeout}, nginx {nginx}, "
                            f"gunicorn {gunicorn})")
        elif not balancer_timeout > nginx > gunicorn:
            problems.append(f"{seen.name}: timeouts balancer {balancer_timeout}s, nginx {nginx}s, gunicorn {gunicorn}s "
                            "are not ordered balancer > nginx > gunicorn (an outer one gives up first: 504, or a "
                            "502 for a request gunicorn is still working on)")
        sizes[seen.name] = seen.nginx.client_max_body_size if seen.nginx else None
    wanted = _size(plan.max_body_size)
    differing = {server: size for server, size in sizes.items() if _size(size) != wanted}
    if differing:
        listed = ", ".join(f"{server} {size}" for server, size in differing.items())
        problems.append(f"client_max_body_size differs from app.max_body_size {plan.max_body_size}: {listed} "
                        "(an upload answers 413 on some servers only)")
    if problems:
        return (
            FAIL, "; ".join(problems),
            "set app.timeout and app.max_body_size in djship.toml (djship derives gunicorn < nginx < balancer from "
            "them) instead of editing the generated files; `djship up` rewrites and applies them",
        )
    return (PASS,
        f"balancer {balancer_timeout}s > nginx {facts.servers[0].nginx.proxy_read_timeout}s > gunicorn "
        f"{facts.servers[0].gunicorn['timeout']}s; client_max_body_size {plan.max_body_size} on every "
        "app server" if facts.servers else "no app servers")


@check("connections", "Connection exhaustion")
def connections(plan: Plan, facts: Facts) -> Verdict:
    if facts.database is None:
        return (FAIL,
            f"cannot ask PostgreSQL for max_connections ({facts.database_error or 'not running'})",
            "check the server of database.url and `djship db password`" if plan.database.external else
            "see `djship logs postgres`; `djship up` starts it")
    maximum, open_now = facts.database["max_connections"], facts.database["connections"]
    per_server = [int(s.gunicorn.get("workers", 1)) * int(s.gunicorn.get("threads", 1)) for s in facts.servers]
    available = maximum - SUPERUSER_RESERVED
    if plan.pooler:
        needed = plan.connections_needed
        budget = (f"PgBouncer on {plan.pooler.app_hosts} app hosts x pool_size {plan.pooler.pool_size} + "
                  f"{CONNECTION_HEADROOM} headroom = {needed}, whatever the number of app servers")
        fix = (f"raise database.max_connections to at least {needed + SUPERUSER_RESERVED} or lower "
               "database.pool_size in djship.toml, then `djship up`")
    else:
        needed = sum(per_server) + CONNECTION_HEADROOM
        budget = (f"{len(per_server)} servers with {' + '.join(map(str, per_server))} workers x threads + "
                  f"{CONNECTION_HEADROOM} headroom = {needed}")
        fix = (f"raise max_connections on the server to at least {needed + SUPERUSER_RESERVED} (RDS: its parameter "
               "group) or lower app.servers/workers/threads in djship.toml, then `djship up`") \
            if plan.database.external else (f"raise database.max_connections to at least "
                                             f"{needed + SUPERUSER_RESERVED} or lower app.servers/workers/threads in "
                                             "djship.toml, then `djship up`")
    if needed > available:
        return (FAIL,
            f"{budget}, but PostgreSQL's max_connections {maximum} leaves {available}: under load "
            "Django gets 'FATAL: sorry, too many clients already'", fix)
    if open_now > CONNECTIONS_WARN_SHARE * available:
        return (WARN,
            f"{open_now} of {available} connections open now ({budget})",
            "look for connections held outside the app servers (`SELECT * FROM pg_stat_activity`)")
    return (PASS, f"{budget} ≤ {available} available (max_connections {maximum}); "
        f"{open_now} open now")


@check("redis", "Redis answers the app (REDIS_URL)")
def redis(plan: Plan, facts: Facts) -> Verdict:
    if plan.redis is None:
        return (PASS, "no [redis] in djship.toml: no Redis runs and the app gets no REDIS_URL")
    if facts.redis_reply == "+OK +PONG":
        return (PASS, f"Redis on {plan.redis.endpoint} answers PING with its password from the app's host")
    return (FAIL, f"Redis on {plan.redis.endpoint} did not answer PING with its password from the app's host: "
            f"{facts.redis_reply} (Celery and the cache fail with 'Error 111 connecting' or 'Authentication required')",
            "see `djship logs redis`; `djship up` starts it and puts its password back into redis.conf and REDIS_URL")


@check("secret-key", "SECRET_KEY per server", needs_settings=True)
def secret_key(plan: Plan, facts: Facts) -> Verdict:
    keys: dict[str, list[str]] = {}
    for seen in facts.servers:
        keys.setdefault(seen.settings["SECRET_KEY_SHA256"], []).append(seen.name)
    if len(keys) > 1:
        harm = ("sessions, CSRF tokens and password-reset links made on one server are rejected by another, so users "
                "are logged out at random")
        kept = keys.pop(facts.secret_key_sha256, None)
        if kept:
            odd = [name for names in keys.values() for name in names]
            cause = (f"{', '.join(odd)} {'uses' if len(odd) == 1 else 'use'} another SECRET_KEY than the one djship "
                     f"keeps, which {', '.join(kept)} {'uses' if len(kept) == 1 else 'use'}: {harm}")
        else:
            groups = "; ".join(", ".join(names) for names in keys.values())
            cause = f"the app servers use {len(keys)} different SECRET_KEYs ({groups}): {harm}"
        return (FAIL, cause,
            f"every server must load the one key djship keeps ({plan.paths.app_secrets.relative_to(plan.paths.state)} "
            "on each app host): `djship up` puts back a secrets file changed on a host and restarts its servers; "
            "a SECRET_KEY set per server (environment, local settings) must go, then `djship deploy`")
    return (PASS, f"one SECRET_KEY on all {len(facts.servers)} app servers")


@check("cache-sessions", "Cache/sessions across servers", needs_settings=True)
def cache_and_sessions(plan: Plan, facts: Facts) -> Verdict:
    settings = facts.servers[0].settings if facts.servers else None
    if settings is None:
        return (FAIL, "no app servers", "")
    engine = settings["SESSION_ENGINE"].rsplit(".", 1)[-1]
    session_cache = settings["CACHES"].get(settings["SESSION_CACHE_ALIAS"], {}).get("BACKEND", "")
    default_cache = settings["CACHES"].get("default", {}).get("BACKEND", "")
    servers = len(facts.servers)
    described = f"SESSION_ENGINE {settings['SESSION_ENGINE']}, default cache {default_cache}"
    if servers == 1:
        return (PASS, f"one app server; {described}")
    fix = ("use database sessions (django.contrib.sessions.backends.db, Django's default) or signed cookies, and a "
           "cache every server shares (Redis, Memcached or DatabaseCache) in your settings; then `djship deploy`")
    if engine == "file":
        return (FAIL,
            f"file sessions ({settings['SESSION_FILE_PATH']}) with {servers} app servers: a user "
            "logged in on one server is logged out on the next", fix)
    if engine == "cache" and session_cache in PER_PROCESS_CACHES:
        return (FAIL,
            f"sessions in a per-process cache ({session_cache}) with {servers} app servers: a session "
            "exists in one worker only, so users are logged out at random", fix)
    if engine == "cached_db" and session_cache in PER_PROCESS_CACHES:
        return (WARN,
            f"cached_db sessions in a per-process cache ({session_cache}): a logout on one server "
            "leaves the session cached on the others", fix)
    if default_cache in PER_PROCESS_CACHES:
        return (WARN,
            f"sessions are shared ({engine}), but the default cache {default_cache} is one per worker "
            f"on each of {servers} app servers: cache.set on one is not seen by another", fix)
    return (PASS, f"{described}: shared by all {servers} app servers")


@check("media", "Uploads on one server only", needs_settings=True)
def media(plan: Plan, facts: Facts) -> Verdict:
    problems = []
    for seen in facts.servers:
        shared = seen.media_dir
        if seen.settings["MEDIA_ROOT"].rstrip("/") != shared:
            problems.append(f"{seen.name}: MEDIA_ROOT is {seen.settings['MEDIA_ROOT']}, not the shared {shared}")
        if seen.media_served is None or seen.media_served.rstrip("/") != seen.settings["MEDIA_ROOT"].rstrip("/"):
            problems.append(f"{seen.name}: nginx serves /media/ from {seen.media_served}, but Django saves uploads to "
                            f"{seen.settings['MEDIA_ROOT']}")
        if seen.media_probe != 200:
            problems.append(f"{seen.name}: a file just written to {shared} answers {seen.media_probe} at /media/")
    if problems:
        return (FAIL, "; ".join(problems),
            "uploads must go to the live media directory of the server's host (.djship/shared/media, or the one "
            "live.json names after a restore), which its nginx serves; remove a MEDIA_ROOT override set after "
            "djship's settings and `djship up`")
    apart: dict[str, list[str]] = {}
    for seen in facts.servers:
        for host, status in seen.media_elsewhere.items():
            if status != 200:
                apart.setdefault(host, []).append(seen.name)
    if apart:
        unseen = "; ".join(f"a file written on {host} is not served by {', '.join(names)}" for host, names in apart.items())
        if plan.media is None:
            return (WARN,
                f"{unseen}: each app host keeps its own media directory, so an upload exists on the host that "
                "received it only", "give the app hosts a media host (servers.media in djship.toml), then `djship up`")
        return (FAIL,
            f"{unseen}: not every app host sees the uploads on the media host {plan.media.host}, so an upload exists "
            "on some app hosts only",
            f"`djship status` shows whether {MEDIA_PROGRAM} runs on every app host; `djship up` mounts the media "
            "host's uploads again")
    directories = {seen.media_dir for seen in facts.servers}
    where = directories.pop() if len(directories) == 1 else "its host's media directory"
    return (PASS, f"every app server saves uploads to {where} and serves a file written there at /media/"
            + (", also one written on every other app host" if any(s.media_elsewhere for s in facts.servers) else ""))


@check("certificate", "Certificate expiry")
def certificate(plan: Plan, facts: Facts) -> Verdict:
    seen = facts.certificate
    fix = {
        "local": "`djship up` reissues the site certificate (it renews 30 days before expiry) and reloads the balancer",
        "acme": "`djship certs renew --force` orders a new certificate; `djship status` shows why the timer failed",
        "files": "point tls.cert_file and tls.key_file at a current certificate and run `djship up`",
    }[plan.tls.mode]
    if seen.error or seen.days_left is None:
        return (FAIL, f"cannot read the certificate the balancer serves: {seen.error}",
            "see `djship logs haproxy`")
    problems = []
    missing = [domain for domain in plan.domains if domain not in seen.names]
    if missing:
        problems.append(f"it does not name {', '.join(missing)} (it names {', '.join(seen.names) or 'nothing'})")
    if plan.local_ca_cert and not seen.issued_by_ca:
        problems.append(f"it is not signed by djship's CA {plan.local_ca_cert}")
    days = seen.days_left
    if days < 0:
        problems.append(f"it expired {-days:.0f} days ago")
    elif days < CERT_FAIL_DAYS:
        problems.append(f"it expires in {days:.1f} days")
    if problems:
        return (FAIL, "the balancer's certificate: " + "; ".join(problems), fix)
    if days < CERT_WARN_DAYS:
        return (WARN, f"the balancer's certificate expires in {days:.0f} days", fix)
    return (PASS,
        f"{days:.0f} days left on the certificate for {', '.join(seen.names)}")


@check("check-deploy", "check --deploy")
def check_deploy(plan: Plan, facts: Facts) -> Verdict:
    if facts.check_deploy is None:
        return (FAIL, "manage.py check --deploy did not run", "")
    ok, output = facts.check_deploy
    if ok:
        return (PASS, "manage.py check --deploy: no issues in the live release")
    issues = [line.strip() for line in output.splitlines() if re.match(r"^\s*\S+: \((security|[a-z_]+)\.[WE]\d+\)", line)]
    return (FAIL,
        "manage.py check --deploy in the live release: " + ("; ".join(issues) or output.splitlines()[-1]),
        "fix the settings it names in your project (or djship.toml) and `djship deploy`; "
        "`djship manage -- check --deploy` shows the full output")


# A day's schedule and its backup's own time, with room: beyond it the daily verification did not happen.
STALE_VERIFICATION_HOURS = 36


@check("archive-verified", "Backups that restore (backup.archive)")
def archive_verified(plan: Plan, facts: Facts) -> Verdict:
    if plan.backup.archive is None:
        return (PASS, "no archive (backup.archive is off): nothing to verify")
    verified = facts.archive_verified
    fix = "run `djship backup verify`; if it fails, take a new full backup with `djship backup` and look at `djship logs postgres`"
    if verified is None:
        return (WARN, "the archive's backups were never verified", fix)
    if not verified["ok"]:
        return (FAIL, f"the verification of backup {verified['backup']} at {verified['at']} failed: "
                      f"{verified['problem']}", fix)
    hours = (datetime.now(timezone.utc) - datetime.fromisoformat(verified["at"])).total_seconds() / 3600
    if plan.backup.schedule and hours > STALE_VERIFICATION_HOURS:
        return (WARN, f"the last verification (backup {verified['backup']}) was {hours:.0f} hours ago, though the daily "
                      "backup verifies each one it takes", "see `djship logs backup-scheduler`")
    return (PASS, f"backup {verified['backup']} restored and counted ({verified['tables']} tables) at {verified['at']}")


@check("archiving", "WAL archived continuously (backup.archive)")
def archiving(plan: Plan, facts: Facts) -> Verdict:
    if plan.backup.archive is None:
        return (PASS, "no archive (backup.archive is off)")
    archiver = facts.archiver
    if archiver is None:
        return (WARN, "the primary's pg_stat_archiver could not be read", "see the database check")
    last, failed = archiver.get("last"), archiver.get("last_failed")
    if failed is not None and (last is None or failed > last):
        since = "nothing archived yet" if last is None else f"the last segment archived at {_utc_time(last)}"
        target = plan.backup.target
        fix = "`djship logs postgres` shows pgBackRest's error"
        if target is not None:
            fix = (f"check that the db host mounts the archive (`djship status`: archive-mount mounted; `djship up` "
                   f"starts it) and that the backup host {target.host} answers; " + fix)
        return (FAIL, f"archive_command is failing ({archiver['failed']} failures, the last at {_utc_time(failed)}; "
                      f"{since}): the archive is behind, the WAL since then waits in pg_wal and a restore cannot "
                      "reach past that time", fix)
    if last is None:
        return (WARN, "no WAL segment archived yet", "`djship up` runs `pgbackrest check`, which archives one")
    return (PASS, f"the last WAL segment archived at {_utc_time(last)}, no failure since")


def _utc_time(epoch: float) -> str:
    return datetime.fromtimestamp(float(epoch), timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


@check("clock-skew", "Clock skew")
def clock_skew(plan: Plan, facts: Facts) -> Verdict:
    if not facts.clock_skew:
        return (WARN, "no host's clock could be read", "")
    described = ", ".join(f"{host} {skew:+.1f}s" for host, skew in facts.clock_skew.items())
    # Every pair of clocks counts (a token signed on one host, checked on another), this machine's among them.
    clocks = [0.0, *facts.clock_skew.values()]
    spread = max(clocks) - min(clocks)
    fix = "run NTP (chrony or systemd-timesyncd) on every host"
    if spread > CLOCK_FAIL_SECONDS:
        return (FAIL, f"clocks differ by up to {spread:.0f}s: {described} against this machine's (sessions, "
            "signed tokens and certificates expire early or late)", fix)
    if spread > CLOCK_WARN_SECONDS:
        return (WARN, f"clocks differ by up to {spread:.1f}s: {described} against this machine's", fix)
    return (PASS, f"clocks agree with this machine's: {described}")


@check("jobs", "Scheduled jobs")
def jobs(plan: Plan, facts: Facts) -> Verdict:
    if not plan.jobs:
        return (PASS, "no [jobs] in djship.toml")
    if facts.jobs_error or not facts.database_ready:
        return (FAIL, f"cannot read the runs of [jobs]: {facts.jobs_error or 'PostgreSQL is not ready'}",
                "see the database check; `djship logs jobs` shows what the schedulers say")
    logs = "`djship logs jobs` shows its output"
    failing = [f"{report.name} exited {report.finished.exit_code} in its run of {report.finished.slot} on "
               f"{report.finished.host}" for report in facts.jobs if report.failing]
    missed = [f"{report.name} did not run at {report.missed} ({report.schedule}) on any host"
              for report in facts.jobs if report.missed]
    if failing:
        return (FAIL, "a job fails: " + "; ".join(failing),
                f"{logs}; fix the command or the code it runs and `djship deploy`")
    if missed:
        return (FAIL, "a job has not run when it should have: " + "; ".join(missed),
                f"check that the jobs program runs on the app hosts (`djship status`) and can reach PostgreSQL; {logs}")
    ran = ", ".join(f"{report.name} {report.last_run.slot if report.last_run else 'not yet'}" for report in facts.jobs)
    return (PASS, f"every job ran its latest slot and exited 0 (last runs: {ran})")


def evaluate(plan: Plan, facts: Facts) -> list[CheckResult]:
    return [check(plan, facts) for check in CHECKS]

"""djship against the stacks a user would otherwise build, side by side in one run on this machine.

    python benchmarks/peers.py [--duration 10] [--connections 32] [--repeat 3]

Deploys a copy of examples/board with the real `djship up` (https://localhost:25443), puts 10 posts in its
database, then serves that same release, database and rows from each stack below, rebuilt here from its
documented defaults without Docker, and loads three pages of each with wrk (interleaved rounds, medians shown):
the db page (/api/posts/, 10 rows and their comment counts), a plain page (/accounts/login/, a template, no
query) and a static file (admin's base.css). Every stack runs the release's own Django with djship's production
settings, changed only where the stack's defaults differ (CONN_MAX_AGE, static files); everything listens on
loopback (ports 26001-26031), and every process started here is stopped here, by PID.

  djship        HAProxy (TLS) -> 2 x (nginx -> gunicorn, 3 sync workers on a unix socket), CONN_MAX_AGE 60
  beanstalk     Elastic Beanstalk's Python platform: nginx -> gunicorn 1 process x 15 threads (gthread) on
                127.0.0.1, CONN_MAX_AGE Django's default (0); nginx serves /static/. TLS ends at the load
                balancer, for which HAProxy (TLS) stands in.
                Sources (awsdocs/aws-elastic-beanstalk-developer-guide): doc_source/create-deploy-python-container.md
                (Gunicorn the default WSGI server on Amazon Linux 2, nginx the default proxy, /static served by
                the proxy), doc_source/command-options-specific.md (aws:elasticbeanstalk:container:python:
                NumProcesses default 1, NumThreads default 15), doc_source/python-configuration-procfile.md (the
                WSGI server listens on port 8000 behind the proxy); gunicorn runs threads > 1 with gthread.
  tutorial      DigitalOcean's "How To Set Up Django with Postgres, Nginx, and Gunicorn on Ubuntu":
                gunicorn --access-logfile - --workers 3 --bind unix:/run/gunicorn.sock (its gunicorn.service),
                nginx `location /static/ { root ...; }` and `location / { include proxy_params; proxy_pass
                http://unix:/run/gunicorn.sock; }`, TLS in that nginx (its follow-up "How To Secure Nginx with
                Let's Encrypt", certbot's options-ssl-nginx.conf: session cache, TLS 1.2/1.3); Debian's nginx.conf
                (worker_processes auto); CONN_MAX_AGE Django's default (0).
  cookiecutter  cookiecutter-django's production setup (cookiecutter/cookiecutter-django):
                compose/production/django/start runs `gunicorn config.wsgi --bind 0.0.0.0:5000` and
                .envs/.production/.django sets WEB_CONCURRENCY=4 (gunicorn: 4 sync workers);
                config/settings/production.py sets CONN_MAX_AGE = 60; Traefik terminates TLS and proxies to
                gunicorn directly (compose/production/traefik/traefik.yml), for which HAProxy (TLS) stands in;
                static files: WhiteNoise's middleware (its choice when cloud_provider is None; the default, AWS,
                serves them from S3, which has no local equivalent), with Django's default storage instead of
                CompressedManifestStaticFilesStorage because the release's files were collected without it.
  runserver     manage.py runserver --noreload --insecure (static files via django.contrib.staticfiles)
  gunicorn      the baseline: bare gunicorn, 6 sync workers on TCP, no nginx, no TLS (cannot serve static files)

Printed for each page and stack: req/s, p50, p99, the CPU time its processes spent per request (wrk's own left
out), and djship's ratios to it (req/s: djship / stack; p99: stack / djship; capacity, the req/s it could serve
with the cores to itself: stack's CPU per request / djship's; above 1 favours djship), with the machine it ran on.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from contextlib import ExitStack
from pathlib import Path

from common import (
    FORWARDED, PAGES, Deployment, Measurement, Target, bare_gunicorn, copy_example, destroy, djship, machine,
    measure, process, require_wrk, seed, load_options,
)

HTTPS_PORT = 25443
SETTINGS = {
    "balancer.https_port": HTTPS_PORT,
    "balancer.http_port": 25080,
    "database.port": 32432,
    "database.address": "127.8.2.1",
    "app.address_prefix": "127.8.1",
}
GUNICORN_PORT, RUNSERVER_PORT = 26001, 26002
BEANSTALK_TLS, BEANSTALK_NGINX, BEANSTALK_APP = 26010, 26011, 26012
TUTORIAL_TLS = 26020
COOKIECUTTER_TLS, COOKIECUTTER_APP = 26030, 26031
STACKS = ("djship", "beanstalk", "tutorial", "cookiecutter", "runserver", "gunicorn")
# Debian's /etc/nginx/mime.types: the peers' nginx configs include it, as Debian's nginx.conf does.
MIME_TYPES = "/etc/nginx/mime.types"


def settings_module(directory: Path, name: str, conn_max_age: int, whitenoise: bool = False) -> str:
    """djship's production settings with a stack's own CONN_MAX_AGE (and WhiteNoise), as module NAME in DIRECTORY."""
    lines = [
        "from djship_production.settings import *  # noqa: F403",
        f'DATABASES["default"]["CONN_MAX_AGE"] = {conn_max_age}',
        'DATABASES["default"]["CONN_HEALTH_CHECKS"] = False',
    ]
    if whitenoise:
        lines.append('MIDDLEWARE.insert(MIDDLEWARE.index("django.middleware.security.SecurityMiddleware") + 1, '
                     '"whitenoise.middleware.WhiteNoiseMiddleware")')
    (directory / f"{name}.py").write_text("\n".join(lines) + "\n")
    return name


def haproxy_tls(path: Path, port: int, upstream: str, pem: Path) -> Path:
    """The TLS proxy in front of a peer: what a load balancer or Traefik adds, with its defaults (keep-alive to
    the upstream, X-Forwarded-Proto set)."""
    path.write_text(f"""global
    maxconn 4096
defaults
    mode http
    timeout connect 5s
    timeout client 60s
    timeout server 60s
frontend tls
    bind 127.0.0.1:{port} ssl crt {pem} alpn h2,http/1.1
    http-request set-header X-Forwarded-Proto https
    http-request set-header X-Forwarded-For %[src]
    default_backend app
backend app
    server app {upstream}
""")
    return path


def nginx_conf(path: Path, user: str | None, server: str) -> Path:
    """Debian's nginx.conf (worker_processes auto, the mime types, sendfile) around one server block."""
    run = path.parent
    path.write_text(f"""{f"user {user};" if user else ""}
daemon off;
worker_processes auto;
pid {run}/nginx.pid;
error_log stderr warn;
events {{
    worker_connections 768;
}}
http {{
    sendfile on;
    tcp_nopush on;
    include {MIME_TYPES};
    default_type application/octet-stream;
    access_log {run}/access.log;
    client_body_temp_path {run}/client-body;
    proxy_temp_path {run}/proxy;
    fastcgi_temp_path {run}/fastcgi;
    uwsgi_temp_path {run}/uwsgi;
    scgi_temp_path {run}/scgi;
{server}
}}
""")
    return path


def beanstalk_nginx(run: Path, user: str | None, static: Path) -> Path:
    return nginx_conf(run / "nginx.conf", user, f"""    server {{
        listen 127.0.0.1:{BEANSTALK_NGINX};
        location /static/ {{
            alias {static}/;
        }}
        location / {{
            proxy_pass http://127.0.0.1:{BEANSTALK_APP};
            proxy_http_version 1.1;
            proxy_set_header Host $host;
            proxy_set_header X-Real-IP $remote_addr;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
        }}
    }}""")


def tutorial_nginx(run: Path, user: str | None, static: Path, socket: Path, pem: Path) -> Path:
    # proxy_params is Debian's /etc/nginx/proxy_params, written out; the ssl_* lines are certbot's.
    return nginx_conf(run / "nginx.conf", user, f"""    server {{
        listen 127.0.0.1:{TUTORIAL_TLS} ssl;
        server_name localhost;
        ssl_certificate {pem};
        ssl_certificate_key {pem};
        ssl_session_cache shared:le_nginx_SSL:10m;
        ssl_session_timeout 1440m;
        ssl_session_tickets off;
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_prefer_server_ciphers off;
        location = /favicon.ico {{ access_log off; log_not_found off; }}
        location /static/ {{
            alias {static}/;
        }}
        location / {{
            proxy_set_header Host $http_host;
            proxy_set_header X-Real-IP $remote_addr;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto $scheme;
            proxy_pass http://unix:{socket};
        }}
    }}""")


def install_whitenoise(directory: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--target", str(directory), "whitenoise"],
                            capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"pip could not install whitenoise for the cookiecutter stack:\n{result.stderr}")


def table(results: dict[tuple[str, str], Measurement]) -> str:
    lines = [
        "| page | stack | req/s | p50 ms | p99 ms | CPU ms/req | djship req/s ÷ this | this p99 ÷ djship p99 "
        "| djship capacity ÷ this |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for page in PAGES:
        ours = results[(page, "djship")]
        for stack in STACKS:
            if (page, stack) not in results:
                continue
            theirs = results[(page, stack)]
            lines.append(
                f"| {page} | {stack} | {theirs.requests_per_second:,.0f} | {theirs.p50_ms:.1f} | {theirs.p99_ms:.1f} "
                f"| {theirs.cpu_ms:.2f} | {ours.requests_per_second / theirs.requests_per_second:.2f}x "
                f"| {theirs.p99_ms / ours.p99_ms:.2f}x | {theirs.cpu_ms / ours.cpu_ms:.2f}x |"
            )
    return "\n".join(lines)


def start_peers(stack: ExitStack, deployment: Deployment, workdir: Path) -> set[int]:
    """Every peer's processes started; their PIDs."""
    started: set[int] = set()

    def start(*args, **kwargs) -> None:
        started.add(stack.enter_context(process(*args, **kwargs)).pid)

    user = deployment.user
    static = deployment.release / "static"
    pem = deployment.site_pem
    modules = workdir / "settings"
    modules.mkdir()
    packages = workdir / "packages"
    install_whitenoise(packages)
    default_age = settings_module(modules, "peer_default_conn_max_age", 0)
    cookiecutter = settings_module(modules, "peer_cookiecutter", 60, whitenoise=True)
    app = {"cwd": deployment.release / "app", "user": user}
    gunicorn = deployment.venv_bin("gunicorn")

    start(bare_gunicorn(deployment, GUNICORN_PORT), GUNICORN_PORT, deployment.env(), **app)
    start(
        [deployment.venv_bin("python"), "manage.py", "runserver", "--noreload", "--insecure",
         f"127.0.0.1:{RUNSERVER_PORT}"], RUNSERVER_PORT, deployment.env(), **app)

    start(
        [gunicorn, "board.wsgi:application", "--bind", f"127.0.0.1:{BEANSTALK_APP}", "--workers", "1",
         "--threads", "15", "--no-control-socket"], BEANSTALK_APP, deployment.env(default_age, modules), **app)
    beanstalk = workdir / "beanstalk"
    beanstalk.mkdir()
    start(["nginx", "-c", str(beanstalk_nginx(beanstalk, user, static)), "-e", "stderr"], BEANSTALK_NGINX)
    start(
        ["haproxy", "-db", "-f", str(haproxy_tls(beanstalk / "haproxy.cfg", BEANSTALK_TLS,
                                                 f"127.0.0.1:{BEANSTALK_NGINX}", pem))], BEANSTALK_TLS)

    tutorial = workdir / "tutorial"
    tutorial.mkdir()
    sockets = tutorial / "run"
    sockets.mkdir()
    if user:
        shutil.chown(sockets, user)
    socket = sockets / "gunicorn.sock"
    start(
        [gunicorn, "--access-logfile", "-", "--workers", "3", "--bind", f"unix:{socket}", "--no-control-socket",
         "board.wsgi:application"], socket, deployment.env(default_age, modules), **app)
    start(
        ["nginx", "-c", str(tutorial_nginx(tutorial, user, static, socket, pem)), "-e", "stderr"], TUTORIAL_TLS)

    start(
        [gunicorn, "board.wsgi:application", "--bind", f"127.0.0.1:{COOKIECUTTER_APP}", "--no-control-socket"],
        COOKIECUTTER_APP, {**deployment.env(cookiecutter, modules, packages), "WEB_CONCURRENCY": "4"}, **app)
    cookie = workdir / "cookiecutter"
    cookie.mkdir()
    start(
        ["haproxy", "-db", "-f", str(haproxy_tls(cookie / "haproxy.cfg", COOKIECUTTER_TLS,
                                                 f"127.0.0.1:{COOKIECUTTER_APP}", pem))], COOKIECUTTER_TLS)
    return started


def main() -> None:
    options = load_options(__doc__.split("\n\n")[0])
    require_wrk()
    context = machine(options.connections, options.duration, options.repeat)

    workdir = Path(tempfile.mkdtemp(prefix="djship-peers-"))
    deployment = copy_example(workdir, SETTINGS)
    try:
        print("djship up ...", flush=True)
        djship(deployment.project, "up")
        seed(deployment)
        targets = {
            "djship": Target(f"https://localhost:{HTTPS_PORT}", {}),
            "beanstalk": Target(f"https://localhost:{BEANSTALK_TLS}", {}),
            "tutorial": Target(f"https://localhost:{TUTORIAL_TLS}", {}),
            "cookiecutter": Target(f"https://localhost:{COOKIECUTTER_TLS}", {}),
            "runserver": Target(f"http://127.0.0.1:{RUNSERVER_PORT}", FORWARDED),
            "gunicorn": Target(f"http://127.0.0.1:{GUNICORN_PORT}", FORWARDED),
        }
        with ExitStack() as stack:
            serving = {deployment.supervisord, *start_peers(stack, deployment, workdir)}
            cases = [(page, target) for page in PAGES for target in STACKS
                     if not (target == "gunicorn" and page == "static file")]
            results = measure(cases, targets, options.repeat, options.duration, options.connections, deployment.ca,
                              serving)
    finally:
        destroy(deployment)
        shutil.rmtree(workdir, ignore_errors=True)

    print()
    print(context)
    print(table(results))


if __name__ == "__main__":
    main()

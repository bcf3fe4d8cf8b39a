"""Finding a Django project's parts (manage.py, settings, WSGI app, requirements) and writing djship.toml."""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path

import tomlkit

from djship.config import CONFIG_FILE
from djship.errors import DjshipError

REQUIREMENTS_CANDIDATES = (
    "requirements.txt",
    "requirements/production.txt",
    "requirements/prod.txt",
    "requirements/base.txt",
    "requirements/common.txt",
)


@dataclass(frozen=True)
class DjangoProject:
    root: Path
    settings_module: str
    wsgi_application: str
    requirements: str
    asgi_application: str | None = None


def _settings_module_from_manage_py(manage_py: Path) -> str:
    source = manage_py.read_text(encoding="utf-8")
    match = re.search(r"""DJANGO_SETTINGS_MODULE['"]\s*,\s*['"]([\w.]+)['"]""", source)
    if not match:
        raise DjshipError(
            f"{manage_py} does not set DJANGO_SETTINGS_MODULE; add "
            "os.environ.setdefault('DJANGO_SETTINGS_MODULE', 'mysite.settings') as startproject does"
        )
    return match.group(1)


def _module_file(root: Path, dotted: str) -> Path | None:
    base = root.joinpath(*dotted.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _settings_tree(root: Path, settings_module: str) -> tuple[Path, ast.Module]:
    settings_file = _module_file(root, settings_module)
    if settings_file is None:
        raise DjshipError(f"settings module {settings_module} (named in manage.py) has no file under {root}")
    try:
        return settings_file, ast.parse(settings_file.read_text(encoding="utf-8"))
    except SyntaxError as error:
        raise DjshipError(f"{settings_file}:{error.lineno}: syntax error: {error.msg}") from None


def _application(root: Path, settings_module: str, interface: str) -> str | None:
    """The WSGI or ASGI application (interface "wsgi" or "asgi"): the settings' WSGI_APPLICATION or ASGI_APPLICATION
    (ASGI_APPLICATION is Channels' setting), else <project package>.<interface>.application where that module exists,
    as startproject makes it; None when neither is there."""
    _, tree = _settings_tree(root, settings_module)
    setting = f"{interface.upper()}_APPLICATION"
    for node in tree.body:
        if (
            isinstance(node, ast.Assign)
            and any(isinstance(target, ast.Name) and target.id == setting for target in node.targets)
            and isinstance(node.value, ast.Constant)
            and isinstance(node.value.value, str)
        ):
            return node.value.value
    package = settings_module.rsplit(".", 1)[0] if "." in settings_module else settings_module
    candidate = f"{package.split('.')[0]}.{interface}"
    return f"{candidate}.application" if _module_file(root, candidate) else None


def _wsgi_application(root: Path, settings_module: str) -> str:
    found = _application(root, settings_module, "wsgi")
    if found is None:
        settings_file, _ = _settings_tree(root, settings_module)
        package = settings_module.rsplit(".", 1)[0] if "." in settings_module else settings_module
        raise DjshipError(f"cannot find the WSGI application: {settings_file} sets no WSGI_APPLICATION and "
                          f"{package.split('.')[0]}.wsgi does not exist")
    return found


def _requirements(root: Path) -> str:
    for candidate in REQUIREMENTS_CANDIDATES:
        if (root / candidate).is_file():
            return candidate
    raise DjshipError(
        f"no requirements file in {root} (looked for {', '.join(REQUIREMENTS_CANDIDATES)}); "
        "write one with `pip freeze > requirements.txt`"
    )


def discover(directory: Path) -> DjangoProject:
    root = directory.resolve()
    manage_py = root / "manage.py"
    if not manage_py.is_file():
        raise DjshipError(f"{root} is not a Django project (no manage.py); run djship init where manage.py is")
    settings_module = _settings_module_from_manage_py(manage_py)
    return DjangoProject(
        root=root,
        settings_module=settings_module,
        wsgi_application=_wsgi_application(root, settings_module),
        requirements=_requirements(root),
        asgi_application=_application(root, settings_module, "asgi"),
    )


def _toml_string(value: str) -> str:
    """value as a TOML string, escaped by tomlkit: text read from the project never becomes TOML of its own."""
    return tomlkit.string(value).as_string()


def _asgi_line(project: DjangoProject) -> str:
    if project.asgi_application is None:
        return '# asgi_application = "mysite.asgi.application"  # the ASGI callable, with app.interface = "asgi"'
    return f'asgi_application = {_toml_string(project.asgi_application)}  # served with app.interface = "asgi"'


def render_config(project: DjangoProject) -> str:
    """The commented djship.toml that `djship init` writes; every value shown is the default unless found."""
    return f'''# djship.toml: how djship runs this Django project in production.
# Written by `djship init`; every key below except [project] shows its default and may be removed.
# The system: HTTPS load balancer (HAProxy) -> N app servers (nginx -> gunicorn -> Django) -> PostgreSQL.

[project]
# Found by djship init; change them if they are wrong.
settings_module = {_toml_string(project.settings_module)}     # your settings; djship imports it and overrides production values
wsgi_application = {_toml_string(project.wsgi_application)}  # the WSGI callable gunicorn serves
{_asgi_line(project)}
requirements = {_toml_string(project.requirements)}          # installed into each release's virtualenv (plus gunicorn, psycopg)
# python = "python3.12"       # interpreter for the release virtualenv (default: the one running djship)

[site]
domains = ["localhost"]        # host names the site answers to (ALLOWED_HOSTS, CSRF_TRUSTED_ORIGINS, certificate)
# hsts_seconds = 63072000      # HSTS max-age; default 3600 for localhost, two years for real domains
# hsts_preload = true          # add `preload` to HSTS (public domains only; see hstspreload.org before you do)

[app]
# servers = 2                  # app servers per app host, each nginx + gunicorn (default: 2 where one host holds
                               # the app role, so a deploy never stops the site; 1 per host with several)
workers = 3                    # gunicorn worker processes per app server (sync workers)
threads = 1                    # threads per worker (more than 1 switches gunicorn to gthread)
# interface = "asgi"           # serve asgi_application with uvicorn workers (WebSockets); default "wsgi"
port = 8000                    # nginx port on each app server address
address_prefix = "127.0.1"     # app server i listens on 127.0.1.i
timeout = 30                   # seconds gunicorn gives a request; nginx and the balancer wait longer
max_body_size = "10M"          # largest request body (uploads) nginx accepts

[balancer]
bind = "127.0.0.1"
https_port = 8443              # the site: https://localhost:8443/
http_port = 8080               # answers 301 to HTTPS

[database]
address = "127.0.2.1"          # PostgreSQL's own address
port = 15432                   # keep below 32768 (Linux's ephemeral ports start there)
max_connections = 100          # must fit servers x workers x threads plus headroom
# name = "app"                  # database and role name (default: the project package's name)

[tls]
mode = "local"                 # local: djship's own CA (.djship/tls/ca.crt); acme: Let's Encrypt (or acme_directory);
                               # files: your own cert_file (chain) and key_file. See "HTTPS certificates" in the README.
# acme_directory = "https://acme-staging-v02.api.letsencrypt.org/directory"   # e.g. Let's Encrypt's staging CA
# acme_email = "you@example.com"
# cert_file = "certs/fullchain.pem"
# key_file = "certs/privkey.pem"

[deploy]
batch_size = 1                 # app servers switched to a new release at a time, or a share ("25%"); the rest keep serving
keep_releases = 5              # releases kept for `djship rollback`
health_timeout = 60            # seconds a switched server has to pass its health check before it is rolled back

[backup]
keep = 7                       # days of backups kept: the newest of each day, plus every backup of today
# dir = "/var/backups/mysite"  # where `djship backup` writes (default .djship/backups, which destroy deletes)
# schedule = "03:30"           # a daily backup at this UTC time, taken on the db host by its supervisor

# When djship runs as root, each component runs as its own unprivileged system user (created if missing), which
# owns only what that component writes; these are the defaults.
# [users]
# app = "djship-app"           # gunicorn and Django: reads its own secrets only, writes the uploads
# web = "djship-web"           # nginx's workers: read the static files and uploads, write nginx's temp files
# db = "djship-db"             # PostgreSQL: owns its data directory
# lb = "djship-lb"             # HAProxy: the only reader of the site's private key, owns its runtime socket

# Real hosts over SSH instead of this machine: name the hosts and their roles, then `djship up --install`.
# (Remove app.address_prefix, balancer.bind and database.address above: on hosts, their addresses say it.)
# One rented server holding every role is servers.lb = ["web1"], servers.app = ["web1"], servers.db = "web1".
# Behind a load balancer djship does not run (an AWS ALB): no servers.lb, and balancer.external = true with
# balancer.trusted and deploy.drain_seconds (see docs/aws.md).
# [servers]
# lb = ["lb1"]
# app = ["app1", "app2"]
# db = "db1"
# backup = "bk1"               # optional: a host that keeps every backup, off the db host's disk
# worker = ["wk1"]             # optional: hosts that run [processes] instead of the app hosts
#
# [ssh]
# key = "~/.ssh/id_ed25519"    # the key djship logs in with (as root, or a user with sudo -n)
#
# [hosts.lb1]
# address = "203.0.113.10"
# [hosts.app1]
# address = "203.0.113.11"
# [hosts.app2]
# address = "203.0.113.12"
# [hosts.db1]
# address = "203.0.113.13"
'''


def write_config(project: DjangoProject, force: bool) -> Path:
    path = project.root / CONFIG_FILE
    if path.exists() and not force:
        raise DjshipError(f"{path} already exists; edit it, or run `djship init --force` to overwrite it")
    path.write_text(render_config(project), encoding="utf-8")
    return path

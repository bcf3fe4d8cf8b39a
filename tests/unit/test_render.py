"""The rendered config files: golden files, properties that must hold, and the real programs accepting them.

Golden files: tests/golden/ holds the exact text each renderer produces for the `golden_plan` fixture
(project at /srv/example/board, 2 app servers, running as root). After an intended change to a template or the
plan, regenerate them and review the difference before committing it:

    DJSHIP_UPDATE_GOLDEN=1 python3 -m pytest tests/unit/test_render.py
    git diff tests/golden

With DJSHIP_UPDATE_GOLDEN=1 the golden tests write the files instead of comparing against them.

The real-tool tests run `nginx -t`, `haproxy -c` and supervisor's own config parser on files rendered into a
temporary state directory; they fail (they never skip) when nginx, HAProxy or PostgreSQL is not installed.
"""

from __future__ import annotations

import configparser
import dataclasses
import os
import re
import shlex
import stat
import subprocess
import sys
import types
from collections.abc import Callable
from pathlib import Path

import pytest
from supervisor.options import ServerOptions

from djship import render
from djship.connectors import Result
from djship.doctor.facts import parse_nginx_conf
from djship.logfile import append_result
from djship.plan import Plan
from djship.tls import local_ca
from djship.tools import BROTLI_MODULES

UPDATE_GOLDEN = os.environ.get("DJSHIP_UPDATE_GOLDEN") == "1"
RELEASE_ID = "20260101-000000"

GOLDEN: dict[str, Callable[[Plan], str]] = {
    "nginx-app1.conf": lambda plan: render.nginx_conf(plan, plan.app_servers[0]),
    "gunicorn-app1.conf.py": lambda plan: render.gunicorn_conf(plan, plan.app_servers[0]),
    "haproxy.cfg": render.haproxy_cfg,
    "postgresql.conf": render.postgresql_conf,
    "pg_hba.conf": render.pg_hba_conf,
    "supervisord.conf": render.supervisord_conf,
    "settings.py": lambda plan: render.production_settings(plan, RELEASE_ID, plan.paths.releases / RELEASE_ID),
}


# Rendered from the golden plan with tls.mode = "acme": the challenge route and the renewal timer.
ACME_GOLDEN: dict[str, Callable[[Plan], str]] = {
    "haproxy-acme.cfg": render.haproxy_cfg,
    "supervisord-acme.conf": render.supervisord_conf,
}


@pytest.fixture
def acme_plan(make_plan) -> Plan:
    return make_plan(running_as_root=True, app={"servers": 2}, site={"domains": ["shop.example.com"]},
                     tls={"mode": "acme"})


# Rendered from the golden plan with app.interface = "asgi": uvicorn workers, WebSockets through nginx and HAProxy.
ASGI_GOLDEN: dict[str, Callable[[Plan], str]] = {
    "nginx-asgi-app1.conf": GOLDEN["nginx-app1.conf"],
    "gunicorn-asgi-app1.conf.py": GOLDEN["gunicorn-app1.conf.py"],
    "haproxy-asgi.cfg": render.haproxy_cfg,
    "settings-asgi.py": GOLDEN["settings.py"],
}
ASGI = {"app": {"interface": "asgi"}, "project": {"asgi_application": "board.asgi.application"}}


@pytest.fixture
def asgi_plan(make_plan) -> Plan:
    return make_plan(running_as_root=True, app={"servers": 2, "interface": "asgi"}, project=ASGI["project"])


@pytest.mark.parametrize("name", [*GOLDEN, *ACME_GOLDEN, *ASGI_GOLDEN])
def test_rendering_matches_the_golden_file(golden_plan, acme_plan, asgi_plan, golden_dir, name):
    if name in GOLDEN:
        text = GOLDEN[name](golden_plan)
    elif name in ACME_GOLDEN:
        text = ACME_GOLDEN[name](acme_plan)
    else:
        text = ASGI_GOLDEN[name](asgi_plan)
    golden = golden_dir / name
    if UPDATE_GOLDEN:
        golden.write_text(text, encoding="utf-8")
    assert golden.is_file(), f"{golden} is missing; generate it with DJSHIP_UPDATE_GOLDEN=1 (see the module docstring)"
    assert text == golden.read_text(encoding="utf-8"), (
        f"{name} differs from {golden}; if the change is intended, regenerate with DJSHIP_UPDATE_GOLDEN=1 and review "
        "`git diff tests/golden`"
    )


# ---- properties ---------------------------------------------------------------------------------------------


def haproxy_sections(text: str) -> dict[str, list[str]]:
    """haproxy.cfg as {"frontend https": [its stripped lines], ...}, comments and blank lines left out."""
    sections: dict[str, list[str]] = {}
    current: list[str] = []
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if line[0].isspace():
            current.append(line.strip())
        else:
            current = sections.setdefault(line.strip(), [])
    return sections


def supervisord_sections(plan: Plan) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=None)
    parser.read_string(render.supervisord_conf(plan))
    return parser


def gunicorn_settings(plan: Plan) -> dict[str, object]:
    namespace: dict[str, object] = {}
    exec(compile(render.gunicorn_conf(plan, plan.app_servers[0]), "gunicorn.conf.py", "exec"), namespace)
    return namespace


@pytest.fixture
def plan(make_plan) -> Plan:
    """A plan off the defaults, so a template that hard-codes a default value shows."""
    return make_plan(running_as_root=True, app={"servers": 3, "timeout": 45, "workers": 2, "threads": 4})


def test_timeouts_in_every_config_agree_with_the_plan(plan):
    haproxy = haproxy_sections(render.haproxy_cfg(plan))
    nginx = render.nginx_conf(plan, plan.app_servers[0])

    assert gunicorn_settings(plan)["timeout"] == plan.gunicorn_timeout == 45
    assert re.findall(r"proxy_(?:read|send)_timeout (\d+)s;", nginx) == [str(plan.nginx_timeout)] * 2
    assert f"timeout server {plan.balancer_timeout}s" in haproxy["defaults"]
    assert f"timeout client {plan.balancer_timeout}s" in haproxy["defaults"]
    assert f"hard-stop-after {plan.balancer_timeout}s" in haproxy["global"]


def test_nginx_loads_and_uses_brotli_only_when_both_modules_are_installed(make_plan, fake_tools):
    without = render.nginx_conf(plan := make_plan(), plan.app_servers[0])
    assert "brotli" not in without and without.count("gzip_static on;") == 2

    tools = dataclasses.replace(fake_tools, brotli_modules=BROTLI_MODULES)
    text = render.nginx_conf(plan := make_plan(tools=tools), plan.app_servers[0])
    head = text[:text.index("daemon off;")]
    assert [line for line in head.splitlines() if line.startswith("load_module")] == [
        f'load_module "{module}";' for module in BROTLI_MODULES]
    assert "    brotli on;\n" in text and f"    brotli_types {render.COMPRESSED_TYPES};\n" in text
    assert text.count("brotli_static on;") == 2


@pytest.mark.parametrize(("bindir", "syncfs"), [("/usr/lib/postgresql/15/bin", True),
                                                ("/usr/lib/postgresql/14/bin", True),
                                                ("/usr/lib/postgresql/13/bin", False), ("/usr/local/pgsql/bin", False)])
def test_postgresql_syncs_with_syncfs_before_crash_recovery_where_it_has_the_setting(make_plan, fake_tools, bindir,
                                                                                     syncfs):
    # recovery_init_sync_method is PostgreSQL 14's: 13 refuses to start on a setting it does not know.
    text = render.postgresql_conf(make_plan(tools=dataclasses.replace(fake_tools, pg_bindir=bindir)))
    assert ("\nrecovery_init_sync_method = syncfs\n" in text) is syncfs


def test_static_files_fall_back_to_the_kept_releases_and_are_cached_by_name(plan):
    text = render.nginx_conf(plan, server := plan.app_servers[0])
    static = text[text.index("location /static/ {"):text.index("location /media/ {")]
    assert f'root "{server.release_link}";' in static and "try_files $uri @kept_static;" in static
    assert f'root "{plan.paths.shared_static.parent}";' in static and plan.paths.shared_static.name == "static"
    assert static.count("add_header Cache-Control $static_cache_control;") == 2
    cache_map = re.search(r'map \$uri \$static_cache_control \{\n\s+"~(.+)" "public, max-age=31536000, immutable";'
                          r'\n\s+default "no-cache";', text)
    pattern = re.compile(cache_map.group(1))
    assert pattern.search("/static/css/board.0123456789ab.css") and pattern.search("/static/admin/js/x.f00dfeedbeef.js")
    for unhashed in ("/static/css/board.css", "/static/css/board.0123456789ab.css/x", "/static/a.0123456789.css",
                     "/static/css/board.0123456789AB.css"):
        assert not pattern.search(unhashed), unhashed


def test_every_app_server_is_in_the_balancer_backend(plan):
    backend = haproxy_sections(render.haproxy_cfg(plan))["backend app_servers"]

    servers = [line for line in backend if line.startswith("server ")]
    assert servers == ["server app1 127.0.1.1:8000", "server app2 127.0.1.2:8000", "server app3 127.0.1.3:8000"]
    assert any(line.startswith("default-server check ") for line in backend)


def test_balancer_retries_only_get_on_another_server(plan):
    sections = haproxy_sections(render.haproxy_cfg(plan))

    assert "retry-on all-retryable-errors" in sections["defaults"]
    assert "http-request disable-l7-retry unless METH_GET" in sections["frontend https"]


def test_balancer_sets_the_forwarded_headers_itself(plan):
    https = haproxy_sections(render.haproxy_cfg(plan))["frontend https"]

    assert "http-request set-header X-Forwarded-Proto https" in https
    assert "http-request set-header X-Forwarded-For %[src]" in https
    assert not any("add-header X-Forwarded" in line or "option forwardfor" in line for line in https)


def test_balancer_health_check_uses_the_health_path_and_host(plan):
    backend = haproxy_sections(render.haproxy_cfg(plan))["backend app_servers"]

    assert (
        f"http-check send meth GET uri {plan.health_path} ver HTTP/1.1 hdr Host localhost hdr X-Forwarded-Proto https"
        in backend
    )


def test_supervisord_has_one_program_per_component_stopped_as_a_group(plan):
    parser = supervisord_sections(plan)

    programs = [section.removeprefix("program:") for section in parser.sections() if section.startswith("program:")]
    assert programs == [
        "postgres",
        "app1-gunicorn", "app1-nginx",
        "app2-gunicorn", "app2-nginx",
        "app3-gunicorn", "app3-nginx",
        "haproxy",
    ]
    for name in programs:
        section = parser[f"program:{name}"]
        assert (section["stopasgroup"], section["killasgroup"]) == ("true", "true"), name
        assert section.get("user") == {"postgres": "djship-db", "haproxy": "djship-lb"}.get(
            name, None if name.endswith("-nginx") else "djship-app"), name


# Mozilla's "intermediate" guidelines 6.0: ECDHE with AEAD ciphers only (no DHE), and its key exchange groups.
INTERMEDIATE_CIPHERS = ("ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384:"
                        "ECDHE-RSA-AES256-GCM-SHA384:ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305")


def test_balancer_tls_policy_is_mozilla_intermediate_with_h2_and_hsts(plan):
    sections = haproxy_sections(render.haproxy_cfg(plan))
    setting = {line.split()[0]: line.split(maxsplit=1)[1] for line in sections["global"]}
    https = sections["frontend https"]

    assert " ssl-min-ver TLSv1.2 " in f" {setting['ssl-default-bind-options']} "
    assert setting["ssl-default-bind-ciphers"] == INTERMEDIATE_CIPHERS
    assert "DHE-" not in setting["ssl-default-bind-ciphers"].replace("ECDHE-", "")
    assert setting["ssl-default-bind-ciphersuites"] == "TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256"
    assert setting["ssl-default-bind-curves"] == "X25519:prime256v1:secp384r1"  # as the fake tools' HAProxy accepts
    assert https[0].endswith(f"ssl crt '{plan.paths.site_pem}' alpn h2,http/1.1")
    assert 'http-response set-header Strict-Transport-Security "max-age=3600"' in https  # localhost: nothing pinned
    assert "http-response del-header Server" in https


def test_balancer_offers_only_the_groups_its_haproxy_accepts(make_plan, fake_tools):
    every = make_plan(tools=dataclasses.replace(fake_tools, tls_curves=("X25519MLKEM768", "X25519", "prime256v1", "secp384r1")))
    none = make_plan(tools=dataclasses.replace(fake_tools, tls_curves=()))

    assert "ssl-default-bind-curves X25519MLKEM768:X25519:prime256v1:secp384r1" in haproxy_sections(
        render.haproxy_cfg(every))["global"]
    assert not any(line.startswith("ssl-default-bind-curves") for line in haproxy_sections(render.haproxy_cfg(none))["global"])


@pytest.mark.parametrize(("site", "header", "subdomains", "preload"), [
    ({"domains": ["shop.example.com"]}, "max-age=63072000; includeSubDomains", True, False),
    ({"domains": ["shop.example.com"], "hsts_preload": True}, "max-age=63072000; includeSubDomains; preload", True, True),
    ({"domains": ["localhost"]}, "max-age=3600", False, False),
])
def test_hsts_of_the_balancer_and_django_agree(make_plan, site, header, subdomains, preload):
    plan = make_plan(site=site)
    settings = render.production_settings(plan, "r1", Path("/srv/r1"))

    assert f'http-response set-header Strict-Transport-Security "{header}"' in haproxy_sections(
        render.haproxy_cfg(plan))["frontend https"]
    assert f"SECURE_HSTS_SECONDS = {plan.hsts_seconds}\n" in settings
    assert f"SECURE_HSTS_INCLUDE_SUBDOMAINS = {subdomains}\n" in settings
    assert f"SECURE_HSTS_PRELOAD = {preload}\n" in settings


def test_http_redirects_to_the_configured_domains_only(make_plan):
    one = haproxy_sections(render.haproxy_cfg(make_plan(site={"domains": ["shop.example.com"]})))["frontend http"]
    two = haproxy_sections(render.haproxy_cfg(make_plan(site={"domains": ["shop.example.com", "www.example.com"]})))

    assert one == ["bind 127.0.0.1:8080", "http-request redirect location https://shop.example.com:8443%[capture.req.uri] code 301"]
    assert two["frontend http"][1:] == [
        "http-request redirect location https://www.example.com:8443%[capture.req.uri] code 301 "
        "if { req.hdr(host),field(1,:),lower -m str www.example.com }",
        "http-request redirect location https://shop.example.com:8443%[capture.req.uri] code 301",
    ]


def test_acme_challenges_are_answered_on_http_and_everything_else_redirected(make_plan):
    acme = haproxy_sections(render.haproxy_cfg(make_plan(tls={"mode": "acme"}, site={"domains": ["shop.example.com"]})))
    local = haproxy_sections(render.haproxy_cfg(make_plan()))

    challenge_map = "/srv/example/board/.djship/balancer/acme-challenges.map"
    http = acme["frontend http"]
    assert "acl acme_challenge path_beg /.well-known/acme-challenge/" in http
    assert http.index(next(line for line in http if line.startswith("http-request return status 200"))) < http.index(
        next(line for line in http if line.startswith("http-request redirect"))
    )
    assert f"%[path,map('{challenge_map}')]" in " ".join(http)
    assert http[-1].startswith("http-request redirect location https://") and http[-1].endswith("code 301")
    assert not any("acme" in line for line in local["frontend http"])


def test_renewal_timer_runs_only_in_acme_mode_as_the_invoking_user(make_plan):
    acme = supervisord_sections(make_plan(running_as_root=True, tls={"mode": "acme"}, site={"domains": ["a.example"]}))
    local = supervisord_sections(make_plan(running_as_root=True))

    renewal = acme["program:renewal"]
    assert renewal["command"].endswith("-m djship.agent /srv/example/board/.djship/plan.json watch")
    assert "user" not in renewal  # it writes the 0600 certificate and talks to HAProxy's runtime API
    assert "program:renewal" not in local.sections()


def test_the_supervisor_creates_log_files_0640_and_its_programs_keep_the_usual_umask(make_plan, tmp_path):
    parser = supervisord_sections(make_plan(running_as_root=True))
    programs = [name for name in parser.sections() if name.startswith("program:")]

    assert parser["supervisord"]["umask"] == "027"
    assert programs and {parser[name]["umask"] for name in programs} == {"022"}
    log = tmp_path / "release-1.log"
    append_result(log, Result(("true",), 0, "out\n", ""))
    append_result(log, Result(("false",), 1, "", "err\n"))
    assert stat.S_IMODE(log.stat().st_mode) == 0o640
    assert log.read_text() == "$ true\nout\n\n[exit 0]\n\n$ false\nerr\n\n[exit 1]\n\n"


def test_supervisord_runs_programs_as_the_invoking_user_when_not_root(make_plan):
    parser = supervisord_sections(make_plan(running_as_root=False))

    assert not any(parser.has_option(section, "user") for section in parser.sections())


def test_gunicorn_conf_is_python_with_the_plan_values(plan):
    settings = gunicorn_settings(plan)
    server = plan.app_servers[0]

    assert settings["wsgi_app"] == "board.wsgi:application"
    assert settings["bind"] == [f"unix:{server.socket}"]
    assert (settings["workers"], settings["threads"], settings["worker_class"]) == (2, 4, "gthread")
    assert settings["preload_app"] is False


def test_gunicorn_uses_sync_workers_with_one_thread(make_plan):
    assert gunicorn_settings(make_plan(app={"threads": 1}))["worker_class"] == "sync"


def test_production_settings_are_safe_and_read_the_secrets_file(make_plan, short_tmp, monkeypatch):
    """Run the generated settings module against a stand-in project settings module and a real secrets file."""
    plan = make_plan(project_dir=short_tmp / AWKWARD_NAME, project={"settings_module": "unitsite.settings"})
    plan.paths.secrets.mkdir(parents=True)
    plan.paths.app_secrets.write_text('{"secret_key": "from-the-file", "database_password": "pw"}')
    project_settings = types.ModuleType("unitsite.settings")
    project_settings.DEBUG = True
    project_settings.SECRET_KEY = "django-insecure-dev"
    project_settings.MIDDLEWARE = ["django.middleware.security.SecurityMiddleware"]
    monkeypatch.setitem(sys.modules, "unitsite", types.ModuleType("unitsite"))
    monkeypatch.setitem(sys.modules, "unitsite.settings", project_settings)
    release_dir = plan.paths.releases / RELEASE_ID

    settings: dict[str, object] = {}
    exec(compile(render.production_settings(plan, RELEASE_ID, release_dir), "settings.py", "exec"), settings)

    assert settings["DEBUG"] is False
    assert settings["SECRET_KEY"] == "from-the-file"
    assert settings["DATABASES"]["default"]["PASSWORD"] == "pw"
    assert settings["DATABASES"]["default"]["NAME"] == "unitsite"
    assert settings["ALLOWED_HOSTS"] == ["localhost"]
    assert settings["CSRF_TRUSTED_ORIGINS"] == ["https://localhost:8443"]
    assert settings["SECURE_PROXY_SSL_HEADER"] == ("HTTP_X_FORWARDED_PROTO", "https")
    assert settings["STATIC_ROOT"] == f"{release_dir}/static"
    assert settings["MEDIA_ROOT"] == str(plan.paths.media)
    # The release header wraps everything; the health check runs through the project's whole middleware stack.
    assert settings["MIDDLEWARE"] == [
        "djship_production.middleware.ReleaseHeaderMiddleware",
        "django.middleware.security.SecurityMiddleware",
        "djship_production.middleware.HealthCheckMiddleware",
    ]


# ---- the real programs accept the rendered files --------------------------------------------------------------


# Everything a path may hold that some syntax must quote: a space, both quotes' kin, braces, brackets, # and ;
# (not after a space), % (supervisord's expansions) and non-ASCII.
AWKWARD_NAME = 'my "site" {x}#1;[/y] 50% é'


@pytest.fixture(params=["local", "acme", "asgi"])
def rendered(make_plan, real_tools, short_tmp, system_users, request) -> Plan:
    """Every system file of a plan rendered to its place under tmp_path, with the directories the programs need;
    once per tls.mode that renders differently, and once with app.interface = "asgi"."""
    project_dir = short_tmp / AWKWARD_NAME
    project_dir.mkdir(parents=True)
    asgi = request.param == "asgi"
    plan = make_plan(
        project_dir=project_dir,
        tools=real_tools,
        running_as_root=True,
        users=system_users,
        app={"servers": 2, "interface": "asgi" if asgi else "wsgi"},
        project=ASGI["project"] if asgi else {},
        tls={"mode": "local" if asgi else request.param},
        site={"domains": ["shop.example.com"] if request.param == "acme" else ["localhost"]},
    )
    for config_file in render.system_files(plan):
        config_file.path.parent.mkdir(parents=True, exist_ok=True)
        config_file.path.write_text(config_file.text, encoding="utf-8")
    plan.paths.logs.mkdir(parents=True)
    for server in plan.app_servers:
        server.nginx_temp.mkdir()
    return plan


def run_tool(*command: str | Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(part) for part in command], capture_output=True, text=True, timeout=30)


def test_nginx_accepts_its_config(rendered):
    for server in rendered.app_servers:
        result = run_tool(rendered.tools.nginx, "-t", "-c", server.nginx_conf, "-p", server.dir, "-e", "stderr")

        assert result.returncode == 0, f"nginx -t rejected {server.nginx_conf}:\n{result.stderr}"


def test_haproxy_accepts_its_config(rendered):
    authority = local_ca.new_authority("unit")
    rendered.paths.site_pem.parent.mkdir(parents=True)
    rendered.paths.site_pem.write_bytes(local_ca.issue_site_certificate(authority, rendered.domains))

    result = run_tool(rendered.tools.haproxy, "-c", "-f", rendered.paths.haproxy_conf)

    assert result.returncode == 0, f"haproxy -c rejected {rendered.paths.haproxy_conf}:\n{result.stdout}{result.stderr}"


def test_supervisor_parses_its_config(rendered, capsys):
    options = ServerOptions()
    try:
        options.realize(args=["-c", str(rendered.paths.supervisor_conf)])
    except SystemExit:
        pytest.fail(f"supervisord rejected {rendered.paths.supervisor_conf}:\n{capsys.readouterr().err}")

    renewal = ["renewal"] if rendered.tls.mode == "acme" else []
    assert sorted(group.name for group in options.process_group_configs) == [
        "app1-gunicorn", "app1-nginx", "app2-gunicorn", "app2-nginx", "haproxy", "postgres", *renewal,
    ]
    assert options.logfile == str(rendered.paths.logs / "supervisord.log")
    processes = {group.name: group.process_configs[0] for group in options.process_group_configs}
    gunicorn = processes["app1-gunicorn"]
    server = rendered.app_servers[0]
    assert shlex.split(gunicorn.command)[3:] == [
        str(rendered.paths.env_file), str(rendered.paths.env_secrets),
        str(server.release_link / "venv/bin/gunicorn"), "-c", str(server.gunicorn_conf)
    ]
    assert gunicorn.directory == str(server.dir)
    assert gunicorn.stdout_logfile == str(rendered.paths.logs / "app1-gunicorn.log")


def test_gunicorn_conf_and_the_doctor_read_back_awkward_paths_exactly(rendered):
    server = rendered.app_servers[0]
    namespace: dict[str, object] = {}
    exec(compile(server.gunicorn_conf.read_text(), "gunicorn.conf.py", "exec"), namespace)
    nginx = parse_nginx_conf(server.nginx_conf.read_text())

    assert namespace["chdir"] == str(server.release_link / "app")
    assert namespace["bind"] == [f"unix:{server.socket}"]
    assert namespace["raw_env"][1] == f"DJSHIP_LIVE_FILE={server.live_file}"
    assert (nginx.static_dir, nginx.media_alias, nginx.upstream_socket) == (
        f"{server.release_link}/static/", f"{server.media_link}/", str(server.socket)
    )


def test_nginx_workers_run_as_the_web_user_under_a_root_master_only_as_root(make_plan):
    as_root = make_plan(running_as_root=True)
    assert "\nuser djship-web djship-web;\n" in render.nginx_conf(as_root, as_root.app_servers[0])
    assert "user" not in supervisord_sections(as_root)["program:app1-nginx"]
    unprivileged = make_plan(running_as_root=False)
    assert "\nuser " not in render.nginx_conf(unprivileged, unprivileged.app_servers[0])

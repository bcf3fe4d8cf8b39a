"""The doctor's checks on observed facts: a healthy system passes every check, and each test breaks one thing on
purpose and sees the doctor name it (with the cause and the fix), on one machine and on hosts. Also the parsers of
the files on disk, and the probe that fetches through an app server from a balancer host."""

from __future__ import annotations

import copy
import dataclasses
import http.server
import ssl
import sys
import threading
from contextlib import contextmanager
from pathlib import Path

import pytest

from djship import render
from djship.components import appserver
from djship.connectors.local import LocalConnector
from djship.doctor import report
from djship.doctor.checks import CHECKS, FAIL, PASS, WARN, evaluate
from djship.doctor.facts import (
    MAX_REDIRECTS, CertificateFacts, CsrfFacts, Facts, ServerFacts, parse_gunicorn_conf, parse_haproxy_timeouts,
    parse_nginx_conf, sets_forwarded_proto,
)
from djship.plan import HostSpec, Paths, Plan, build_plans
from djship.tls import local_ca

RELEASE = "20261125-120000"
STATIC = "/static/css/board.css"
SHARED_CACHE = {"default": {"BACKEND": "django.core.cache.backends.db.DatabaseCache", "LOCATION": "cache"}}
LOCMEM = "django.core.cache.backends.locmem.LocMemCache"
KEY_HASH = "0123456789abcdef"


@pytest.fixture
def plan(make_plan):
    return make_plan(running_as_root=True, app={"servers": 2})


def _settings(plan) -> dict:
    return {
        "DEBUG": False,
        "ALLOWED_HOSTS": list(plan.domains),
        "CSRF_TRUSTED_ORIGINS": list(plan.origins),
        "SECURE_PROXY_SSL_HEADER": ["HTTP_X_FORWARDED_PROTO", "https"],
        "SECURE_SSL_REDIRECT": True,
        "CACHES": copy.deepcopy(SHARED_CACHE),
        "SESSION_ENGINE": "django.contrib.sessions.backends.db",
        "SESSION_CACHE_ALIAS": "default",
        "SESSION_FILE_PATH": "/tmp",
        "SECRET_KEY_SHA256": KEY_HASH,
        "CONN_MAX_AGE": 60,
        "MEDIA_ROOT": str(plan.media_dir),
        "STATIC_ROOT": str(plan.paths.releases / RELEASE / "static"),
    }


def healthy(plans: dict[str, Plan]) -> Facts:
    """What the doctor observes on a healthy system of these hosts (name -> plan), rendered by djship's own
    renderers; checks judge it against the first app host's plan, as System.plan is."""
    plan = next(plan for plan in plans.values() if plan.holds("app"))
    lb = next(plan for plan in plans.values() if plan.holds("lb"))
    app_hosts = [name for name, host_plan in plans.items() if host_plan.holds("app")]
    servers = [
        ServerFacts(
            name=server.name, host=server.host, release=RELEASE, health=f"HTTP 200 ok {RELEASE}", socket_exists=True,
            socket_error=None, nginx=parse_nginx_conf(render.nginx_conf(plan, server)),
            gunicorn=parse_gunicorn_conf(render.gunicorn_conf(plan, server)), static={STATIC: 200},
            media_dir=str(plans[server.host].media_dir), media_served=str(plans[server.host].media_dir),
            media_probe=200, media_elsewhere={host: 200 for host in app_hosts if host != server.host},
            settings=_settings(plans[server.host]),
        )
        for server in plan.app_servers
    ]
    return Facts(
        programs={name: tuple(program.name for program in render.programs(host_plan))
                  for name, host_plan in plans.items()},
        processes={name: {program.name: "RUNNING" for program in render.programs(host_plan)}
                   for name, host_plan in plans.items()},
        balancer={name: {server.name: "UP" for server in plan.app_servers}
                  for name, host_plan in plans.items() if host_plan.holds("lb")},
        database_ready=True,
        database={"max_connections": 100, "connections": 8},
        haproxy_timeouts=parse_haproxy_timeouts(render.haproxy_cfg(lb)),
        haproxy_sets_forwarded_proto=sets_forwarded_proto(render.haproxy_cfg(lb)),
        servers=servers,
        hosts={domain: 200 for domain in plan.domains},
        redirects=[(f"http://localhost:{plan.http_port}/", 301), (f"https://localhost:{plan.https_port}/", 200)],
        static_via_balancer={STATIC: 200},
        csrf=CsrfFacts(path="/accounts/login/", tried=("/accounts/login/",), get_status=200, token_found=True,
                       post_status=200),
        certificate=CertificateFacts(days_left=396.5, names=tuple(plan.domains), issued_by_ca=True),
        check_deploy=(True, "System check identified no issues (0 silenced)."),
        clock_skew={name: 0.01 for name in plans},
        secret_key_sha256=KEY_HASH,
    )


@pytest.fixture
def facts(plan) -> Facts:
    return healthy({plan.host: plan})


@pytest.fixture
def host_plans(make_config, fake_tools) -> dict[str, Plan]:
    """1 lb + 3 app + 1 db hosts, each with its own root; the db host holds the uploads, as by default."""
    roles = {"lb1": ("lb",), "app1": ("app",), "app2": ("app",), "app3": ("app",), "db1": ("db", "media")}
    specs = [HostSpec(name, f"10.0.0.{number}", host_roles, Path("/srv") / name, fake_tools, True)
             for number, (name, host_roles) in enumerate(roles.items(), start=10)]
    hosts = {spec.name: {"address": spec.address, "root": str(spec.root)} for spec in specs}
    return build_plans(make_config(hosts=hosts), Path("/srv/example/board"), specs)


@pytest.fixture
def on_hosts(host_plans) -> tuple[Plan, Facts]:
    return host_plans["app1"], healthy(host_plans)


def _result(plan, facts, check_id):
    results = {result.id: result for result in evaluate(plan, facts)}
    return results[check_id]


def _assert_names(result, status, *phrases):
    text = f"{result.cause} {result.fix}"
    assert result.status == status, result
    for phrase in phrases:
        assert phrase in text, f"{phrase!r} not in {text!r}"
    if status != PASS:
        assert result.fix, f"{result.name} fails without saying how to fix it"


def test_a_healthy_system_passes_every_check(plan, facts):
    results = evaluate(plan, facts)
    assert [result.status for result in results] == [PASS] * len(CHECKS), [r for r in results if r.status != PASS]
    document = report(results)
    assert document["ok"] is True
    assert document["summary"] == {"pass": len(CHECKS), "warn": 0, "fail": 0}
    assert set(document["checks"][0]) == {"id", "name", "status", "cause", "fix"}
    assert len({result.id for result in results}) == len(CHECKS)


def test_report_is_not_ok_with_one_failure_and_ok_with_warnings(plan, facts):
    facts.clock_skew["local"] = 5.0
    assert report(evaluate(plan, facts))["ok"] is True
    facts.processes["local"]["haproxy"] = "FATAL"
    document = report(evaluate(plan, facts))
    assert document["ok"] is False
    assert document["summary"]["fail"] >= 1 and document["summary"]["warn"] == 1


# Component up/healthy

def test_a_stopped_gunicorn_is_named(plan, facts):
    facts.processes["local"]["app2-gunicorn"] = "STOPPED"
    facts.balancer["local"]["app2"] = "DOWN"
    _assert_names(_result(plan, facts, "components"), FAIL, "app2-gunicorn is STOPPED", "balancer sees app2 DOWN",
                  "djship logs")


def test_a_process_of_processes_that_is_not_running_is_named(make_plan):
    plan = make_plan(running_as_root=True, processes={"worker": {"command": "celery -A board worker", "count": 2}})
    facts = healthy({plan.host: plan})
    assert _result(plan, facts, "components").status == PASS
    facts.processes["local"]["worker-2"] = "FATAL"
    _assert_names(_result(plan, facts, "components"), FAIL, "worker-2 is FATAL", "djship logs")


def test_a_stopped_gunicorn_on_one_host_names_the_host_and_the_server(on_hosts):
    plan, facts = on_hosts
    facts.processes["app2"]["app2-gunicorn"] = "STOPPED"
    facts.balancer["lb1"]["app2"] = "DOWN"
    result = _result(plan, facts, "components")
    _assert_names(result, FAIL, "app2: app2-gunicorn is STOPPED", "the balancer sees app2 DOWN")
    assert "app1" not in result.cause and "app3" not in result.cause


def test_a_host_whose_supervisor_is_not_running_is_named(on_hosts):
    plan, facts = on_hosts
    facts.processes["app3"] = None
    _assert_names(_result(plan, facts, "components"), FAIL,
                  "app3: supervisord is not running, so none of media-mount, app3-gunicorn, app3-nginx is")


def test_every_host_and_every_balancer_counts(on_hosts):
    plan, facts = on_hosts
    assert _result(plan, facts, "components").cause.startswith("11 processes running on 5 hosts, 3 app servers UP")
    facts.balancer["lb2"] = {"app1": "UP", "app2": "UP", "app3": "MAINT"}
    facts.processes["lb2"] = {"haproxy": "RUNNING"}
    _assert_names(_result(plan, facts, "components"), FAIL, "the balancer on lb2 sees app3 MAINT")


def test_a_missing_program_and_a_database_that_does_not_accept_are_named(plan, facts):
    del facts.processes["local"]["app1-nginx"]
    facts.database_ready = False
    _assert_names(_result(plan, facts, "components"), FAIL, "app1-nginx is not configured",
                  f"PostgreSQL on {plan.database.endpoint} is not accepting")


def test_a_drained_server_is_not_healthy(plan, facts):
    facts.balancer["local"]["app1"] = "DRAIN"
    _assert_names(_result(plan, facts, "components"), FAIL, "balancer sees app1 DRAIN")


# 502 Bad Gateway: gunicorn socket

def test_a_socket_nginx_cannot_connect_to_is_a_502(plan, facts):
    facts.servers[1].socket_error = "PermissionError: [Errno 13] Permission denied"
    facts.servers[1].health = "HTTP 502 <html>"
    result = _result(plan, facts, "gunicorn-socket")
    _assert_names(result, FAIL, "app2", "djship-web cannot connect", "Permission denied", str(plan.app_servers[1].socket))
    assert "app1" not in result.cause


def test_a_missing_socket_is_named(plan, facts):
    facts.servers[0].socket_exists = False
    _assert_names(_result(plan, facts, "gunicorn-socket"), FAIL, "app1", "does not exist")


def test_nginx_proxying_to_another_socket_is_named(plan, facts):
    facts.servers[0].nginx = parse_nginx_conf(render.nginx_conf(plan, plan.app_servers[0]).replace(
        str(plan.app_servers[0].socket), "/tmp/elsewhere.sock"))
    _assert_names(_result(plan, facts, "gunicorn-socket"), FAIL, "proxies to /tmp/elsewhere.sock")


def test_a_502_from_nginx_is_named_even_when_the_socket_looks_fine(plan, facts):
    facts.servers[0].socket_exists = False
    facts.servers[1].health = "HTTP 502 Bad Gateway"
    _assert_names(_result(plan, facts, "gunicorn-socket"), FAIL, "app1", "app2: nginx answers 502")


# Static files

def test_a_static_file_missing_on_one_server_is_a_404(plan, facts):
    facts.servers[1].static[STATIC] = 404
    facts.static_via_balancer[STATIC] = 404
    _assert_names(_result(plan, facts, "static-files"), FAIL, f"app2's nginx answers 404 for {STATIC}",
                  f"balancer answers 404 for {STATIC}", "collectstatic")


def test_nginx_serving_static_from_elsewhere_is_named(plan, facts):
    server = plan.app_servers[0]
    facts.servers[0].nginx = parse_nginx_conf(
        render.nginx_conf(plan, server).replace(f'root "{server.release_link}";', "root /var/www;"))
    _assert_names(_result(plan, facts, "static-files"), FAIL, "serves /static/ from /var/www/static/")


def test_static_root_outside_the_release_is_named(plan, facts):
    facts.servers[0].settings["STATIC_ROOT"] = "/srv/static"
    _assert_names(_result(plan, facts, "static-files"), FAIL, "STATIC_ROOT is /srv/static")


def test_nothing_to_fetch_is_a_warning(plan, facts):
    facts.static_via_balancer = {}
    for server in facts.servers:
        server.static = {}
    assert _result(plan, facts, "static-files").status == WARN


# DisallowedHost

def test_a_domain_missing_from_allowed_hosts_is_named(plan, facts):
    facts.servers[0].settings["ALLOWED_HOSTS"] = ["example.com"]
    facts.hosts["localhost"] = 400
    _assert_names(_result(plan, facts, "allowed-hosts"), FAIL, "ALLOWED_HOSTS ['example.com'] lacks localhost",
                  "Host localhost answers 400", "site.domains")


def test_allowed_hosts_wildcards_are_accepted(plan, facts, make_plan):
    plan = make_plan(running_as_root=True, app={"servers": 2}, site={"domains": ["www.example.com"]})
    facts.hosts = {"www.example.com": 200}
    for server in facts.servers:
        server.settings["ALLOWED_HOSTS"] = [".example.com"]
    assert _result(plan, facts, "allowed-hosts").status == PASS


def test_settings_that_do_not_load_fail_the_settings_checks(plan, facts):
    facts.servers[1].settings = None
    facts.servers[1].settings_error = "ImportError: No module named 'board'"
    for check_id in ("allowed-hosts", "csrf", "secret-key", "cache-sessions", "media"):
        _assert_names(_result(plan, facts, check_id), FAIL, "app2: ImportError")


# CSRF

def test_a_403_on_the_real_post_is_named(plan, facts):
    facts.csrf.post_status = 403
    facts.csrf.post_reason = "Origin checking failed - https://localhost:8443 does not match any trusted origins."
    _assert_names(_result(plan, facts, "csrf"), FAIL, "POST /accounts/login/", "403 Origin checking failed",
                  "CSRF_TRUSTED_ORIGINS")


def test_a_403_with_a_balancer_that_does_not_set_the_proto_header_names_the_balancer(plan, facts):
    facts.csrf.post_status = 403
    facts.haproxy_sets_forwarded_proto = False
    _assert_names(_result(plan, facts, "csrf"), FAIL, "haproxy.cfg does not set X-Forwarded-Proto https")


def test_missing_trusted_origin_and_proxy_header_are_named(plan, facts):
    facts.servers[0].settings["CSRF_TRUSTED_ORIGINS"] = ["https://localhost"]
    facts.servers[1].settings["SECURE_PROXY_SSL_HEADER"] = None
    _assert_names(_result(plan, facts, "csrf"), FAIL, f"app1: CSRF_TRUSTED_ORIGINS lacks {plan.origins[0]}",
                  "app2: SECURE_PROXY_SSL_HEADER is None")


def test_no_form_to_post_is_a_warning_that_names_the_option(plan, facts):
    facts.csrf = CsrfFacts(path="/admin/login/", tried=("/accounts/login/", "/admin/login/"), get_status=404)
    _assert_names(_result(plan, facts, "csrf"), WARN, "--form-path", "/accounts/login/, /admin/login/")


# Redirect loop

def test_a_redirect_loop_is_named(plan, facts):
    https = f"https://localhost:{plan.https_port}/"
    facts.redirects = [(f"http://localhost:{plan.http_port}/", 301), (https, 301), (https, 301)]
    _assert_names(_result(plan, facts, "redirect-loop"), FAIL, "redirect loop", "X-Forwarded-Proto")


def test_a_redirect_loop_from_a_balancer_without_the_proto_header_names_it(plan, facts):
    https = f"https://localhost:{plan.https_port}/"
    facts.redirects = [(https, 301), (https, "again")]
    facts.haproxy_sets_forwarded_proto = False
    _assert_names(_result(plan, facts, "redirect-loop"), FAIL, "redirect loop", "does not set X-Forwarded-Proto")


def test_an_endless_chain_of_distinct_urls_is_a_loop(plan, facts):
    facts.redirects = [(f"https://localhost:{plan.https_port}/{hop}", 302) for hop in range(MAX_REDIRECTS + 1)]
    _assert_names(_result(plan, facts, "redirect-loop"), FAIL, "redirect loop")


def test_plain_http_served_without_redirect_is_named(plan, facts):
    facts.redirects = [(f"http://localhost:{plan.http_port}/", 200)]
    _assert_names(_result(plan, facts, "redirect-loop"), FAIL, "without a redirect to https")


# Timeouts and body sizes

def test_nginx_timeout_above_the_balancer_is_named(plan, facts):
    server = plan.app_servers[0]
    facts.servers[0].nginx = parse_nginx_conf(render.nginx_conf(plan, server).replace(
        f"proxy_read_timeout {plan.nginx_timeout}s", "proxy_read_timeout 300s"))
    _assert_names(_result(plan, facts, "timeouts-body-size"), FAIL, "app1: timeouts balancer 40s, nginx 300s, "
                  "gunicorn 30s", "app.timeout")


def test_gunicorn_timeout_above_nginx_is_named(plan, facts):
    facts.servers[1].gunicorn["timeout"] = 120
    _assert_names(_result(plan, facts, "timeouts-body-size"), FAIL, "app2", "gunicorn 120s")


def test_a_body_size_that_differs_on_one_server_is_a_413(plan, facts):
    server = plan.app_servers[1]
    facts.servers[1].nginx = parse_nginx_conf(render.nginx_conf(plan, server).replace(
        "client_max_body_size 10M", "client_max_body_size 1m"))
    _assert_names(_result(plan, facts, "timeouts-body-size"), FAIL, "app2 1m", "413", "app.max_body_size")


def test_equal_sizes_in_other_units_are_aligned(plan, facts):
    server = plan.app_servers[1]
    facts.servers[1].nginx = parse_nginx_conf(render.nginx_conf(plan, server).replace(
        "client_max_body_size 10M", "client_max_body_size 10240k"))
    assert _result(plan, facts, "timeouts-body-size").status == PASS


# Connection exhaustion

def test_a_budget_over_max_connections_is_named(plan, facts):
    facts.database["max_connections"] = 15
    _assert_names(_result(plan, facts, "connections"), FAIL, "= 16", "max_connections 15 leaves 12",
                  "too many clients", "at least 19")


def test_workers_read_from_disk_count_not_the_plan(plan, facts):
    for server in facts.servers:
        server.gunicorn["workers"] = 50
    _assert_names(_result(plan, facts, "connections"), FAIL, "50 + 50", "= 110")


def test_nearly_all_connections_open_is_a_warning(plan, facts):
    facts.database["connections"] = 90
    assert _result(plan, facts, "connections").status == WARN


def test_an_unreachable_database_fails_the_budget_check(plan, facts):
    facts.database, facts.database_error = None, "password authentication failed"
    _assert_names(_result(plan, facts, "connections"), FAIL, "password authentication failed")


# SECRET_KEY per server

def test_a_secret_key_per_server_is_named(plan, facts):
    facts.servers[1].settings["SECRET_KEY_SHA256"] = "fedcba9876543210"
    _assert_names(_result(plan, facts, "secret-key"), FAIL,
                  "app2 uses another SECRET_KEY than the one djship keeps, which app1 uses", "logged out at random",
                  "secrets/app.json on each app host", "`djship up` puts back")


def test_the_one_server_with_another_secret_key_on_hosts_is_named(on_hosts):
    plan, facts = on_hosts
    facts.servers[2].settings["SECRET_KEY_SHA256"] = "fedcba9876543210"
    result = _result(plan, facts, "secret-key")
    _assert_names(result, FAIL, "app3 uses another SECRET_KEY than the one djship keeps, which app1, app2 use")


def test_servers_that_all_depart_from_djships_key_are_grouped(on_hosts):
    plan, facts = on_hosts
    for seen, key in zip(facts.servers, ("aaaa", "bbbb", "bbbb")):
        seen.settings["SECRET_KEY_SHA256"] = key
    _assert_names(_result(plan, facts, "secret-key"), FAIL, "2 different SECRET_KEYs (app1; app2, app3)")


# Cache/sessions across servers

@pytest.mark.parametrize(
    ("engine", "cache", "status", "phrase"),
    [
        ("django.contrib.sessions.backends.file", None, FAIL, "file sessions"),
        ("django.contrib.sessions.backends.cache", LOCMEM, FAIL, "logged out at random"),
        ("django.contrib.sessions.backends.cached_db", LOCMEM, WARN, "a logout on one server"),
        ("django.contrib.sessions.backends.db", LOCMEM, WARN, "one per worker"),
        ("django.contrib.sessions.backends.cache", "django_redis.cache.RedisCache", PASS, "shared by all 2"),
        ("django.contrib.sessions.backends.signed_cookies", None, PASS, "shared by all 2"),
    ],
)
def test_sessions_and_cache_that_are_not_shared_are_named(plan, facts, engine, cache, status, phrase):
    for server in facts.servers:
        server.settings["SESSION_ENGINE"] = engine
        if cache:
            server.settings["CACHES"]["default"]["BACKEND"] = cache
    _assert_names(_result(plan, facts, "cache-sessions"), status, phrase)


def test_one_server_may_keep_sessions_anywhere(make_plan, facts):
    plan = make_plan(running_as_root=True, app={"servers": 1})
    facts.servers = facts.servers[:1]
    facts.servers[0].settings["SESSION_ENGINE"] = "django.contrib.sessions.backends.file"
    assert _result(plan, facts, "cache-sessions").status == PASS


# Uploads on one server only

def test_media_root_per_server_is_named(plan, facts):
    facts.servers[1].settings["MEDIA_ROOT"] = "/srv/board/media"
    facts.servers[1].media_probe = 404
    _assert_names(_result(plan, facts, "media"), FAIL, "app2: MEDIA_ROOT is /srv/board/media",
                  "Django saves uploads to /srv/board/media", "answers 404 at /media/")


def test_nginx_media_alias_elsewhere_is_named(plan, facts):
    facts.servers[0].media_served = "/var/www/media"
    _assert_names(_result(plan, facts, "media"), FAIL, "app1: nginx serves /media/ from /var/www/media,")


def test_media_after_a_restore_is_the_directory_live_json_names(plan, facts):
    restored = str(plan.paths.shared / "media-20261125T200000Z")
    for seen in facts.servers:
        seen.media_dir = restored
    assert _result(plan, facts, "media").status == FAIL  # servers still on the old directory
    for seen in facts.servers:
        seen.settings["MEDIA_ROOT"], seen.media_served = restored, restored
    assert _result(plan, facts, "media").status == PASS


def test_an_app_host_that_does_not_see_the_media_hosts_uploads_is_named(on_hosts):
    plan, facts = on_hosts
    assert _result(plan, facts, "media").cause.endswith("also one written on every other app host")
    for seen in facts.servers:
        if seen.host != "app2":
            seen.media_elsewhere["app2"] = 404
    _assert_names(_result(plan, facts, "media"), FAIL, "a file written on app2 is not served by app1, app3",
                  "the media host db1", "media-mount runs on every app host")


def test_uploads_kept_on_each_app_host_apart_are_a_warning(on_hosts):
    plan, facts = on_hosts
    plan = dataclasses.replace(plan, media=None)
    for seen in facts.servers:
        seen.media_elsewhere = {host: 404 for host in seen.media_elsewhere}
    _assert_names(_result(plan, facts, "media"), WARN, "a file written on app1 is not served by app2, app3",
                  "an upload exists on the host that received it only", "servers.media")


def test_media_on_hosts_is_judged_against_each_hosts_own_directory(on_hosts, host_plans):
    plan, facts = on_hosts
    assert _result(plan, facts, "media").status == PASS
    facts.servers[2].settings["MEDIA_ROOT"] = str(host_plans["app1"].media_dir)
    _assert_names(_result(plan, facts, "media"), FAIL,
                  f"app3: MEDIA_ROOT is {host_plans['app1'].media_dir}, not the shared {host_plans['app3'].media_dir}")


# Certificate expiry

@pytest.mark.parametrize(
    ("days", "status", "phrase"),
    [(10, WARN, "expires in 10 days"), (1.5, FAIL, "expires in 1.5 days"), (-2, FAIL, "expired 2 days ago"),
     (200, PASS, "200 days left")],
)
def test_certificate_days_left(plan, facts, days, status, phrase):
    facts.certificate.days_left = days
    _assert_names(_result(plan, facts, "certificate"), status, phrase)


def test_a_certificate_for_other_names_or_another_ca_is_named(plan, facts):
    facts.certificate = CertificateFacts(days_left=300, names=("example.com",), issued_by_ca=False)
    _assert_names(_result(plan, facts, "certificate"), FAIL, "does not name localhost", "not signed by djship's CA")


def test_no_certificate_served_is_named(plan, facts):
    facts.certificate = CertificateFacts(error="Connection refused")
    _assert_names(_result(plan, facts, "certificate"), FAIL, "Connection refused")


# check --deploy

def test_check_deploy_warnings_are_named(plan, facts):
    facts.check_deploy = (False, "System check identified some issues:\n\nWARNINGS:\n"
                                 "?: (security.W004) You have not set a value for the SECURE_HSTS_SECONDS setting.\n\n"
                                 "System check identified 1 issue (0 silenced).")
    _assert_names(_result(plan, facts, "check-deploy"), FAIL, "(security.W004)", "djship manage -- check --deploy")


# Clock skew

@pytest.mark.parametrize(("skew", "status"), [(0.5, PASS), (-5, WARN), (300, FAIL)])
def test_clock_skew(plan, facts, skew, status):
    facts.clock_skew["local"] = skew
    _assert_names(_result(plan, facts, "clock-skew"), status, f"local {skew:+.1f}s")


def test_clocks_of_two_hosts_that_differ_from_each_other_fail(on_hosts):
    plan, facts = on_hosts
    facts.clock_skew["app1"], facts.clock_skew["db1"] = 40.0, -40.0
    _assert_names(_result(plan, facts, "clock-skew"), FAIL, "differ by up to 80s", "app1 +40.0s", "db1 -40.0s",
                  "NTP")


# Parsers of the files on disk

def test_parse_nginx_conf_reads_what_djship_renders(plan):
    server = plan.app_servers[0]
    parsed = parse_nginx_conf(render.nginx_conf(plan, server))
    assert parsed.client_max_body_size == "10M"
    assert parsed.proxy_read_timeout == plan.nginx_timeout
    assert parsed.static_dir == f"{server.release_link}/static/"
    assert parsed.media_alias == f"{server.media_link}/"
    assert parsed.upstream_socket == str(server.socket)


def test_parse_gunicorn_conf_reads_literals_without_executing(plan):
    parsed = parse_gunicorn_conf(render.gunicorn_conf(plan, plan.app_servers[0]))
    assert (parsed["timeout"], parsed["workers"], parsed["threads"]) == (plan.gunicorn_timeout, plan.workers, plan.threads)
    assert parse_gunicorn_conf("import os\ntimeout = os.system('false')\nworkers = 2\n") == {"workers": 2}


def test_parse_haproxy_timeouts_converts_units(plan):
    assert parse_haproxy_timeouts(render.haproxy_cfg(plan))["server"] == plan.balancer_timeout
    assert parse_haproxy_timeouts("  timeout server 1500ms\n  timeout client 2m\n") == {"server": 1, "client": 120}


def test_sets_forwarded_proto_reads_the_balancer_config(plan):
    rendered = render.haproxy_cfg(plan)
    assert sets_forwarded_proto(rendered)
    assert not sets_forwarded_proto(rendered.replace("http-request set-header X-Forwarded-Proto https", ""))
    assert not sets_forwarded_proto("    # http-request set-header X-Forwarded-Proto https\n")


# Probing app servers from a balancer host

class _Answering(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = b"body {\n  color: red;\n}\n" if self.path == STATIC else b"not here"
        self.send_response(200 if self.path == STATIC else 404)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@contextmanager
def _app_server(plan, tls_files: tuple[Path, Path] | None = None):
    """A real HTTP server standing in for an app server's nginx (over TLS with these chain and key files)."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Answering)
    if tls_files:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(*tls_files)
        server.socket = context.wrap_socket(server.socket, server_side=True)
    serving = threading.Thread(target=server.serve_forever, daemon=True)
    serving.start()
    try:
        yield dataclasses.replace(plan.app_servers[0], address="127.0.0.1", port=server.server_address[1],
                                  tls=tls_files is not None)
    finally:
        server.shutdown()
        server.server_close()
        serving.join(timeout=10)


def _balancer(plan, root: Path):
    """The plan of a balancer host at root, probing with this machine's Python."""
    return dataclasses.replace(plan, paths=Paths(root), tools=dataclasses.replace(plan.tools, python=sys.executable))


def test_probe_from_fetches_every_path_in_one_run_and_keeps_one_line_each(plan, tmp_path):
    balancer = _balancer(plan, tmp_path)
    with _app_server(plan) as app:
        answers = appserver.probe_from(LocalConnector(), balancer, plan, app, [STATIC, "/media/gone.txt"])
    assert answers == [(200, "body { color: red; }"), (404, "not here")]
    assert appserver.probe_from(LocalConnector(), balancer, plan, app, [STATIC], timeout=2) == [
        (0, "Connection refused")]


def test_probe_from_speaks_tls_to_an_app_server_on_another_host_and_verifies_it_against_djships_ca(plan, tmp_path):
    balancer = _balancer(plan, tmp_path)
    authority, stranger = local_ca.new_authority("unit"), local_ca.new_authority("stranger")
    balancer.paths.tls.mkdir()
    balancer.paths.ca_cert.write_bytes(authority.cert_pem())
    for name, issuer in (("ours", authority), ("theirs", stranger)):
        chain, key = local_ca.issue_host_certificate(issuer, "127.0.0.1")
        (tmp_path / f"{name}.crt").write_bytes(chain)
        (tmp_path / f"{name}.key").write_bytes(key)

    with _app_server(plan, (tmp_path / "ours.crt", tmp_path / "ours.key")) as app:
        assert appserver.probe_from(LocalConnector(), balancer, plan, app, [STATIC]) == [(200, "body { color: red; }")]
    with _app_server(plan, (tmp_path / "theirs.crt", tmp_path / "theirs.key")) as impostor:
        [(status, seen)] = appserver.probe_from(LocalConnector(), balancer, plan, impostor, [STATIC])
    assert status == 0 and "CERTIFICATE_VERIFY_FAILED" in seen, seen


# Redis

def test_redis_that_does_not_answer_with_its_password_is_named(make_plan, fake_tools):
    plan = make_plan(running_as_root=True, tools=dataclasses.replace(fake_tools, redis_server="/usr/bin/redis-server"), redis={})
    facts = healthy({plan.host: plan})
    facts.redis_reply = "+OK +PONG"
    _assert_names(_result(plan, facts, "redis"), PASS, "127.0.3.1:16379 answers PING")
    facts.redis_reply = "-WRONGPASS invalid username-password pair or user is disabled."
    _assert_names(_result(plan, facts, "redis"), FAIL, "WRONGPASS", "djship logs redis")
    facts.processes["local"]["redis"] = "FATAL"
    _assert_names(_result(plan, facts, "components"), FAIL, "redis is FATAL")


def test_without_redis_the_redis_check_says_none_runs(plan, facts):
    _assert_names(_result(plan, facts, "redis"), PASS, "no [redis]")

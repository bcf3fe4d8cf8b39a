"""The plan: every derived value (addresses, sockets, timeouts, budgets, names) and the checks made on it."""

from __future__ import annotations

from pathlib import Path

import pytest

from djship.errors import DjshipError
from djship.plan import MAX_SOCKET_PATH


def test_app_servers_get_consecutive_addresses_and_their_own_sockets(make_plan):
    plan = make_plan(app={"servers": 4})

    assert [server.name for server in plan.app_servers] == ["app1", "app2", "app3", "app4"]
    assert [server.endpoint for server in plan.app_servers] == [f"127.0.1.{i}:8000" for i in range(1, 5)]
    sockets = {server.socket for server in plan.app_servers}
    assert len(sockets) == 4
    assert all(socket.is_relative_to(plan.paths.servers) for socket in sockets)


def test_address_prefix_and_port_are_applied(make_plan):
    plan = make_plan(app={"servers": 2, "address_prefix": "127.0.9", "port": 9100})

    assert [server.endpoint for server in plan.app_servers] == ["127.0.9.1:9100", "127.0.9.2:9100"]


@pytest.mark.parametrize("timeout", [1, 30, 3600])
def test_each_hop_waits_longer_than_the_one_behind_it(make_plan, timeout):
    plan = make_plan(app={"timeout": timeout})

    assert plan.gunicorn_timeout == timeout
    assert plan.balancer_timeout > plan.nginx_timeout > plan.gunicorn_timeout


def test_connection_budget_that_fits_exactly_is_accepted(make_plan):
    # 3 x 29 x 1 + 10 headroom = 97 = 100 - 3 reserved for the superuser.
    plan = make_plan(app={"servers": 3, "workers": 29}, database={"max_connections": 100})

    assert plan.connections_needed == 97


def test_connection_budget_over_max_connections_is_refused(make_plan):
    # 2 x 44 x 1 + 10 = 98, one more than the 97 that max_connections = 100 leaves.
    with pytest.raises(DjshipError) as caught:
        make_plan(app={"servers": 2, "workers": 44}, database={"max_connections": 100})

    message = str(caught.value)
    assert message.startswith("connection budget: 2 servers x 44 workers x 1 threads + 10 headroom = 98 connections")
    assert "database.max_connections = 100 leaves 97" in message
    assert "raise database.max_connections to at least 101" in message


def test_threads_count_against_the_connection_budget(make_plan):
    with pytest.raises(DjshipError, match="database.max_connections"):
        make_plan(app={"servers": 2, "workers": 4, "threads": 12})


def test_state_dir_too_deep_for_a_unix_socket_is_refused(make_plan):
    deep = "/" + "d" * (MAX_SOCKET_PATH - 20)

    with pytest.raises(DjshipError, match=r"state_dir is too deep: the unix socket .*\.sock is longer than 107 bytes"):
        make_plan(state_dir=deep)


def test_relative_state_dir_is_under_the_project(make_plan):
    plan = make_plan(project_dir=Path("/srv/site"))

    assert plan.paths.state == Path("/srv/site/.djship")
    assert plan.paths.site_pem == Path("/srv/site/.djship/tls/site.pem")


def test_each_component_runs_as_its_own_user_only_when_running_as_root(make_plan):
    plan = make_plan(running_as_root=True)
    assert (plan.users.app, plan.users.web, plan.users.db, plan.users.lb) == (
        "djship-app", "djship-web", "djship-db", "djship-lb")
    assert plan.users_here == ("djship-app", "djship-web", "djship-db", "djship-lb")
    assert make_plan(running_as_root=False).users is None and make_plan(running_as_root=False).users_here == ()
    assert make_plan(running_as_root=False).user_of("app") is None


def test_configured_users_are_used_as_root(make_plan):
    plan = make_plan(running_as_root=True, users={"app": "site", "db": "pg"})
    assert (plan.user_of("app"), plan.user_of("web"), plan.user_of("db"), plan.user_of("lb")) == (
        "site", "djship-web", "pg", "djship-lb")


def test_every_state_directory_is_roots_but_the_sockets_haproxy_and_gunicorn_make(make_plan):
    plan = make_plan(running_as_root=True, app={"servers": 1})
    state = plan.paths.state
    directories = {str(d.path.relative_to(state)): (oct(d.mode), d.owner, d.group) for d in plan.directories}
    assert directories == {
        ".": ("0o755", "root", None), "logs": ("0o755", "root", None), "releases": ("0o755", "root", None),
        "venvs": ("0o755", "root", None), "servers": ("0o755", "root", None),
        "supervisor": ("0o700", "root", None), "secrets": ("0o711", "root", None), "tls": ("0o711", "root", None),
        # HAProxy's runtime socket (level admin): its user's only, so no other user reaches it.
        "balancer": ("0o700", "djship-lb", None),
        # Root writes the server's config files and links here: nobody else may replace them.
        "servers/app1": ("0o755", "root", None),
        # nginx's root master makes its temp directories in it and gives them to its workers.
        "servers/app1/nginx-temp": ("0o755", "root", None),
        # gunicorn makes its socket here; nginx's workers alone may enter to connect to it.
        "servers/app1/socket": ("0o750", "djship-app", "djship-web"),
    }
    assert plan.app_servers[0].socket.parent == plan.app_servers[0].socket_dir
    unprivileged = make_plan(running_as_root=False, app={"servers": 1})
    assert {(d.owner, d.group) for d in unprivileged.directories} == {(None, None)}


def test_each_secret_and_key_is_readable_by_the_one_component_that_reads_it(make_plan):
    plan = make_plan(running_as_root=True)
    paths, data = plan.paths, plan.database.data_dir
    access = {str(path.relative_to(paths.state)): (oct(plan.file_access(path).mode), plan.file_access(path).owner)
              for path in (paths.app_secrets, paths.admin_secrets, paths.pgpass, paths.site_pem, paths.site_ocsp,
                           paths.ca_key, paths.ca_cert, data / "pg_hba.conf", data / "postgresql.conf",
                           paths.haproxy_conf, plan.app_servers[0].gunicorn_conf, paths.supervisor_conf)}
    assert access == {
        "secrets/app.json": ("0o600", "djship-app"),
        "secrets/admin.json": ("0o600", "root"),  # the superuser password
        "secrets/pgpass": ("0o600", "root"),
        "tls/site.pem": ("0o600", "djship-lb"),  # the site key: the balancer's only
        "tls/site.pem.ocsp": ("0o600", "djship-lb"),
        "tls/ca.key": ("0o600", "root"),
        "tls/ca.crt": ("0o644", "root"),
        "postgres/data/pg_hba.conf": ("0o644", "djship-db"),  # in the data directory, which is djship-db's 0700
        "postgres/data/postgresql.conf": ("0o644", "djship-db"),
        "balancer/haproxy.cfg": ("0o644", "root"),
        "servers/app1/gunicorn.conf.py": ("0o644", "root"),
        "supervisor/supervisord.conf": ("0o644", "root"),
    }
    assert make_plan(running_as_root=False).file_access(paths.app_secrets).owner is None


@pytest.mark.parametrize(
    ("site", "header"),
    [
        ({"domains": ["localhost"]}, "max-age=3600"),
        ({"domains": ["localhost", "example.com"]}, "max-age=3600"),
        ({"domains": ["app.localhost"], "hsts_seconds": 86400}, "max-age=86400"),
        ({"domains": ["example.com"]}, "max-age=63072000; includeSubDomains"),
        ({"domains": ["example.com"], "hsts_preload": True}, "max-age=63072000; includeSubDomains; preload"),
    ],
)
def test_hsts_is_two_years_for_real_domains_preloaded_only_when_asked_and_never_pins_localhost(make_plan, site, header):
    assert make_plan(site=site).hsts_header == header


def test_configured_hsts_wins(make_plan):
    assert make_plan(site={"hsts_seconds": 600}).hsts_seconds == 600


@pytest.mark.parametrize(
    ("settings_module", "name"),
    [("mysite.settings", "mysite"), ("Config.settings.production", "config"), ("_core.settings", "app__core")],
)
def test_database_name_comes_from_the_settings_package(make_plan, settings_module, name):
    plan = make_plan(project={"settings_module": settings_module})

    assert (plan.database.name, plan.database.user) == (name, name)


def test_configured_database_name_and_user_win(make_plan):
    plan = make_plan(database={"name": "shop", "user": "shop_web"})

    assert (plan.database.name, plan.database.user) == ("shop", "shop_web")


def test_url_and_origins_carry_the_https_port(make_plan):
    plan = make_plan(site={"domains": ["example.com", "www.example.com"]}, balancer={"https_port": 9443})

    assert plan.url == "https://example.com:9443/"
    assert plan.origins == ("https://example.com:9443", "https://www.example.com:9443")
    assert plan.health_host == "example.com"


def test_tls_files_are_relative_to_the_project(make_plan):
    plan = make_plan(
        project_dir=Path("/srv/site"),
        tls={"mode": "files", "cert_file": "certs/site.crt", "key_file": "/etc/ssl/private/site.key"},
    )

    assert plan.tls.cert_file == Path("/srv/site/certs/site.crt")
    assert plan.tls.key_file == Path("/etc/ssl/private/site.key")
    assert plan.tls.acme_ca_bundle is None


def test_acme_mode_refuses_localhost(make_plan):
    with pytest.raises(DjshipError, match=r"^site.domains: an ACME CA issues no certificate for localhost; list the "):
        make_plan(tls={"mode": "acme"})

    assert make_plan(tls={"mode": "acme"}, site={"domains": ["shop.example.com"]}).tls.mode == "acme"


def test_a_plan_written_as_json_reads_back_equal(make_plan, make_config):
    """djship's programs on a host (the renewal timer, the backup schedule) run by the plan the control machine
    computed for that host, shipped as plan.json: every field survives."""
    from djship.plan import HostSpec, build_plans, plan_from_json, plan_to_json
    from tests.unit.conftest import FAKE_TOOLS

    specs = [HostSpec(name, f"10.0.0.{10 + index}", roles, Path("/srv") / name, FAKE_TOOLS, True)
             for index, (name, roles) in enumerate({"lb1": ("lb",), "web1": ("app",), "db1": ("db", "media")}.items())]
    plans = [make_plan(running_as_root=True, app={"servers": 3}, tls={"mode": "local"}),
             *build_plans(make_config(hosts={"db1": {"address": "10.0.0.12"}}), Path("/srv/example/board"), specs).values()]
    for plan in plans:
        assert plan_from_json(plan_to_json(plan)) == plan
    assert plan_from_json(plan_to_json(plans[-1])).media is not None

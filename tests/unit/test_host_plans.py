"""One plan per remote host: what each host runs, where, and who may talk to whom (rendered, and checked by the
real nginx and HAProxy)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from djship import render
from djship.errors import DjshipError
from djship.plan import HostSpec, Plan, build_plans, remote_config_problems
from djship.tls import local_ca

ADDRESSES = {"lb1": "10.0.0.2", "app1": "10.0.0.11", "app2": "10.0.0.12", "db1": "10.0.0.20"}
ROLES = {"lb1": ("lb",), "app1": ("app",), "app2": ("app",), "db1": ("db",)}


def specs(tools, login_root: bool = True, roles: dict[str, tuple[str, ...]] = ROLES, root: Path = Path("/srv"),
          addresses: dict[str, str] = ADDRESSES) -> list[HostSpec]:
    return [HostSpec(name, addresses[name], roles[name], root / name, tools, login_root) for name in roles]


@pytest.fixture
def plans(make_config, fake_tools) -> dict[str, Plan]:
    return build_plans(make_config(), Path("/srv/example/board"), specs(fake_tools))


def test_each_host_has_its_own_root_and_the_same_addresses(plans):
    assert plans["app2"].paths.state == Path("/srv/app2")
    for plan in plans.values():
        assert [(server.name, server.endpoint, server.host) for server in plan.app_servers] == [
            ("app1", "10.0.0.11:8000", "app1"), ("app2", "10.0.0.12:8000", "app2")]
        assert plan.database.endpoint == "10.0.0.20:15432"
        assert (plan.https_port, plan.http_port, plan.url) == (443, 80, "https://localhost/")
    assert plans["app1"].app_servers[1].dir == Path("/srv/app2/servers/app2")  # on its own host's root
    assert plans["db1"].database.data_dir == Path("/srv/db1/postgres/data")


def test_each_host_runs_only_what_its_roles_need(plans):
    programs = {name: [program.name for program in render.programs(plan)] for name, plan in plans.items()}
    assert programs == {"lb1": ["haproxy"], "app1": ["app1-gunicorn", "app1-nginx"],
                        "app2": ["app2-gunicorn", "app2-nginx"], "db1": ["postgres"]}
    files = {name: {file.path.name for file in render.system_files(plan)} for name, plan in plans.items()}
    assert files["lb1"] == {"supervisord.conf", "haproxy.cfg"}
    assert files["app2"] == {"supervisord.conf", "nginx.conf", "gunicorn.conf.py", "env"}
    assert files["db1"] == {"supervisord.conf", "postgresql.conf", "pg_hba.conf"}


def test_the_database_accepts_the_app_hosts_and_its_own_administration_only(plans):
    rules = [line.split() for line in render.pg_hba_conf(plans["db1"]).splitlines() if line.startswith("host")]
    assert rules == [
        ["host", "all", "board", "10.0.0.11/32", "scram-sha-256"],
        ["host", "all", "board", "10.0.0.12/32", "scram-sha-256"],
        ["host", "all", "postgres", "10.0.0.20/32", "scram-sha-256"],
    ]
    assert "listen_addresses = '10.0.0.20'" in render.postgresql_conf(plans["db1"])


def test_app_servers_answer_the_balancer_only(plans):
    nginx = render.nginx_conf(plans["app1"], plans["app1"].app_servers[0])
    geo = nginx[nginx.index("geo $realip_remote_addr"):nginx.index("}", nginx.index("geo $realip_remote_addr"))]
    assert [line.strip() for line in geo.splitlines()[1:]] == ["default 0;", "10.0.0.2/32 1;", ""]
    assert "if ($from_balancer = 0)" in nginx and "listen 10.0.0.11:8000;" in nginx


def test_the_balancer_binds_443_as_root_and_runs_as_the_service_user(plans, make_config, fake_tools):
    haproxy = render.haproxy_cfg(plans["lb1"])
    assert "bind 0.0.0.0:443 ssl" in haproxy and "user djship" in haproxy
    assert "server app2 10.0.0.12:8000" in haproxy
    assert next(program for program in render.programs(plans["lb1"])).user is None
    unprivileged = build_plans(make_config(balancer={"https_port": 8443, "http_port": 8080}),
                                    Path("/srv/example/board"), specs(fake_tools))["lb1"]
    assert "user djship" not in render.haproxy_cfg(unprivileged)
    assert render.programs(unprivileged)[0].user == "djship"


def test_without_root_login_the_services_run_as_the_login_user(make_config, fake_tools):
    config = make_config(balancer={"https_port": 8443, "http_port": 8080})
    plans = build_plans(config, Path("/srv/example/board"), specs(fake_tools, login_root=False))
    assert all(plan.service_user is None for plan in plans.values())
    with pytest.raises(DjshipError, match=r"^balancer: port 443 is below 1024, which only root may bind"):
        build_plans(make_config(), Path("/srv/example/board"), specs(fake_tools, login_root=False))


def test_one_rented_server_may_serve_the_public_ports_itself_as_root(make_plan):
    plan = make_plan(running_as_root=True, balancer={"bind": "0.0.0.0", "https_port": 443, "http_port": 80})
    assert (plan.balancer_bind, plan.url, plan.balancer_starts_as_root) == ("0.0.0.0", "https://localhost/", True)
    with pytest.raises(DjshipError, match=r"^balancer: port 443 is below 1024"):
        make_plan(running_as_root=False, balancer={"https_port": 443, "http_port": 80})


def test_one_host_may_hold_several_roles(make_config, fake_tools):
    roles = {"lb1": ("lb", "app"), "app1": ("app",), "app2": ("app",), "db1": ("db",)}
    plans = build_plans(make_config(), Path("/srv/example/board"), specs(fake_tools, roles=roles))
    assert [program.name for program in render.programs(plans["lb1"])] == ["lb1-gunicorn", "lb1-nginx", "haproxy"]
    assert [server.name for server in plans["app1"].app_servers] == ["lb1", "app1", "app2"]


@pytest.mark.parametrize(("overrides", "problem"), [
    ({"app": {"address_prefix": "127.0.5"}}, "app.address_prefix: on real hosts [servers] and [hosts] say where"),
    ({"database": {"address": "127.0.2.2"}}, "database.address: on real hosts"),
    ({"tls": {"mode": "acme"}, "site": {"domains": ["shop.example.com"]}}, 'tls.mode: "acme" on real hosts is not built yet'),
    ({"backup": {"schedule": "03:30"}}, "backup.schedule: scheduled backups on real hosts are not built yet"),
])
def test_what_a_remote_target_refuses_is_named_by_its_key(make_config, fake_tools, overrides, problem):
    config = make_config(**overrides)
    assert any(line.startswith(problem) for line in remote_config_problems(config))
    with pytest.raises(DjshipError, match=r"^djship.toml: " + problem.split(":")[0]):
        build_plans(config, Path("/srv/example/board"), specs(fake_tools))


def test_the_real_nginx_and_haproxy_accept_the_host_files(make_config, real_tools, tmp_path):
    config = make_config(service_user="nobody", balancer={"https_port": 18999, "http_port": 18998})
    loopback = {name: address.replace("10.0.0.", "127.0.91.") for name, address in ADDRESSES.items()}  # nginx -t binds
    plans = build_plans(config, tmp_path, specs(real_tools, root=tmp_path, addresses=loopback))
    for plan in plans.values():
        for config_file in render.system_files(plan):
            config_file.path.parent.mkdir(parents=True, exist_ok=True)
            config_file.path.write_text(config_file.text)
    app = plans["app1"].servers_here[0]
    app.nginx_temp.mkdir(parents=True)
    (plans["app1"].paths.logs).mkdir(parents=True)
    nginx = subprocess.run([real_tools.nginx, "-t", "-c", str(app.nginx_conf), "-p", str(app.dir), "-e", "stderr"],
                           capture_output=True, text=True)
    assert nginx.returncode == 0, nginx.stderr
    lb = plans["lb1"]
    lb.paths.site_pem.parent.mkdir(parents=True)
    lb.paths.site_pem.write_bytes(local_ca.issue_site_certificate(local_ca.new_authority("unit"), lb.domains))
    haproxy = subprocess.run([real_tools.haproxy, "-c", "-f", str(lb.paths.haproxy_conf)], capture_output=True, text=True)
    assert haproxy.returncode == 0, haproxy.stdout + haproxy.stderr


def test_app_servers_per_app_host_keep_their_names_and_ports_as_they_grow(make_config, fake_tools):
    one = {"web1": ("lb", "app", "db")}
    single = build_plans(make_config(), Path("/srv/example/board"),
                         specs(fake_tools, roles=one, addresses={"web1": "10.0.0.5"}))["web1"]
    assert [(s.name, s.endpoint) for s in single.app_servers] == [("web1", "10.0.0.5:8000"), ("web1-2", "10.0.0.5:8001")]
    three = build_plans(make_config(app={"servers": 3}), Path("/srv/example/board"), specs(fake_tools))["app1"]
    assert [s.name for s in three.app_servers] == ["app1", "app1-2", "app1-3", "app2", "app2-2", "app2-3"]
    assert {s.port for s in three.app_servers if s.host == "app2"} == {8000, 8001, 8002}


def test_several_app_hosts_run_one_app_server_each_by_default(plans):
    assert [server.host for server in plans["lb1"].app_servers] == ["app1", "app2"]

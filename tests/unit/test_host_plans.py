"""One plan per remote host: what each host runs, where, and who may talk to whom (rendered, and checked by the
real nginx and HAProxy)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from djship import render
from djship.errors import DjshipError
from djship.plan import HostSpec, Plan, build_plans, plan_from_json, remote_config_problems
from djship.tls import local_ca
from tests.unit.test_render import haproxy_sections

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
    assert rules == [  # the app's role over TLS only: it comes from other hosts
        ["hostssl", "all", "board", "10.0.0.11/32", "scram-sha-256"],
        ["hostssl", "all", "board", "10.0.0.12/32", "scram-sha-256"],
        ["host", "all", "postgres", "10.0.0.20/32", "scram-sha-256"],
    ]
    assert "listen_addresses = '10.0.0.20'" in render.postgresql_conf(plans["db1"])


@pytest.mark.parametrize(("roles", "app_links", "database_link"), [
    (ROLES, {"app1": True, "app2": True}, True),
    ({"lb1": ("lb", "app"), "app1": ("app",), "db1": ("db",)}, {"lb1": False, "app1": True}, True),
    ({"lb1": ("lb",), "app1": ("app", "db")}, {"app1": True, "app1-2": True}, False),
    ({"web1": ("lb", "app", "db")}, {"web1": False, "web1-2": False}, False),
])
def test_links_that_cross_hosts_are_encrypted_and_those_within_a_host_are_not(make_config, fake_tools, roles,
                                                                               app_links, database_link):
    addresses = {name: f"10.0.0.{index + 2}" for index, name in enumerate(roles)}
    plan = next(iter(build_plans(make_config(), Path("/srv/example/board"),
                                 specs(fake_tools, roles=roles, addresses=addresses)).values()))

    assert {server.name: server.tls for server in plan.app_servers} == app_links
    assert plan.database.tls is database_link
    assert plan.encrypted_links is (database_link or any(app_links.values()))


def test_one_machine_keeps_its_loopback_links_plaintext(make_plan):
    plan = make_plan(running_as_root=True)

    assert not plan.encrypted_links
    assert "OPTIONS" not in render.production_settings(plan, "r1", Path("/srv/r1"))
    assert "ssl" not in render.postgresql_conf(plan) and "hostssl" not in render.pg_hba_conf(plan)
    assert " ssl" not in render.nginx_conf(plan, plan.app_servers[0])
    assert all(line.split()[:3] == ["server", server.name, server.endpoint] and len(line.split()) == 3
               for line, server in zip((line.strip() for line in render.haproxy_cfg(plan).splitlines()
                                        if line.strip().startswith("server ")), plan.app_servers))


def test_across_hosts_the_app_verifies_postgresql_which_takes_tls_only(plans):
    settings = render.production_settings(plans["app1"], "r1", Path("/srv/app1/releases/r1"))
    postgresql = render.postgresql_conf(plans["db1"])

    assert '"OPTIONS": {"sslmode": "verify-full", "sslrootcert": "/srv/app1/tls/ca.crt",' in settings
    assert '"sslcert": "/srv/app1/tls/no-client-certificate"},' in settings
    assert ["ssl = on", "ssl_cert_file = 'server.crt'", "ssl_key_file = 'server.key'",
            "ssl_min_protocol_version = 'TLSv1.3'"] == [line for line in postgresql.splitlines() if line.startswith("ssl")]
    assert plans["db1"].database.cert_file == Path("/srv/db1/postgres/data/server.crt")


def test_across_hosts_nginx_presents_the_host_certificate_and_the_balancer_verifies_it(plans):
    nginx = render.nginx_conf(plans["app2"], plans["app2"].app_servers[1])
    haproxy = render.haproxy_cfg(plans["lb1"])

    assert "listen 10.0.0.12:8000 ssl;" in nginx and "ssl_protocols TLSv1.3;" in nginx
    assert 'ssl_certificate "/srv/app2/tls/host.crt";' in nginx and 'ssl_certificate_key "/srv/app2/tls/host.key";' in nginx
    assert [line.strip() for line in haproxy.splitlines() if line.strip().startswith("server ")] == [
        f"server {name} {address}:8000 ssl verify required ca-file '/srv/lb1/tls/ca.crt' verifyhost {address}"
        for name, address in (("app1", "10.0.0.11"), ("app2", "10.0.0.12"))]


def test_app_servers_answer_the_balancer_only(plans):
    nginx = render.nginx_conf(plans["app1"], plans["app1"].app_servers[0])
    geo = nginx[nginx.index("geo $realip_remote_addr"):nginx.index("}", nginx.index("geo $realip_remote_addr"))]
    assert [line.strip() for line in geo.splitlines()[1:]] == ["default 0;", "10.0.0.2/32 1;", ""]
    assert "if ($from_balancer = 0)" in nginx and "listen 10.0.0.11:8000 ssl;" in nginx


def test_the_balancer_binds_443_as_root_and_runs_as_its_own_user(plans, make_config, fake_tools):
    assert "bind 0.0.0.0:443 ssl" in render.haproxy_cfg(plans["lb1"])
    haproxy = haproxy_sections(render.haproxy_cfg(plans["lb1"]))
    assert [line for line in haproxy["global"] if line.startswith(("user ", "group "))] == [
        "user djship-lb", "group djship-lb"]
    assert ("server app2 10.0.0.12:8000 ssl verify required ca-file '/srv/lb1/tls/ca.crt' verifyhost 10.0.0.12"
            in haproxy["backend app_servers"])
    assert next(program for program in render.programs(plans["lb1"])).user is None
    unprivileged = build_plans(make_config(balancer={"https_port": 8443, "http_port": 8080}),
                                    Path("/srv/example/board"), specs(fake_tools))["lb1"]
    assert "user djship" not in render.haproxy_cfg(unprivileged)
    assert render.programs(unprivileged)[0].user == "djship-lb"


def test_without_root_login_the_services_run_as_the_login_user(make_config, fake_tools):
    config = make_config(balancer={"https_port": 8443, "http_port": 8080})
    plans = build_plans(config, Path("/srv/example/board"), specs(fake_tools, login_root=False))
    assert all(plan.users is None for plan in plans.values())
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
])
def test_what_a_remote_target_refuses_is_named_by_its_key(make_config, fake_tools, overrides, problem):
    config = make_config(**overrides)
    assert any(line.startswith(problem) for line in remote_config_problems(config))
    with pytest.raises(DjshipError, match=r"^djship.toml: " + problem.split(":")[0]):
        build_plans(config, Path("/srv/example/board"), specs(fake_tools))


def test_the_db_host_takes_the_daily_backup_by_its_own_plan_and_keeps_it_on_its_own_disk(make_config, fake_tools):
    plans = build_plans(make_config(backup={"schedule": "03:30"}), Path("/srv/example/board"), specs(fake_tools))
    assert [name for name, plan in plans.items() if plan.schedules_backups] == ["db1"]
    scheduler = render.programs(plans["db1"])[-1]
    assert (scheduler.name, scheduler.user) == ("backup-scheduler", None)
    assert scheduler.command == (f"{fake_tools.python} -m djship.ops.schedule --at 03:30 -- {fake_tools.python} -m "
                                 "djship.agent /srv/db1/plan.json backup --note daily")
    assert {plan.backup.daily_dir for plan in plans.values()} == {Path("/srv/db1/backups")}
    written = plan_from_json(next(f for f in render.system_files(plans["db1"]) if f.path.name == "plan.json").data)
    assert written == plans["db1"]
    assert not any(plan.runs_agent for name, plan in plans.items() if name != "db1")


def test_with_acme_the_first_lb_host_runs_the_acme_client_by_its_own_plan(make_config, fake_tools):
    config = make_config(tls={"mode": "acme"}, site={"domains": ["shop.example.com"]})
    plans = build_plans(config, Path("/srv/example/board"), specs(fake_tools))
    assert [name for name, plan in plans.items() if plan.renews] == ["lb1"]
    renewal = render.programs(plans["lb1"])[-1]
    assert (renewal.name, renewal.user) == ("renewal", None)
    assert renewal.command == f"{fake_tools.python} -m djship.agent /srv/lb1/plan.json watch"
    plan_file = next(file for file in render.system_files(plans["lb1"]) if file.path.name == "plan.json")
    assert plan_file.programs == ("renewal",) and plan_from_json(plan_file.text) == plans["lb1"]
    assert not any(file.path.name == "plan.json" for file in render.system_files(plans["app1"]))


def test_with_acme_and_several_lb_hosts_the_others_follow_the_renewer(make_config, fake_tools, real_tools, tmp_path,
                                                                      system_users):
    config = make_config(tls={"mode": "acme"}, site={"domains": ["shop.example.com"]}, users=system_users)
    roles = {**ROLES, "app1": ("app", "lb")}
    plans = build_plans(config, Path("/srv/example/board"), specs(fake_tools, roles=roles))
    assert [(name, plan.renews, plan.follows) for name, plan in plans.items() if plan.holds("lb")] == [
        ("lb1", True, False), ("app1", False, True)]
    follower = plans["app1"]
    assert render.programs(follower)[-1].command == f"{fake_tools.python} -m djship.agent /srv/app1/plan.json watch"
    sections = haproxy_sections(render.haproxy_cfg(follower))
    # The CA's HTTP-01 requests that reach the follower are answered by the renewer, from its map.
    assert sections["frontend http"][1:3] == ["acl acme_challenge path_beg /.well-known/acme-challenge/",
                                             "use_backend acme_renewer if acme_challenge"]
    assert sections["backend acme_renewer"] == ["server lb1 10.0.0.2:80"]
    # Not redirected to HTTPS first (HAProxy runs every http-request rule before use_backend).
    assert sections["frontend http"][-1] == (
        "http-request redirect location https://shop.example.com%[capture.req.uri] code 301 if !acme_challenge")
    assert "backend acme_renewer" not in haproxy_sections(render.haproxy_cfg(plans["lb1"]))
    assert follower.file_access(follower.paths.acme_site_key).mode == 0o600
    # The real HAProxy takes the follower's configuration.
    plan = build_plans(config, tmp_path, specs(real_tools, roles=roles, root=tmp_path))["app1"]
    plan.paths.haproxy_conf.parent.mkdir(parents=True)
    plan.paths.haproxy_conf.write_text(render.haproxy_cfg(plan))
    plan.paths.site_pem.parent.mkdir(parents=True)
    plan.paths.site_pem.write_bytes(local_ca.issue_site_certificate(local_ca.new_authority("unit"), plan.domains))
    plan.paths.ca_cert.write_bytes(local_ca.new_authority("unit").cert_pem())
    haproxy = subprocess.run([real_tools.haproxy, "-c", "-f", str(plan.paths.haproxy_conf)], capture_output=True,
                             text=True)
    assert haproxy.returncode == 0, haproxy.stdout + haproxy.stderr


def test_the_real_nginx_and_haproxy_accept_the_host_files(make_config, real_tools, tmp_path, system_users):
    config = make_config(users=system_users, balancer={"https_port": 18999, "http_port": 18998})
    loopback = {name: address.replace("10.0.0.", "127.0.91.") for name, address in ADDRESSES.items()}  # nginx -t binds
    plans = build_plans(config, tmp_path, specs(real_tools, root=tmp_path, addresses=loopback))
    for plan in plans.values():
        for config_file in render.system_files(plan):
            config_file.path.parent.mkdir(parents=True, exist_ok=True)
            config_file.path.write_text(config_file.text)
    authority = local_ca.new_authority("unit")
    app_host = plans["app1"].paths
    app_host.tls.mkdir(parents=True)
    chain, key = local_ca.issue_host_certificate(authority, loopback["app1"])
    app_host.host_cert.write_bytes(chain)
    app_host.host_key.write_bytes(key)
    app = plans["app1"].servers_here[0]
    app.nginx_temp.mkdir(parents=True)
    (plans["app1"].paths.logs).mkdir(parents=True)
    nginx = subprocess.run([real_tools.nginx, "-t", "-c", str(app.nginx_conf), "-p", str(app.dir), "-e", "stderr"],
                           capture_output=True, text=True)
    assert nginx.returncode == 0, nginx.stderr
    lb = plans["lb1"]
    lb.paths.site_pem.parent.mkdir(parents=True)
    lb.paths.site_pem.write_bytes(local_ca.issue_site_certificate(authority, lb.domains))
    lb.paths.ca_cert.write_bytes(authority.cert_pem())
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


def test_a_backup_host_receives_every_backup_from_the_db_host_over_sftp_only(make_config, fake_tools):
    from djship.components import offsite
    from djship.components.media import Access, new_private_key
    from djship.ops import sending

    roles = {**ROLES, "bk1": ("backup",)}
    addresses = {**ADDRESSES, "bk1": "10.0.0.40"}
    config = make_config(servers={"lb": ["lb1"], "app": ["app1", "app2"], "db": "db1", "backup": "bk1"},
                         hosts={name: {"address": address} for name, address in addresses.items()})
    plans = build_plans(config, Path("/srv/example/board"), specs(fake_tools, roles=roles, addresses=addresses))
    target = plans["db1"].backup.target
    assert (target.host, target.address, target.dir, target.senders) == ("bk1", "10.0.0.40", Path("/srv/bk1/backups"),
                                                                         ("10.0.0.20",))
    # The db host runs the agent (it takes each backup and sends it); the backup host runs nothing of djship's.
    assert [name for name, plan in plans.items() if plan.runs_agent] == ["db1"]
    assert render.programs(plans["bk1"]) == []
    access = Access(new_private_key(), "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIB0fake")
    [keys] = offsite.desired_files(plans["bk1"], access)
    assert keys.path == Path("/srv/bk1/backup-access/.ssh/authorized_keys")
    assert keys.text == f'restrict,command="internal-sftp",from="10.0.0.20" {access.public_key} djship-backup\n'
    assert {file.path.name for file in offsite.desired_files(plans["db1"], access)} == {
        "backup_ed25519", "backup_known_hosts"}
    assert offsite.desired_files(plans["app1"], access) == []
    argv = sending.sftp_argv(plans["db1"], target)
    assert argv[:3] == ["sftp", "-b", "-"] and "StrictHostKeyChecking=yes" in argv and argv[-1] == "djship-backup@10.0.0.40"
    commands = sending.send_commands(Path("/srv/db1/backups/20261201T030000Z"), ["database.dump", "manifest.json"],
                                     target).splitlines()
    assert commands[0] == 'mkdir "/srv/bk1/backups/.20261201T030000Z.partial"'
    assert commands[2] == ('put "/srv/db1/backups/20261201T030000Z/database.dump" '
                           '"/srv/bk1/backups/.20261201T030000Z.partial/database.dump"')
    assert commands[-1] == 'rename "/srv/bk1/backups/.20261201T030000Z.partial" "/srv/bk1/backups/20261201T030000Z"'
    assert sending.remove_commands(target.dir, {"x": ["a"]}) == '-rm "/srv/bk1/backups/x/a"\n-rmdir "/srv/bk1/backups/x"\n'
    listing = 'sftp> ls -1a "/srv/bk1/backups"\n/srv/bk1/backups/.\n/srv/bk1/backups/..\n/srv/bk1/backups/20261201T030000Z\n'
    assert sending.parse_listing(listing) == ["20261201T030000Z"]
    assert sending._sftp_word(Path('/a "b"\\c')) == '"/a \\"b\\"\\\\c"'

"""[balancer] external = true: the config it takes, the plans (no lb host, no HAProxy), nginx's config for it (golden,
and the real nginx accepting it), and reading nginx's health log."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from djship import render
from djship.components import external
from djship.config import parse_config
from djship.errors import DjshipError
from djship.plan import HostSpec, build_plans
from djship.tls import local_ca

ADDRESSES = {"app1": "10.0.0.11", "app2": "10.0.0.12", "db1": "10.0.0.20"}
ROLES = {"app1": ("app",), "app2": ("app",), "db1": ("db",)}

CONFIG = """
[project]
settings_module = "board.settings"
wsgi_application = "board.wsgi.application"

[balancer]
external = true
trusted = ["10.0.0.0/24", "10.0.1.0/24"]
healthy_threshold = 2
health_interval = 10

[deploy]
drain_seconds = 30

[servers]
app = ["app1", "app2"]
db = "db1"

[hosts.app1]
address = "10.0.0.11"

[hosts.app2]
address = "10.0.0.12"

[hosts.db1]
address = "10.0.0.20"
"""


def plans_of(text: str, tools, root: Path = Path("/srv"), addresses: dict[str, str] = ADDRESSES):
    specs = [HostSpec(name, addresses[name], ROLES[name], root / name, tools, True) for name in ROLES]
    return build_plans(parse_config(text), Path("/srv/example/board"), specs)


def test_the_plans_run_no_balancer_and_trust_only_its_networks(fake_tools):
    plans = plans_of(CONFIG, fake_tools)
    programs = {name: [program.name for program in render.programs(plan)] for name, plan in plans.items()}
    assert programs == {"app1": ["app1-gunicorn", "app1-nginx"], "app2": ["app2-gunicorn", "app2-nginx"],
                        "db1": ["postgres"]}
    plan = plans["app1"]
    assert plan.balancer_sources == ("10.0.0.0/24", "10.0.1.0/24")
    assert (plan.external.drain_seconds, plan.external.healthy_threshold, plan.external.health_interval) == (30, 2, 10)
    assert [(server.endpoint, server.tls) for server in plan.app_servers] == [("10.0.0.11:8000", False),
                                                                             ("10.0.0.12:8000", False)]
    assert not plan.encrypted_links or plan.database.tls  # only the database link, unless balancer.tls
    with_tls = plans_of(CONFIG.replace("health_interval = 10", "health_interval = 10\ntls = true"), fake_tools)
    assert all(server.tls for server in with_tls["app1"].app_servers)


@pytest.mark.parametrize(("change", "expected"), [
    (("trusted = [\"10.0.0.0/24\", \"10.0.1.0/24\"]\n", ""), "balancer: Value error, external = true needs trusted"),
    (('"10.0.1.0/24"', '"10.0.1.0"'), "balancer.trusted: [1] '10.0.1.0' is not an IPv4 network"),
    (("drain_seconds = 30\n", ""), "deploy.drain_seconds: required with balancer.external"),
    (('app = ["app1", "app2"]', 'lb = ["app1"]\napp = ["app1", "app2"]'),
     "servers.lb: balancer.external = true, so djship runs no HAProxy; remove servers.lb (app1)"),
    (("external = true\n", ""), "balancer: Value error, trusted is for a balancer djship does not run"),
])
def test_bad_external_balancer_settings_are_one_line_errors(change, expected):
    with pytest.raises(DjshipError) as error:
        parse_config(CONFIG.replace(*change))
    assert expected in str(error.value) or expected.replace("Value error, ", "") in str(error.value), str(error.value)


def test_acme_and_one_machine_are_refused_with_the_reason():
    acme = CONFIG.replace("[deploy]", '[tls]\nmode = "acme"\n\n[deploy]')
    with pytest.raises(DjshipError, match=r"tls.mode: \"acme\" answers the CA through djship's HAProxy"):
        parse_config(acme)
    one_machine = CONFIG.split("[servers]")[0]
    with pytest.raises(DjshipError, match=r"balancer.external: the balancer reaches app servers on hosts"):
        parse_config(one_machine)
    without = CONFIG.replace("[balancer]\nexternal = true\n", "[balancer]\n").replace("trusted = [\"10.0.0.0/24\", \"10.0.1.0/24\"]\n", "").replace("healthy_threshold = 2\nhealth_interval = 10\n", "")
    with pytest.raises(DjshipError, match=r"servers.lb: required key is missing"):
        parse_config(without)


def test_nginx_config_matches_the_golden_file(fake_tools, golden_dir):
    plan = plans_of(CONFIG, fake_tools)["app1"]
    text = render.nginx_conf(plan, plan.servers_here[0])
    golden = golden_dir / "nginx-external-app1.conf"
    if os.environ.get("DJSHIP_UPDATE_GOLDEN"):
        golden.write_text(text, encoding="utf-8")
    assert text == golden.read_text(encoding="utf-8")


def test_nginx_trusts_forwarded_headers_from_the_balancer_only(fake_tools):
    plan = plans_of(CONFIG, fake_tools)["app1"]
    text = render.nginx_conf(plan, plan.servers_here[0])
    http = text.split("server {")[0]
    assert [line.strip() for line in http.splitlines() if "set_real_ip_from" in line] == [
        "set_real_ip_from 10.0.0.0/24;", "set_real_ip_from 10.0.1.0/24;"]  # never the host's own address
    assert "10.0.0.11/32 2;" in http  # the host itself is let in, its headers not believed
    assert "proxy_set_header X-Forwarded-For $remote_addr;" in text
    assert "proxy_set_header X-Forwarded-Proto $forwarded_proto;" in text
    assert "$http_x_forwarded_for" not in text


@pytest.mark.parametrize("tls", [False, True])
def test_the_real_nginx_accepts_it(make_config, real_tools, tmp_path, system_users, tls):
    text = CONFIG.replace("10.0.0.", "127.0.92.").replace('"10.0.1.0/24"', '"127.0.93.0/24"')
    text = text.replace("[servers]", '[users]\napp = "daemon"\nweb = "www-data"\ndb = "bin"\nlb = "sys"\n\n[servers]')
    if tls:
        text = text.replace("health_interval = 10", "health_interval = 10\ntls = true")
    loopback = {name: address.replace("10.0.0.", "127.0.92.") for name, address in ADDRESSES.items()}  # nginx -t binds
    plans = plans_of(text, real_tools, root=tmp_path, addresses=loopback)
    plan = plans["app1"]
    for config_file in render.system_files(plan):
        config_file.path.parent.mkdir(parents=True, exist_ok=True)
        config_file.path.write_text(config_file.text)
    plan.paths.tls.mkdir(parents=True)
    chain, key = local_ca.issue_host_certificate(local_ca.new_authority("unit"), loopback["app1"])
    plan.paths.host_cert.write_bytes(chain)
    plan.paths.host_key.write_bytes(key)
    server = plan.servers_here[0]
    server.nginx_temp.mkdir(parents=True)
    plan.paths.logs.mkdir(parents=True)
    nginx = subprocess.run([real_tools.nginx, "-t", "-c", str(server.nginx_conf), "-p", str(server.dir), "-e",
                            "stderr"], capture_output=True, text=True)
    assert nginx.returncode == 0, nginx.stderr
    assert ("listen 127.0.92.11:8000 ssl;" in server.nginx_conf.read_text()) is tls


def test_the_health_log_says_which_checks_came_from_the_balancer(fake_tools):
    plan = plans_of(CONFIG, fake_tools)["app1"]
    log = external.parse_health_log("1000.5\n990.001 200 10.0.0.7\n995.002 503 10.0.0.11\n999.000 503 10.0.1.9\n"
                                    "garbage\n")
    assert log.now == 1000.5 and log.lines == 4
    assert [(check.status, check.peer) for check in log.from_balancer(plan.external, plan.servers_here[0])] == [(200, "10.0.0.7"),
                                                                                          (503, "10.0.1.9")]
    assert external._passed_in_a_row([200, 503, 200, 200]) == 2
    assert external._passed_in_a_row([503]) == 0
    assert external.health_word({"draining": True, "last_check": None}) == "draining"
    assert external.health_word({"draining": False, "last_check": {"status": 503}}) == "failing (503)"
    assert external.health_word({"draining": False, "last_check": {"status": 200}}) == "up"

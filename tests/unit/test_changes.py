"""`up` decides before it acts: the differences between what the hosts run and what djship.toml asks, computed
from observations alone (no host is touched here)."""

from __future__ import annotations

from pathlib import Path

import pytest

from djship import render
from djship.changes import Observed, diff
from djship.plan import HostSpec, build_plans
from djship.topology import Host
from tests.unit.conftest import FAKE_TOOLS

ROLES = {"lb1": ("lb",), "app1": ("app",), "app2": ("app",), "db1": ("db",)}


def topology(make_config, **overrides) -> dict[str, Host]:
    specs = [HostSpec(name, f"10.0.0.{10 + index}", roles, Path("/srv") / name, FAKE_TOOLS, True)
             for index, (name, roles) in enumerate(ROLES.items())]
    plans = build_plans(make_config(**overrides), Path("/srv/example/board"), specs)
    return {name: Host(name, spec.address, None, plans[name], "python3", "wheels") for name, spec in
            zip(ROLES, specs)}


def desired(hosts: dict[str, Host]) -> dict[str, list[render.ConfigFile]]:
    return {name: render.system_files(host.plan) for name, host in hosts.items()}


def running(hosts: dict[str, Host], files: dict[str, list[render.ConfigFile]], release: str = "r1",
            **edits) -> dict[str, Observed]:
    """Every host up with exactly these files, every program running, every app server UP in the balancer."""
    observed = {}
    for name, host in hosts.items():
        programs = [program.name for program in render.programs(host.plan)]
        contents = {file.path: file.text.encode() for file in files[name]}
        balancer = {server.name: "UP" for server in host.plan.app_servers} if host.holds("lb") else {}
        app = host.holds("app")
        observed[name] = Observed(True, {program: "RUNNING" for program in programs}, contents, balancer,
                                  (release,) if app else (), Path(f"/srv/{name}/releases/{release}") if app else None)
    observed.update(edits)
    return observed


def test_a_running_system_that_matches_its_config_has_no_changes(make_config):
    hosts = topology(make_config)
    files = desired(hosts)
    changes = diff(hosts, files, running(hosts, files))
    assert changes.empty and changes.lines() == []
    assert changes.release == "r1"


def test_nothing_running_starts_every_supervisor_program_and_builds_a_release(make_config):
    hosts = topology(make_config)
    files = desired(hosts)
    nothing = {name: Observed(False, {}, {}) for name in hosts}
    changes = diff(hosts, files, nothing, new_secrets=True)
    assert changes.supervisor_start == set(hosts)
    assert changes.postgres == "start" and changes.haproxy == {"lb1": "start"}
    assert changes.start["app1"] == ("app1-gunicorn", "app1-nginx")
    assert changes.release is None
    assert changes.endpoints["db1"] == (("10.0.0.13", 15432, "database.port"),)
    assert changes.lines()[0].startswith("make the secrets")
    assert "build a new release, migrate the database once" in changes.lines()


def test_a_changed_pg_hba_reloads_and_a_changed_postgresql_conf_restarts(make_config):
    hosts = topology(make_config)
    files = desired(hosts)
    stale = {path: b"old" if path.name == "pg_hba.conf" else text
             for path, text in running(hosts, files)["db1"].contents.items()}
    seen = running(hosts, files)
    seen["db1"] = Observed(True, seen["db1"].statuses, stale)
    assert diff(hosts, files, seen).postgres == "reload"
    stale = {path: b"old" if path.name in ("pg_hba.conf", "postgresql.conf") else text for path, text in stale.items()}
    seen["db1"] = Observed(True, seen["db1"].statuses, stale)
    assert diff(hosts, files, seen).postgres == "restart"


def test_a_renewed_link_certificate_reloads_postgresql_and_restarts_nginx_out_of_rotation(make_config):
    hosts = topology(make_config)
    files = desired(hosts)
    db, app = hosts["db1"].plan, hosts["app1"].plan
    files["db1"] += [render.ConfigFile(db.database.cert_file, "new chain", ("postgres",)),
                     render.ConfigFile(db.database.key_file, "new key", ("postgres",))]
    files["app1"] += [render.ConfigFile(app.paths.host_cert, "new chain", ("app1-nginx",)),
                      render.ConfigFile(app.paths.host_key, "new key", ("app1-nginx",))]
    seen = running(hosts, files)
    for name in ("db1", "app1"):
        stale = {path: b"old" if path.name in ("server.crt", "server.key", "host.crt", "host.key") else text
                 for path, text in seen[name].contents.items()}
        seen[name] = Observed(True, seen[name].statuses, stale, seen[name].balancer, seen[name].releases,
                              seen[name].current)

    changes = diff(hosts, files, seen)

    assert changes.postgres == "reload"  # PostgreSQL reads its certificate anew on SIGHUP
    assert changes.restart == {"lb1": (), "app1": ("app1-nginx",), "app2": (), "db1": ()}


def test_a_changed_app_config_restarts_only_that_program_and_reloads_the_balancer_for_its_own(make_config):
    hosts = topology(make_config)
    before = desired(hosts)
    after = desired(topology(make_config, app={"timeout": 45}))
    changes = diff(hosts, after, running(hosts, before))
    assert changes.restart["app1"] == ("app1-gunicorn", "app1-nginx")
    assert changes.haproxy == {"lb1": "reload"}
    assert changes.supervisor_reread == {"app1", "app2", "lb1"}  # HAProxy's stop timeout follows app.timeout
    assert changes.postgres is None


def test_a_server_the_config_no_longer_has_is_removed_and_a_new_one_added(make_config):
    hosts = topology(make_config, app={"servers": 2})
    files = desired(hosts)
    seen = running(topology(make_config), desired(topology(make_config)))
    changes = diff(hosts, files, seen)
    assert changes.added == ("app1-2", "app2-2")
    assert changes.removed == ()
    shrunk = topology(make_config)
    changes = diff(shrunk, desired(shrunk), running(hosts, files))
    assert changes.removed == ("app1-2", "app2-2")
    assert "remove app server app1-2 (drained first)" in changes.lines()


@pytest.mark.parametrize("status", ["DRAIN", "MAINT"])
def test_a_server_left_out_of_rotation_goes_back(make_config, status):
    hosts = topology(make_config)
    files = desired(hosts)
    seen = running(hosts, files)
    seen["lb1"] = Observed(True, seen["lb1"].statuses, seen["lb1"].contents, {"app1": status, "app2": "UP"})
    assert diff(hosts, files, seen).resting == ("app1",)


def test_a_new_app_host_gets_the_live_release(make_config):
    hosts = topology(make_config)
    files = desired(hosts)
    seen = running(hosts, files)
    seen["app2"] = Observed(True, seen["app2"].statuses, seen["app2"].contents)
    changes = diff(hosts, files, seen)
    assert changes.ship == ("app2",) and not changes.empty

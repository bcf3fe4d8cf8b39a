"""servers.db = [primary, standby]: the config, the plans of both db hosts, and what is rendered for them."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from pydantic import ValidationError

from djship import render
from djship.config import _topology_problems as config_problems
from djship.ops.failover import without_host
from djship.plan import Plan, build_plans
from tests.unit.test_host_plans import specs

GOLDEN = Path(__file__).parent.parent / "golden"
ADDRESSES = {"lb1": "10.0.0.2", "app1": "10.0.0.11", "app2": "10.0.0.12", "db1": "10.0.0.20", "db2": "10.0.0.21"}
ROLES = {"lb1": ("lb", "media"), "app1": ("app",), "app2": ("app",), "db1": ("db",), "db2": ("standby",)}


def standby_config(make_config, db: object = ("db1", "db2"), **overrides):
    return make_config(
        servers={"lb": ["lb1"], "app": ["app1", "app2"], "db": list(db) if not isinstance(db, str) else db,
                 "media": "lb1"},
        hosts={name: {"address": address} for name, address in ADDRESSES.items()},
        database={"synchronous": True}, **overrides)


@pytest.fixture
def plans(make_config, fake_tools) -> dict[str, Plan]:
    return build_plans(standby_config(make_config), Path("/srv/example/board"),
                       specs(fake_tools, roles=ROLES, addresses=ADDRESSES))


def test_servers_db_takes_one_host_or_a_primary_and_a_standby(make_config):
    config = standby_config(make_config)
    assert (config.servers.primary, config.servers.standby) == ("db1", "db2")
    single = make_config(servers={"lb": ["lb1"], "app": ["app1"], "db": "db1"}, hosts={"lb1": {"address": "10.0.0.2"},
                         "app1": {"address": "10.0.0.11"}, "db1": {"address": "10.0.0.20"}})
    assert (single.servers.db_hosts, single.servers.standby) == (["db1"], None)
    with pytest.raises(ValidationError, match=r"servers.db\n.*must be the db host, or \[primary, standby\]"):
        standby_config(make_config, db=("db1", "db2", "app1"))


@pytest.mark.parametrize("change, problem", [
    ({"db": ["db1", "db1"]}, "servers.db[1]: lists 'db1' twice"),
    ({"db": ["db1", "db9"]}, "servers.db[1]: no host 'db9'"),
    ({"db": ["db1", "lb1"]}, "servers.db: 'lb1' holds another role too"),
    ({"media": None}, "servers.media: with a standby the uploads cannot follow the primary"),
])
def test_a_standby_config_that_cannot_fail_over_is_refused(make_config, change, problem):
    config = standby_config(make_config)
    servers = {**config.servers.model_dump(), **change}
    problems = config_problems(config.model_copy(update={"servers": type(config.servers)(**servers)}))
    assert any(problem in found for found in problems), problems


def test_synchronous_needs_a_standby(make_config):
    config = standby_config(make_config, db=["db1"])
    assert any(found.startswith("database.synchronous: needs a standby") for found in config_problems(config))


def test_the_app_reads_the_primary_first_then_the_standby(plans):
    for plan in plans.values():
        assert plan.database.address == "10.0.0.20"
        assert plan.database.connection_hosts == "10.0.0.20,10.0.0.21"
    assert "database.json" in [file.path.name for file in render.system_files(plans["app1"])]
    assert '"host": "10.0.0.20,10.0.0.21"' in render.database_json(plans["app1"])


def test_the_standby_listens_on_its_own_address_in_its_own_data_directory(plans):
    db2 = plans["db2"].database
    assert (db2.own_address, db2.data_dir, db2.is_standby) == ("10.0.0.21", Path("/srv/db2/postgres/data"), True)
    assert plans["db1"].database.is_standby is False
    assert [program.name for program in render.programs(plans["db2"])] == ["postgres"]
    assert "listen_addresses = '10.0.0.21'" in render.postgresql_conf(plans["db2"])
    assert plans["db2"].file_access(db2.replication_passfile).mode == 0o600
    assert plans["db2"].file_access(db2.replication_passfile).owner == "djship-db"


def test_either_db_host_accepts_the_replication_role_from_the_other_over_tls_only(plans):
    for name in ("db1", "db2"):
        rules = [line.split() for line in render.pg_hba_conf(plans[name]).splitlines() if "replication" in line
                 and not line.startswith("#")]
        assert rules == [["hostssl", "replication", "djship_replication", "10.0.0.20/32", "scram-sha-256"],
                         ["hostssl", "replication", "djship_replication", "10.0.0.21/32", "scram-sha-256"]]


def test_the_replication_password_never_lands_in_a_config_file(plans):
    conninfo = render.primary_conninfo(plans["db2"])
    assert "password" not in conninfo and "passfile='/srv/db2/postgres/replication.pgpass'" in conninfo
    assert "sslmode='verify-full'" in conninfo and "host='10.0.0.20'" in conninfo
    assert render.replication_pgpass(plans["db2"], "a:b\\c") == "*:15432:replication:djship_replication:a\\:b\\\\c\n"


@pytest.mark.parametrize("host", ["db1", "db2"])
def test_replication_conf_matches_the_golden_file(plans, host):
    text = render.replication_conf(plans[host])
    golden = GOLDEN / f"replication-{host}.conf"
    if os.environ.get("DJSHIP_UPDATE_GOLDEN"):
        golden.write_text(text, encoding="utf-8")
    assert text == golden.read_text(encoding="utf-8")


def test_a_failover_goes_on_without_the_former_primary(make_config):
    text = ('[servers]\nlb = ["lb1"]\ndb = ["db1", "db2"]  # primary first\n[database]\nsynchronous = true\n'
            '[hosts.db1]\naddress = "10.0.0.20"\n[hosts.db2]\naddress = "10.0.0.21"\n')
    assert without_host(text, "db1", "db2") == ('[servers]\nlb = ["lb1"]\ndb = ["db2"]  # primary first\n'
                                                '[database]\n[hosts.db2]\naddress = "10.0.0.21"\n')

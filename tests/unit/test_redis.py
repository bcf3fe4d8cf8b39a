"""[redis]: the config keys, where it runs and as whom, its rendered redis.conf (golden, and started by the real
redis-server), REDIS_URL in the app's secrets file only."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest

from djship import render
from djship.components import redis
from djship.config import parse_config
from djship.connectors import Result
from djship.connectors.local import LocalConnector
from djship.errors import DjshipError
from djship.tls import local_ca
from djship.plan import HostSpec, build_plans
from tests.unit.conftest import FAKE_TOOLS

UPDATE_GOLDEN = os.environ.get("DJSHIP_UPDATE_GOLDEN") == "1"
TOOLS = replace(FAKE_TOOLS, redis_server="/usr/bin/redis-server")
PASSWORD = "0123456789abcdef" * 4
# Below the ephemeral range, moved by the side-by-side runs' offset (see tests/e2e/conftest.py).
REAL_PORT = 27379 + int(os.environ.get("DJSHIP_TEST_OFFSET", "0"))
PROJECT = '[project]\nsettings_module = "board.settings"\nwsgi_application = "board.wsgi.application"\n'


@pytest.fixture
def redis_plan(make_plan):
    return make_plan(running_as_root=True, tools=TOOLS, app={"servers": 2}, redis={"maxmemory": "256mb"})


def test_redis_conf_matches_the_golden_file(redis_plan, golden_dir):
    text = render.redis_conf(redis_plan, PASSWORD)
    golden = golden_dir / "redis.conf"
    if UPDATE_GOLDEN:
        golden.write_text(text, encoding="utf-8")
    assert text == golden.read_text(encoding="utf-8"), "redis.conf differs; regenerate with DJSHIP_UPDATE_GOLDEN=1"


def test_on_one_machine_redis_runs_on_its_own_loopback_address_as_its_own_user(redis_plan):
    assert redis_plan.runs_redis and redis_plan.redis.endpoint == "127.0.3.1:16379"
    program = next(p for p in render.programs(redis_plan) if p.name == "redis")
    assert program.user == "djship-redis" and program.stopsignal == "TERM"
    assert program.command == f"/usr/bin/redis-server {redis_plan.paths.state}/redis/redis.conf"
    assert "djship-redis" in redis_plan.users_here
    access = redis_plan.file_access(redis_plan.redis.conf)
    assert (access.mode, access.owner) == (0o600, "djship-redis")
    data = next(d for d in redis_plan.directories if d.path == redis_plan.redis.data_dir)
    assert (data.mode, data.owner) == (0o700, "djship-redis")
    conf = render.redis_conf(redis_plan, PASSWORD)
    for line in ("daemonize no", "bind 127.0.3.1", "port 16379", "protected-mode yes", "appendonly yes",
                 f'requirepass "{PASSWORD}"', f'dir "{redis_plan.redis.data_dir}"', "maxmemory 256mb"):
        assert line in conf.splitlines(), line


def test_the_url_reaches_the_app_through_its_secrets_file_only(redis_plan, make_plan):
    secrets_file = render.app_secrets_env(redis_plan, {"STRIPE": "sk"}, PASSWORD)
    assert f"REDIS_URL=redis://:{PASSWORD}@127.0.3.1:16379/0" in secrets_file.splitlines()
    for file in render.system_files(redis_plan):
        assert PASSWORD not in file.text and "REDIS_URL" not in file.text, file.path
    assert render.redis_password_of(render.redis_conf(redis_plan, PASSWORD)) == PASSWORD

    without = make_plan(running_as_root=True, tools=TOOLS)
    assert not without.runs_redis and "djship-redis" not in without.users_here
    assert "redis" not in {p.name for p in render.programs(without)}
    assert "REDIS_URL" not in render.app_secrets_env(without, {}, PASSWORD)


def test_redis_runs_on_the_db_host_or_the_host_servers_redis_names(make_config):
    roles = {"lb1": ("lb",), "app1": ("app",), "db1": ("db", "redis"), "cache1": ("redis",)}
    addresses = {"lb1": "10.0.0.2", "app1": "10.0.0.11", "db1": "10.0.0.20", "cache1": "10.0.0.30"}

    def plans(holders):
        specs = [HostSpec(name, addresses[name], tuple(r for r in roles[name] if r != "redis" or name in holders),
                          Path("/srv") / name, TOOLS, True) for name in roles]
        return build_plans(make_config(redis={}), Path("/srv/example/board"), specs)

    on_db = plans({"db1"})
    assert [name for name, plan in on_db.items() if plan.runs_redis] == ["db1"]
    assert on_db["app1"].redis.endpoint == "10.0.0.20:16379"
    on_cache = plans({"cache1"})
    assert [name for name, plan in on_cache.items() if plan.runs_redis] == ["cache1"]
    assert on_cache["app1"].redis.dir == Path("/srv/cache1/redis")
    # Its clients are on other hosts: TLS, verified against djship's CA where the app runs.
    assert on_db["app1"].redis.tls and on_cache["db1"].redis.tls
    env = render.app_secrets_env(on_db["app1"], {}, PASSWORD)
    assert f"REDIS_URL='rediss://:{PASSWORD}@10.0.0.20:16379/0?ssl_cert_reqs=required&ssl_ca_certs=/srv/app1/tls/" \
           "ca.crt'" in env, env


def test_redis_on_the_one_host_that_runs_the_app_needs_no_tls(make_config):
    specs = [HostSpec("web1", "10.0.0.5", ("lb", "app", "db", "redis"), Path("/srv/web1"), TOOLS, True)]
    config = make_config(redis={}, hosts={"web1": {"address": "10.0.0.5"}},
                         servers={"lb": ["web1"], "app": ["web1"], "db": "web1"})
    [plan] = build_plans(config, Path("/srv/example/board"), specs).values()
    assert not plan.redis.tls and "REDIS_URL=redis://" in render.app_secrets_env(plan, {}, PASSWORD)


@pytest.mark.parametrize("section, problem", [
    ("[redis]\nport = 40000\n", "redis.port: 40000 is in Linux's ephemeral port range"),
    ("[redis]\nport = 80\n", "redis.port: must be a port between 1024 and 65535"),
    ("[redis]\nmaxmemory = \"lots\"\n", 'redis.maxmemory: must be a size in kb, mb or gb, e.g. "256mb"'),
    ("[redis]\naddress = \"10.0.0.1\"\n", "redis.address: must be an IPv4 loopback address"),
    ("[redis]\nbackup = \"daily\"\n", "redis.backup: Input should be a valid boolean"),
    ("[redis]\nsnapshot = true\n", "redis.snapshot: unknown key"),
    ("[redis]\n[users]\nredis = \"djship-db\"\n", "users: db and redis are both 'djship-db'"),
])
def test_bad_redis_keys_are_refused_with_their_key(section, problem):
    with pytest.raises(DjshipError) as refused:
        parse_config(PROJECT + section)
    assert problem in str(refused.value)
    assert "\n" not in str(refused.value)


def test_servers_redis_needs_redis_and_a_defined_host():
    hosts = ('[servers]\nlb = ["a"]\napp = ["a"]\ndb = "a"\nredis = "{}"\n[hosts.a]\naddress = "10.0.0.1"\n'
             '[hosts.c]\naddress = "10.0.0.3"\n')
    with pytest.raises(DjshipError, match="servers.redis: names a Redis host, but there is no \\[redis\\]"):
        parse_config(PROJECT + hosts.format("c"))
    with pytest.raises(DjshipError, match="servers.redis: no host 'x'"):
        parse_config(PROJECT + "[redis]\n" + hosts.format("x"))
    assert parse_config(PROJECT + "[redis]\n" + hosts.format("c")).servers.redis == "c"


def test_a_missing_redis_server_is_named_with_its_install_command(make_plan):
    with pytest.raises(DjshipError, match="redis-server is not installed; install it with: sudo apt-get install -y "
                                          "redis-server, or remove \\[redis\\]"):
        make_plan(redis={})


def test_the_real_redis_server_runs_the_rendered_config_and_wants_the_password(make_plan, short_tmp):
    binary = shutil.which("redis-server")
    assert binary, "redis-server is not installed; sudo apt-get install -y redis-server"
    plan = make_plan(project_dir=short_tmp, tools=replace(FAKE_TOOLS, redis_server=binary),
                     redis={"address": "127.0.0.1", "port": REAL_PORT})
    plan.redis.data_dir.mkdir(parents=True)
    plan.redis.conf.write_text(render.redis_conf(plan, PASSWORD))
    server = subprocess.Popen([binary, str(plan.redis.conf)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        connector = LocalConnector()
        plan = replace(plan, tools=replace(plan.tools, python=shutil.which("python3")))
        redis.wait_ready(plan, connector, PASSWORD, 20)
        assert redis.ping(plan, connector, plan.redis, "wrong").startswith("-WRONGPASS")
        assert (plan.redis.data_dir / "appendonlydir").is_dir()
    finally:
        server.terminate()
        output = server.communicate(timeout=20)[0].decode()
    assert PASSWORD not in output
    assert "Redis is now ready to exit, bye bye" in output


def test_the_db_hosts_admin_secrets_hold_the_redis_password_only_when_backups_take_redis():
    from djship.system import Secrets

    kept = Secrets("key", "db", "super", redis_password="r3d1s")
    assert json.loads(kept.admin_json()) == {"postgres_password": "super"}
    assert json.loads(kept.admin_json(redis=True)) == {"postgres_password": "super", "redis_password": "r3d1s"}


def test_the_snapshot_reads_the_password_from_stdin_and_names_the_endpoint(make_config):
    """redis-cli gets the password through its environment, set from stdin: never on a command line."""
    calls = []

    class Recorder:
        def run(self, argv, **options):
            calls.append((argv, options))
            return Result(tuple(argv), 0, "", "")

    plan = build_plans(make_config(redis={"backup": True}), Path("/srv/example/board"),
                       [HostSpec("local", "127.0.0.1", ("lb", "app", "db"), Path("/srv/state"), TOOLS, True,
                                 loopback=True)])["local"]
    redis.snapshot(plan, Recorder(), "r3d1s", Path("/tmp/x/redis.rdb"))
    [(argv, options)] = calls
    assert "r3d1s" not in " ".join(argv) and options["input"] == "r3d1s\n"
    assert argv[-3:] == ["/tmp/x/redis.rdb", "127.0.3.1", "16379"] and plan.redis.backup


def test_redis_between_hosts_speaks_tls_only_and_a_snapshot_loads_back_under_the_aof(make_plan, short_tmp):
    """The real redis-server and redis-cli: the rendered TLS config serves PING verified against djship's CA and
    nothing in plaintext; redis-cli --rdb takes a snapshot over TLS; load() makes it the data of a new directory."""
    binary = shutil.which("redis-server")
    assert binary, "redis-server is not installed; sudo apt-get install -y redis-server"
    plan = make_plan(project_dir=short_tmp, tools=replace(FAKE_TOOLS, redis_server=binary, python=shutil.which("python3")),
                     redis={"address": "127.0.0.1", "port": REAL_PORT + 100})
    plan = replace(plan, redis=replace(plan.redis, tls=True))
    authority = local_ca.new_authority("redis test")
    chain, key = local_ca.host_certificate(authority, "127.0.0.1", [])
    plan.redis.data_dir.mkdir(parents=True)
    plan.paths.ca_cert.parent.mkdir(parents=True, exist_ok=True)
    plan.paths.ca_cert.write_bytes(authority.cert_pem())
    plan.redis.cert_file.write_bytes(chain)
    plan.redis.key_file.write_bytes(key)
    conf = render.redis_conf(plan, PASSWORD)
    assert "\nport 0\n" in conf and f"\ntls-port {REAL_PORT + 100}\n" in conf
    assert plan.redis.url(PASSWORD, plan.paths.ca_cert).startswith(f"rediss://:{PASSWORD}@127.0.0.1:")
    plan.redis.conf.write_text(conf)
    connector = LocalConnector()

    def serve() -> subprocess.Popen:
        return subprocess.Popen([binary, str(plan.redis.conf)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)

    server = serve()
    try:
        redis.wait_ready(plan, connector, PASSWORD, 20)
        plaintext = replace(plan, redis=replace(plan.redis, tls=False))
        assert not redis.answers(redis.ping(plaintext, connector, plaintext.redis, PASSWORD))
        ask = ["redis-cli", "--tls", "--cacert", str(plan.paths.ca_cert), "-h", "127.0.0.1", "-p",
               str(REAL_PORT + 100), "--no-auth-warning", "-a", PASSWORD]
        assert subprocess.run([*ask, "SET", "kept", "in the snapshot"], capture_output=True, text=True).stdout == "OK\n"
        redis.snapshot(plan, connector, PASSWORD, short_tmp / "redis.rdb")
        assert (short_tmp / "redis.rdb").read_bytes().startswith(b"REDIS")
    finally:
        server.terminate()
        server.communicate(timeout=20)

    shutil.rmtree(plan.redis.data_dir)
    plan.redis.data_dir.mkdir()
    (short_tmp / "redis.rdb").rename(plan.redis.data_dir / "dump.rdb")
    redis.load(plan, connector, PASSWORD, plan.redis.data_dir / "dump.rdb")
    assert any(plan.redis.data_dir.glob("appendonlydir/*.base.rdb"))
    server = serve()  # with the AOF on, it starts from the AOF the load wrote
    try:
        redis.wait_ready(plan, connector, PASSWORD, 20)
        got = subprocess.run([*ask, "GET", "kept"], capture_output=True, text=True).stdout
        assert got == "in the snapshot\n"
    finally:
        server.terminate()
        server.communicate(timeout=20)

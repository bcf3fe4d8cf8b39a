"""[redis] and Celery workers, written once and run on both topologies: one machine (https://localhost:27443) and netns
hosts (1 lb + 3 app hosts + 1 db host running Redis + 1 worker host, `servers.worker`, that runs the Celery worker
and no app server).

examples/shop queues an order through HTTPS (orders/), a Celery worker of [processes] prices it through Redis and
writes a receipt row with the release and host that ran it. Redis runs as its own user, wants its password (which
lies in no file but its own three, and is read back from the redis host), and follows [redis] in and out of
djship.toml; a deploy under 4 threads of requests fails none, and every order queued while it runs is priced exactly
once, by the new release afterwards.
"""

from __future__ import annotations

import json
import os
import pwd
import secrets
import shutil
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlencode

import pytest
import tomlkit

from djship.components.probe import Response, request
from djship.config import with_values
from tests.e2e.conftest import OFFSET, REPO, Ports, Site, alive, run_djship, searchable_directory
from tests.e2e.hosts import netns_hosts
from tests.e2e.test_backup import ON_HOSTS, ONE_MACHINE, Target
from tests.e2e.test_environment import _files_holding
from tests.e2e.test_remote_system import FleetLoop, write_config

pytestmark = pytest.mark.e2e

SHOP = REPO / "examples" / "shop"
REDIS_PORTS = Ports.of(https=27443, http=27080, database=17432, app_prefix="127.0.111", database_address="127.0.112.1")
REDIS_ADDRESS = f"127.{OFFSET}.113.1"
REDIS_PORT = 17379 + OFFSET
APP_HOSTS = ["app1", "app2", "app3"]
HOSTS = ["lb1", *APP_HOSTS, "db1", "wk1"]
WORKER = {"command": "celery -A shop worker -l info --concurrency 2", "count": 1, "stop_timeout": 20}
PRICE_CENTS = 250


def _copy_shop(directory: Path) -> Path:
    project = directory / "shop"
    shutil.copytree(SHOP, project, ignore=shutil.ignore_patterns("__pycache__", "db.sqlite3", "media", ".djship"))
    return project


def _configure(project: Path, settings: dict[str, object]) -> None:
    config = project / "djship.toml"
    config.write_text(with_values(config.read_text(), {**settings, "processes.worker": WORKER}))


def make_shop(directory: Path, ports: Ports) -> Path:
    """A fresh copy of examples/shop with djship.toml written by `djship init`, the tests' ports, [redis] on a
    loopback address of its own and a Celery worker."""
    project = _copy_shop(directory)
    run_djship(project, "init")
    _configure(project, {**ports.settings(), "redis.address": REDIS_ADDRESS, "redis.port": REDIS_PORT,
                         "redis.backup": True})
    return project


@pytest.fixture(scope="module", params=[ONE_MACHINE, ON_HOSTS])
def target(request) -> Iterator[Target]:
    if request.param == ONE_MACHINE:
        with searchable_directory() as directory:
            site = Site(make_shop(directory, REDIS_PORTS), REDIS_PORTS)
            try:
                site.up()
                made = Target(site.project, {"local": site.project / ".djship"}, site)
                made.status()
                yield made
            finally:
                site.stop_everything()
        return
    with netns_hosts(HOSTS) as hosts, searchable_directory() as directory:
        project = _copy_shop(directory)
        write_config(project, hosts, APP_HOSTS)
        config = project / "djship.toml"
        config.write_text(config.read_text().replace('"board.', '"shop.'))
        _configure(project, {"redis.maxmemory": "64mb", "redis.backup": True, "servers.worker": ["wk1"],
                             "hosts.wk1.address": hosts["wk1"].address, "hosts.wk1.root": str(hosts["wk1"].root)})
        made = Target(project, {name: hosts[name].root for name in HOSTS})
        try:
            made.djship("up")
            made.status()
            yield made
        finally:
            run_djship(project, "down", check=False, timeout=300)


def _origin(target: Target) -> str:
    return "https://localhost" + ("" if target.port == 443 else f":{target.port}")


def _order(target: Target, token: str, quantities: str = "1, 2", seconds: float = 0) -> None:
    """POST an order through the balancer as a browser's form would, with the CSRF cookie and token."""
    page = target.get("/orders/")
    assert isinstance(page, Response) and page.status == 200, page
    csrf = page.cookies()["csrftoken"]
    body = urlencode({"csrfmiddlewaretoken": csrf, "token": token, "quantities": quantities, "seconds": seconds})
    answer = request(target.address, target.port, "localhost", "POST", "/orders/", tls_name="localhost",
                     ca_file=target.ca, body=body.encode(), timeout=30, headers={
                         "Content-Type": "application/x-www-form-urlencoded", "Cookie": f"csrftoken={csrf}",
                         "Origin": _origin(target), "Referer": _origin(target) + "/orders/",
                         "Accept": "application/json"})
    assert isinstance(answer, Response) and answer.status == 202, answer
    assert json.loads(answer.body) == {"token": token, "queued": True}


def _receipts(target: Target, token: str) -> list[dict]:
    answer = target.get(f"/orders/{token}/")
    assert isinstance(answer, Response) and answer.status == 200, answer
    return json.loads(answer.body)["receipts"]


def _priced(target: Target, tokens: list[str], timeout: float = 90) -> dict[str, list[dict]]:
    """The receipts of each order once every one has at least one."""
    deadline = time.monotonic() + timeout
    while True:
        found = {token: _receipts(target, token) for token in tokens}
        waiting = [token for token, receipts in found.items() if not receipts]
        if not waiting:
            return found
        assert time.monotonic() < deadline, f"{len(waiting)} of {len(tokens)} orders never priced: {waiting[:5]}"
        time.sleep(0.5)


def _redis(target: Target) -> dict:
    return target.component("redis")


def _redis_root(target: Target) -> Path:
    return target.roots[_redis(target)["host"]]


def _code_roots(target: Target) -> set[Path]:
    """The state roots of the hosts that run the app's code: the app servers' and the worker's."""
    return {target.roots[c["host"]] for c in target.status()["components"] if c["role"] in ("app", "process")}


def _password(target: Target) -> str:
    return json.loads((target.project / ".djship/secrets/redis.json").read_text())["password"]


def _ask(address: str, port: int, *commands: list[str], ca: Path | None = None) -> list[str]:
    """The lines of Redis's replies to these commands, sent on one connection (RESP), then QUIT; with ca, over TLS
    verified against it."""
    wire = b"".join(b"*%d\r\n" % len(words) + b"".join(b"$%d\r\n%s\r\n" % (len(w.encode()), w.encode()) for w in words)
                    for words in [*commands, ["QUIT"]])
    with socket.create_connection((address, port), timeout=10) as plain, (
            ssl.create_default_context(cafile=str(ca)).wrap_socket(plain, server_hostname=address)
            if ca else plain) as connection:
        connection.sendall(wire)
        replies = b""
        while chunk := connection.recv(4096):
            replies += chunk
    lines = [line.decode() for line in replies.split(b"\r\n") if line]
    return lines[:-1] if lines[-1:] == ["+OK"] else lines


def _ask_redis(target: Target, *commands: list[str]) -> list[str]:
    """From this machine, which reaches the netns hosts' addresses as their app hosts do (over TLS there)."""
    address, port = _redis(target)["address"].rsplit(":", 1)
    return _ask(address, int(port), *commands, ca=None if target.site else target.project / ".djship/tls/ca.crt")


def _url(target: Target, password: str) -> str:
    """REDIS_URL as the secrets file of an app host at root holds it: over TLS between hosts."""
    if target.site:
        return f"REDIS_URL=redis://:{password}@{_redis(target)['address']}/0"
    return f"REDIS_URL='rediss://:{password}@{_redis(target)['address']}/0?ssl_cert_reqs=required&ssl_ca_certs="


def _worker_pid(target: Target) -> int:
    worker = target.component("worker-1")
    assert worker["state"] == "RUNNING" and worker["pid"], worker
    return worker["pid"]


def test_an_order_queued_through_https_is_priced_by_a_worker_and_its_receipt_shows(target):
    token = f"first-{secrets.token_hex(4)}"

    _order(target, token, "1, 2, 3")

    [receipt] = _priced(target, [token])[token]
    assert receipt["total_cents"] == 6 * PRICE_CENTS and receipt["quantities"] == [1, 2, 3]
    assert receipt["release"] == target.status()["release"]
    assert receipt["pid"] != _worker_pid(target)  # a child of the worker's prefork pool ran it
    if not target.site:  # on hosts: on the worker host, which runs no app server
        worker = target.component("worker-1")
        assert worker["host"] == "wk1" and os.readlink(f"/proc/{worker['pid']}/cwd").startswith(
            str(target.roots["wk1"] / "releases")), worker
        assert {c["name"] for c in target.status()["components"] if c["host"] == "wk1"} == {"worker-1"}
    page = target.get("/orders/")
    assert isinstance(page, Response) and token in page.body.decode(), page


def test_redis_runs_as_its_own_user_on_its_address_and_answers_only_with_its_password(target):
    redis = _redis(target)
    assert redis["state"] == "RUNNING" and redis["health"] == "accepting", redis
    status = Path(f"/proc/{redis['pid']}/status").read_text()
    uid = next(line.split()[1] for line in status.splitlines() if line.startswith("Uid:"))
    assert pwd.getpwuid(int(uid)).pw_name == "djship-redis"
    db = next(host for host in target.status()["hosts"] if "db" in host["roles"])
    assert redis["host"] == db["name"]
    assert redis["address"] == (f"{REDIS_ADDRESS}:{REDIS_PORT}" if target.site else f"{db['address']}:16379")

    assert _ask_redis(target, ["PING"])[0].startswith("-NOAUTH")
    assert _ask_redis(target, ["AUTH", "guess"], ["PING"])[0].startswith("-WRONGPASS")
    assert _ask_redis(target, ["AUTH", _password(target)], ["PING"]) == ["+OK", "+PONG"]
    refused = _ask_redis(target, ["AUTH", _password(target)], ["CONFIG", "SET", "dir", "/tmp"])[1]
    assert refused.startswith("-ERR") and "protected" in refused, refused
    if not target.site:  # between hosts: TLS only, so the password never crosses the network in clear
        address, port = redis["address"].rsplit(":", 1)
        try:
            answered = _ask(address, int(port), ["AUTH", _password(target)], ["PING"])
        except ConnectionResetError:
            answered = []
        assert answered == []
        key = _redis_root(target) / "redis/redis.key"
        assert (key.stat().st_mode & 0o777, pwd.getpwuid(key.stat().st_uid).pw_name) == (0o600, "djship-redis")

    redis_dir = _redis_root(target) / "redis"
    conf = redis_dir / "redis.conf"
    assert (conf.stat().st_mode & 0o777, pwd.getpwuid(conf.stat().st_uid).pw_name) == (0o600, "djship-redis")
    assert (redis_dir / "data").stat().st_mode & 0o777 == 0o700
    assert (redis_dir / "data/appendonlydir").is_dir()  # the AOF: persistence on
    doctor = json.loads(target.djship("doctor", "--json", check=False).stdout)
    [check] = [c for c in doctor["checks"] if c["id"] == "redis"]
    assert check["status"] == "pass", check


def test_the_password_is_in_no_file_but_its_own_and_on_no_command_line(target):
    password = _password(target)
    redis_root, code_roots = _redis_root(target), _code_roots(target)
    envs = {root / "secrets/env" for root in code_roots}
    db = next(host["name"] for host in target.status()["hosts"] if "db" in host["roles"])
    # The db host's admin.json too: with [redis] backup, its daily backup takes Redis's snapshot with it.
    own = {target.project / ".djship/secrets/redis.json", redis_root / "redis/redis.conf", *envs,
           target.roots[db] / "secrets/admin.json"}

    assert set(_files_holding(target, password)) == own
    for path in own:
        assert path.stat().st_mode & 0o777 == 0o600, path
    assert len(envs) == (1 if target.site else 4)
    for env in envs:
        assert _url(target, password) in env.read_text(), env
    assert password not in target.djship("status", "--json").stdout
    target.djship("env", "set", "STRIPE_SECRET_KEY=sk_test_redis", "--no-restart")  # rewrites the secrets files
    for env in envs:
        assert _url(target, password) in env.read_text(), env
    assert [row["name"] for row in json.loads(target.djship("env", "list", "--json").stdout)] == ["STRIPE_SECRET_KEY"]
    refused = target.djship("env", "set", "REDIS_URL=redis://elsewhere", check=False)
    assert refused.returncode == 1 and "REDIS_URL is set by djship from [redis]" in refused.stderr, refused
    for entry in Path("/proc").iterdir():
        try:
            command = (entry / "cmdline").read_bytes() if entry.name.isdigit() else b""
        except OSError:
            continue
        assert password.encode() not in command, entry


class ShopLoop(FleetLoop):
    """4 threads of GETs of the shop's /config/ through the balancer."""

    def _get(self, session) -> tuple[str | None, str | None]:
        answer = self.fleet.get("/config/")
        if isinstance(answer, str):
            return answer, None
        if answer.status != 200:
            return f"HTTP {answer.status}", None
        return None, answer.header("X-Djship-Release") or "?"


def test_a_deploy_under_load_fails_no_request_and_orders_queued_during_it_are_priced_once(target):
    before = target.status()["release"]
    views = target.project / "store" / "views.py"
    original = views.read_text()
    views.write_text(original + "\n# a new release for the workers\n")
    tokens: list[str] = []
    deploying = threading.Event()

    def keep_ordering() -> None:
        while deploying.is_set():  # a task takes a second: some are in progress when the worker restarts
            tokens.append(f"during-{len(tokens)}-{secrets.token_hex(3)}")
            _order(target, tokens[-1], "2", seconds=1)
            time.sleep(0.8)

    orders = threading.Thread(target=keep_ordering)
    try:
        with ShopLoop(target) as load:  # type: ignore[arg-type]
            deploying.set()
            orders.start()
            said = target.djship("deploy").stdout
            deploying.clear()
            orders.join(timeout=60)
            load.wait_for(load.served + 30)
    finally:
        deploying.clear()
        views.write_text(original)
    assert load.failures == [], f"{len(load.failures)} of {load.served} requests failed: {load.failures[:5]}"
    assert ", 0 failed" in said, said
    release = target.status()["release"]
    assert release != before and len(tokens) >= 5, (release, tokens)

    priced = _priced(target, tokens)
    time.sleep(3)  # long enough for a task run twice to have written its second receipt
    counts = {token: len(_receipts(target, token)) for token in tokens}
    assert set(counts.values()) == {1}, {token: count for token, count in counts.items() if count != 1}
    assert {receipt["release"] for receipts in priced.values() for receipt in receipts} <= {before, release}

    worker = target.component("worker-1")
    app = target.roots[worker["host"]] / "releases" / release / "app"
    assert os.readlink(f"/proc/{worker['pid']}/cwd") == str(app)
    after = f"after-{secrets.token_hex(4)}"
    _order(target, after)
    assert [receipt["release"] for receipt in _priced(target, [after])[after]] == [release]
    log = (target.roots[worker["host"]] / "logs/worker-1.log").read_text()
    assert "Warm shutdown" in log and "WorkerLostError" not in log


def test_dry_run_shows_redis_and_without_redis_it_stops_keeping_its_data_until_it_is_back(target):
    password = _password(target)
    assert _ask_redis(target, ["AUTH", password], ["SET", "kept", "across removal"]) == ["+OK", "+OK"]
    config = target.project / "djship.toml"
    with_redis = config.read_text()

    config.write_text(with_values(with_redis, {"redis.maxmemory": "32mb"}))
    plan = target.djship("up", "--dry-run").stdout
    assert "redis.conf" in plan and "restart redis (configuration changed)" in plan, plan

    running, redis_root, code_roots = _redis(target)["pid"], _redis_root(target), _code_roots(target)
    worker = _worker_pid(target)
    document = tomlkit.parse(with_redis)
    del document["redis"], document["processes"]
    if "servers" in document:  # without processes, no worker host: it leaves the system (and its worker stops)
        del document["servers"]["worker"], document["hosts"]["wk1"]
    config.write_text(tomlkit.dumps(document))
    try:
        target.djship("up")
        names = {c["name"] for c in target.status()["components"]}
        assert "redis" not in names and "worker-1" not in names, names
        assert not alive(running) and not alive(worker)
        for root in code_roots - {target.roots.get("wk1")}:
            assert "REDIS_URL" not in (root / "secrets/env").read_text(), root
        assert (redis_root / "redis/data/appendonlydir").is_dir()
    finally:
        config.write_text(with_redis)

    target.djship("up")
    assert _ask_redis(target, ["AUTH", password], ["GET", "kept"]) == ["+OK", "$14", "across removal"]
    token = f"back-{secrets.token_hex(4)}"
    _order(target, token)
    assert len(_priced(target, [token])[token]) == 1


def test_a_backup_holds_redis_when_asked_and_restore_redis_puts_it_back_keeping_what_it_held(target):
    password = _password(target)
    assert _ask_redis(target, ["AUTH", password], ["SET", "plan", "before the backup"]) == ["+OK", "+OK"]
    said = target.djship("backup").stdout
    assert "Taking a snapshot of Redis" in said, said
    backup = json.loads(target.djship("backups", "--json").stdout)[-1]
    assert _ask_redis(target, ["AUTH", password], ["SET", "plan", "after it"], ["SET", "later", "1"]) == ["+OK"] * 3

    restored = target.djship("restore", backup["name"], "--yes", "--redis").stdout

    assert "Redis's data is the backup's" in restored, restored
    assert _ask_redis(target, ["AUTH", password], ["GET", "plan"], ["EXISTS", "later"]) == [
        "+OK", "$17", "before the backup", ":0"]
    kept = [path for path in (_redis_root(target) / "redis").iterdir() if path.name.startswith("data-before-")]
    assert len(kept) == 1 and (kept[0] / "appendonlydir").is_dir(), kept
    data = _redis_root(target) / "redis/data"
    assert (data / "appendonlydir").is_dir() and data.stat().st_mode & 0o777 == 0o700
    assert _redis(target)["health"] == "accepting"
    token = f"restored-{secrets.token_hex(4)}"
    _order(target, token)  # the workers reconnected to the Redis that came back
    assert len(_priced(target, [token])[token]) == 1


def test_the_password_is_read_back_from_the_redis_host_when_this_machine_lost_it(target):
    (target.project / ".djship/secrets/redis.json").unlink()

    plan = target.djship("up", "--dry-run").stdout
    assert "redis.conf" not in plan and "secrets/env" not in plan, plan
    assert _redis(target)["health"] == "accepting"  # status pings with the password it read back

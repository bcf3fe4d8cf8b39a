"""A streaming standby on real hosts: lb1 + app1 + app2 + db1 (primary) + db2 (standby), database.synchronous.

Writes come from a client in app1's namespace (the release's psycopg, the app's role, libpq's host list with
target_session_attrs=read-write), each id recorded only once its commit returned; reads are 4 threads of GETs of
the database page through the balancer. Only the test hosts' addresses (network namespaces the fixture makes and
deletes) are contacted; every process the test starts is stopped by its PID.
"""

from __future__ import annotations

import glob
import json
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.e2e.conftest import EXAMPLE, run_djship, searchable_directory
from tests.e2e.hosts import NetnsHosts, netns_hosts
from tests.e2e.test_remote_system import Fleet, FleetLoop

pytestmark = pytest.mark.e2e

HOSTS = ["lb1", "app1", "app2", "db1", "db2"]

WRITER = r"""
import signal, sys, time
import psycopg

dsn, mode = sys.argv[1], sys.argv[2]
if mode == "ids":
    with psycopg.connect(dsn) as conn:
        print(json.dumps([row[0] for row in conn.execute("SELECT id FROM standby_writes ORDER BY id")]))
    sys.exit(0)
stopping = []
signal.signal(signal.SIGTERM, lambda *_: stopping.append(1))
with psycopg.connect(dsn, autocommit=True) as conn:
    conn.execute("CREATE TABLE IF NOT EXISTS standby_writes (id integer PRIMARY KEY, at timestamptz DEFAULT now())")
first = int(mode)
conn, next_id = None, first
while not stopping:
    try:
        if conn is None:
            conn = psycopg.connect(dsn, autocommit=True)
        try:
            conn.execute("INSERT INTO standby_writes (id) VALUES (%s)", (next_id,))
        except psycopg.errors.UniqueViolation:  # an attempt whose answer was lost did commit
            pass
        print(f"ok {next_id} {time.time():.3f}", flush=True)
        next_id += 1
    except psycopg.Error as error:
        print(f"error {time.time():.3f} {type(error).__name__}", flush=True)
        try:
            conn.close()
        except Exception:
            pass
        conn = None
        time.sleep(0.05)
""".replace("import signal, sys, time", "import json, signal, sys, time")


def write_config(project: Path, hosts: NetnsHosts, db: list[str]) -> None:
    lines = [
        "[project]", 'settings_module = "board.settings"', 'wsgi_application = "board.wsgi.application"', "",
        "[app]", "workers = 2", "", "[database]", "synchronous = true", "",
        "[servers]", 'lb = ["lb1"]', 'app = ["app1", "app2"]', f"db = {json.dumps(db)}", 'media = "lb1"', "",
        "[ssh]", f'key = "{hosts.client_key}"', f'known_hosts = "{hosts.known_hosts}"', "", *hosts.users_toml,
    ]
    for name in HOSTS:
        lines += ["", f"[hosts.{name}]", f'address = "{hosts[name].address}"', f'root = "{hosts[name].root}"']
    (project / "djship.toml").write_text("\n".join(lines) + "\n")


class Standby(Fleet):
    def dsn(self, *hosts: str) -> str:
        report = self.status()
        port = next(c["address"] for c in report["components"] if c["name"] == "postgres").rsplit(":", 1)[1]
        database = report["database"]
        password = json.loads((self.project / ".djship" / "secrets" / "app.json").read_text())["database_password"]
        addresses = ",".join(self.hosts[host].address for host in hosts)
        root = self.hosts["app1"].root
        return (f"host={addresses} port={port} dbname={database} user={database} password={password} "
                f"sslmode=verify-full sslrootcert={root}/tls/ca.crt sslcert={root}/tls/no-client-certificate "
                "target_session_attrs=read-write connect_timeout=3")

    @property
    def python(self) -> str:
        found = glob.glob(f"{self.hosts['app1'].root}/venvs/*/bin/python")
        assert found, "no release virtualenv on app1"
        return found[0]

    def committed_on(self, host: str) -> list[int]:
        result = self.in_namespace("app1", self.python, "-c", WRITER, self.dsn(host), "ids")
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)

    def superuser_sql(self, host: str, port: int, sql: str) -> subprocess.CompletedProcess:
        password = json.loads((self.project / ".djship" / "secrets" / "admin.json").read_text())["postgres_password"]
        psql = glob.glob("/usr/lib/postgresql/*/bin/psql")[0]
        return self.in_namespace(host, psql, "-X", "-tA", "-h", self.hosts[host].address, "-p", str(port), "-U",
                                 "postgres", "-d", "postgres", "-c", sql, env={"PGPASSWORD": password,
                                                                              "PGSSLMODE": "require"})

    def replication(self) -> dict:
        return self.status()["replication"]


class Writer:
    """The stream of writes: ids committed (with when), and the errors it met, until stop()."""

    def __init__(self, fleet: Standby, first: int, hosts: tuple[str, ...]):
        self.log = fleet.project / f"writer-{first}.log"
        self.process = subprocess.Popen(
            ["ip", "netns", "exec", fleet.hosts["app1"].namespace, fleet.python, "-c", WRITER, fleet.dsn(*hosts),
             str(first)], stdout=self.log.open("w"), stderr=subprocess.STDOUT)

    def lines(self) -> list[list[str]]:
        return [line.split() for line in self.log.read_text().splitlines()]

    @property
    def committed(self) -> list[tuple[int, float]]:
        return [(int(line[1]), float(line[2])) for line in self.lines() if line[:1] == ["ok"]]

    @property
    def errors(self) -> list[str]:
        return [line[2] for line in self.lines() if line[:1] == ["error"]]

    def wait_for(self, count: int, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while len(self.committed) < count:
            assert self.process.poll() is None, self.log.read_text()[-2000:]
            assert time.monotonic() < deadline, f"only {len(self.committed)} of {count} writes committed"
            time.sleep(0.1)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)

    def longest_gap(self) -> float:
        times = [at for _, at in self.committed]
        return max((later - earlier for earlier, later in zip(times, times[1:])), default=0.0)


@pytest.fixture(scope="module")
def fleet():
    with netns_hosts(HOSTS) as hosts, searchable_directory() as directory:
        project = directory / "board"
        shutil.copytree(EXAMPLE, project, ignore=shutil.ignore_patterns("__pycache__", "db.sqlite3", "media", ".djship"))
        write_config(project, hosts, ["db1", "db2"])
        made = Standby(project, hosts)
        try:
            made.djship("up")
            yield made
        finally:
            run_djship(project, "down", check=False, timeout=300)


def test_db2_streams_from_db1_synchronously_over_tls(fleet: Standby):
    replication = fleet.replication()
    assert (replication["primary"], replication["standby"]) == ("db1", "db2")
    [row] = replication["standbys"]
    assert (row["name"], row["state"], row["sync_state"]) == ("djship_db2", "streaming", "sync")
    assert row["client"] == fleet.hosts["db2"].address
    text = fleet.djship("status").stdout
    assert "replication db1 -> db2: streaming (sync)" in text, text
    port = int(next(c["address"] for c in fleet.status()["components"] if c["name"] == "postgres").rsplit(":", 1)[1])
    ssl = fleet.superuser_sql("db1", port, "SELECT ssl, version FROM pg_stat_ssl JOIN pg_stat_replication "
                                           "USING (pid)")
    assert ssl.stdout.strip() == "t|TLSv1.3", ssl
    refused = fleet.superuser_sql("db2", port, "CREATE TABLE nope (id int)")
    assert "read-only transaction" in refused.stderr, refused


def test_failover_after_db1_dies_keeps_every_committed_write_and_every_read(fleet: Standby):
    writer = Writer(fleet, 1, ("db1", "db2"))
    try:
        with FleetLoop(fleet) as load:
            writer.wait_for(200)
            fleet.hosts["db1"].kill()
            killed = time.time()
            result = fleet.djship("db", "failover")
            print(result.stdout)
            before = len(writer.committed)
            writer.wait_for(before + 200)
            load.wait_for(load.served + 100)
    finally:
        writer.stop()
    resumed = next(at for _, at in writer.committed if at > killed)
    print(f"\nfailover: write outage {resumed - killed:.2f}s (longest gap between commits {writer.longest_gap():.2f}s), "
          f"{len(writer.errors)} write attempts failed meanwhile, {load.served} GETs served, "
          f"{len(load.failures)} failed {sorted(set(load.failures))}")
    committed = {number for number, _ in writer.committed}
    assert committed - set(fleet.committed_on("db2")) == set()
    assert load.failures == []
    assert json.loads((fleet.hosts["app1"].root / "database.json").read_text())["host"] == fleet.hosts["db2"].address
    assert 'db = ["db2", "db1"]' in (fleet.project / "djship.toml").read_text()


def test_the_former_primary_is_rebuilt_as_the_standby_and_its_old_data_kept_aside_refuses_writes(fleet: Standby):
    fleet.hosts.start_sshd(fleet.hosts["db1"])
    planned = fleet.djship("up", "--dry-run").stdout
    assert "fence the former primary on the standby host, keep its data directory aside" in planned, planned
    said = fleet.djship("up").stdout
    assert "Fencing db1's former primary" in said, said
    replication = fleet.replication()
    assert (replication["primary"], replication["standby"]) == ("db2", "db1")
    assert [(row["state"], row["sync_state"]) for row in replication["standbys"]] == [("streaming", "sync")]
    kept = glob.glob(f"{fleet.hosts['db1'].root}/postgres/data.replaced-*")
    assert len(kept) == 1 and Path(kept[0], "djship-fenced").is_file() and Path(kept[0], "standby.signal").is_file()
    # The old primary's data, started by hand: a read-only standby with no primary to follow.
    postgres = glob.glob("/usr/lib/postgresql/*/bin/postgres")[0]
    port = 15999 + int(fleet.hosts["db1"].address.rsplit(".", 1)[1]) % 100
    started = subprocess.Popen(["ip", "netns", "exec", fleet.hosts["db1"].namespace, "setpriv", "--reuid=djship-db",
                                "--regid=djship-db", "--init-groups", postgres, "-D", kept[0], "-c", f"port={port}"],
                               stdout=subprocess.DEVNULL, stderr=(fleet.project / "old-primary.log").open("w"))
    try:
        deadline = time.monotonic() + 30
        while (probe := fleet.superuser_sql("db1", port, "SELECT pg_is_in_recovery()")).returncode != 0:
            assert time.monotonic() < deadline and started.poll() is None, (fleet.project / "old-primary.log").read_text()
            time.sleep(0.3)
        assert probe.stdout.strip() == "t"
        refused = fleet.superuser_sql("db1", port, "CREATE TABLE split_brain (id int)")
        assert refused.returncode != 0 and "read-only transaction" in refused.stderr, refused
    finally:
        started.send_signal(signal.SIGINT)
        started.wait(timeout=60)


def test_switchover_under_load_fails_no_request_and_keeps_every_committed_write(fleet: Standby):
    writer = Writer(fleet, 100_000, ("db2", "db1"))
    try:
        with FleetLoop(fleet) as load:
            writer.wait_for(200)
            started = time.time()
            result = fleet.djship("db", "switchover")
            print(result.stdout)
            before = len(writer.committed)
            writer.wait_for(before + 200)
            load.wait_for(load.served + 100)
    finally:
        writer.stop()
    print(f"\nswitchover: longest gap between commits {writer.longest_gap():.2f}s, {len(writer.errors)} write attempts "
          f"failed and were retried, {load.served} GETs served, {len(load.failures)} failed; took "
          f"{time.time() - started:.1f}s")
    committed = {number for number, _ in writer.committed}
    assert committed - set(fleet.committed_on("db1")) == set()
    assert load.failures == []
    replication = fleet.replication()
    assert (replication["primary"], replication["standby"]) == ("db1", "db2")
    assert [(row["state"], row["sync_state"]) for row in replication["standbys"]] == [("streaming", "sync")]

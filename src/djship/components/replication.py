"""PostgreSQL's own streaming replication between the two db hosts: the replication role and slot on the primary,
pg_basebackup on the standby, promotion, fencing a former primary, and what pg_stat_replication reports."""

from __future__ import annotations

import json
import time

from djship.components.database import DatabaseServer, psql_argument
from djship.connectors import CommandFailed
from djship.errors import DjshipError
from djship.plan import REPLICATION_USER
from djship.waiting import wait_until

ENSURE_REPLICATION = """\\set role_name {role}
\\set role_password {password}
\\set slot {slot}
SELECT format(CASE WHEN EXISTS (SELECT 1 FROM pg_roles WHERE rolname = :'role_name')
              THEN 'ALTER ROLE %I REPLICATION LOGIN PASSWORD %L' ELSE 'CREATE ROLE %I REPLICATION LOGIN PASSWORD %L' END,
              :'role_name', :'role_password') \\gexec
SELECT pg_create_physical_replication_slot(:'slot')
 WHERE NOT EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = :'slot');
"""

# On the primary: each standby's state and lag as PostgreSQL measures them (NULL lags: nothing to catch up).
REPLICATION_STATUS = """SELECT coalesce(json_agg(json_build_object(
    'name', application_name, 'client', host(client_addr), 'state', state, 'sync_state', sync_state,
    'sent_lsn', sent_lsn::text, 'replay_lsn', replay_lsn::text,
    'lag_bytes', pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn)::bigint,
    'write_lag', extract(epoch FROM write_lag), 'flush_lag', extract(epoch FROM flush_lag),
    'replay_lag', extract(epoch FROM replay_lag))), '[]') FROM pg_stat_replication
"""
IN_RECOVERY = "SELECT pg_is_in_recovery()\n"
REPLAYED_LSN = "SELECT pg_last_wal_replay_lsn()::text\n"
REPLAYED_AND_SEGMENT_SIZE = ("SELECT pg_last_wal_replay_lsn()::text || ' ' || setting FROM pg_settings "
                             "WHERE name = 'wal_segment_size'\n")
PROMOTE = "SELECT pg_promote(true, 60)\n"
SYNCHRONOUS_NAMES = "SHOW synchronous_standby_names\n"
SET_SYNCHRONOUS_NAMES = "ALTER SYSTEM SET synchronous_standby_names = :'names';\nSELECT pg_reload_conf();\n"
LSN_REACHED = "SELECT pg_last_wal_replay_lsn() >= :'lsn'::pg_lsn\n"

FENCE_NOTE = ("A former primary, fenced by `djship db {why}` on {when}: it starts as a read-only standby (standby.signal) "
              "and `djship up` rebuilds it as the standby of {primary}, keeping this directory aside.\n")


class Replication:
    """One db host's PostgreSQL seen as a member of the pair."""

    def __init__(self, server: DatabaseServer, superuser_password: str):
        self.server = server
        self.plan = server.plan
        self.db = server.db
        self.connector = server.connector
        self.password = superuser_password

    def _query(self, what: str, script: str, **variables: str) -> str:
        return self.server.admin_psql(self.password, what, script, variables=variables, timeout=30).strip()

    # -- the primary ---------------------------------------------------------------------------------------------

    def ensure_role_and_slot(self, replication_password: str, slot: str) -> None:
        script = ENSURE_REPLICATION.format(role=psql_argument(REPLICATION_USER),
                                           password=psql_argument(replication_password), slot=psql_argument(slot))
        self._query("creating the replication role and slot", script)

    def standbys(self) -> list[dict]:
        return json.loads(self._query("reading pg_stat_replication", REPLICATION_STATUS) or "[]")

    def ensure_synchronous(self, names: str) -> bool:
        """synchronous_standby_names as names ('' : commits wait for no standby); whether it changed. ALTER SYSTEM,
        a reload: set once the standby streams, so a standby being made never blocks the primary's commits."""
        if self._query("reading synchronous_standby_names", SYNCHRONOUS_NAMES) == names:
            return False
        self._query("setting synchronous_standby_names", SET_SYNCHRONOUS_NAMES, names=names)
        return True

    # -- either ------------------------------------------------------------------------------------------------

    def in_recovery(self) -> bool:
        return self._query("asking whether it is a standby", IN_RECOVERY) == "t"

    # -- the standby -------------------------------------------------------------------------------------------

    def replayed(self) -> tuple[str, int]:
        """The end of the WAL this standby replayed, and the size of a WAL segment in bytes."""
        lsn, size = self._query("reading how far it replayed", REPLAYED_AND_SEGMENT_SIZE).split()
        return lsn, int(size)

    def has_standby_data(self) -> bool:
        """Its data directory is a standby's that djship may keep: standby.signal, and no fence."""
        data = self.db.data_dir
        return (self.connector.get(data / "standby.signal") is not None
                and self.connector.get(self.db.fence_marker) is None)

    def fence(self, why: str, primary: str) -> None:
        """Make this data directory start as a read-only standby from now on, and say why in it."""
        owner = self.plan.user_of("db")
        when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
        self.connector.put(self.db.data_dir / "standby.signal", "", mode=0o600, owner=owner)
        self.connector.put(self.db.fence_marker, FENCE_NOTE.format(why=why, when=when, primary=primary), mode=0o600,
                           owner=owner)

    def fence_as_standby(self) -> None:
        """A primary stopped cleanly for a switchover: it starts next as a standby (and follows the new primary's
        timeline), never as a primary."""
        self.connector.put(self.db.data_dir / "standby.signal", "", mode=0o600, owner=self.plan.user_of("db"))

    def unfence(self) -> None:
        """Undo fence_as_standby, when the switchover stopped before any promotion."""
        self.connector.run(["rm", "-f", "--", str(self.db.data_dir / "standby.signal")])

    def keep_aside(self) -> str:
        """Move the data directory aside (never deleted); where it went."""
        kept = self.db.data_dir.with_name(f"data.replaced-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}")
        result = self.connector.run(["mv", "-T", "--", str(self.db.data_dir), str(kept)])
        if not result.ok:
            raise CommandFailed(f"moving {self.db.data_dir} aside", result)
        return str(kept)

    def base_backup(self, timeout: float = 3600) -> None:
        """pg_basebackup from the primary into the (absent) data directory, as PostgreSQL's user, over TLS verified
        against djship's CA, WAL streamed alongside into the standby's slot; then standby.signal."""
        owner = self.plan.user_of("db")
        data = self.db.data_dir
        argv = [self.plan.tools.pg("pg_basebackup"), "-h", self.db.address, "-p", str(self.db.port),
                "-U", REPLICATION_USER, "-D", str(data), "-X", "stream", "-S", self.db.standby.slot,
                "--checkpoint=fast", "--no-password"]
        env = {"PGPASSFILE": str(self.db.replication_passfile), "PGSSLMODE": "verify-full",
               "PGSSLROOTCERT": str(self.plan.paths.ca_cert),
               "PGSSLCERT": str(self.plan.paths.tls / "no-client-certificate"), "PGCONNECT_TIMEOUT": "10"}
        result = self.connector.run(argv, env=env, user=owner, timeout=timeout)
        if not result.ok:
            self.connector.run(["rm", "-rf", "--", str(data)])  # pg_basebackup's own partial copy, nothing else
            raise CommandFailed(f"pg_basebackup from {self.db.endpoint}", result)
        self.connector.put(data / "standby.signal", "", mode=0o600, owner=owner)

    def promote(self) -> None:
        """pg_promote(), then no synchronous standby to wait for: its copy of the former primary's setting (from
        pg_basebackup) would name itself, and its own standby is yet to be made."""
        if self._query("promoting the standby", PROMOTE) != "t":
            raise DjshipError(f"PostgreSQL on {self.db.endpoint} did not finish its promotion within 60 s; see "
                              f"{self.plan.paths.logs / 'postgres.log'}")
        self.ensure_synchronous("")

    def replayed_lsn(self) -> str:
        return self._query("reading the replayed WAL position", REPLAYED_LSN)

    def wait_replayed(self, lsn: str, timeout: float) -> None:
        wait_until(f"the standby on {self.db.endpoint} replaying up to {lsn}",
                   lambda: (self._query("comparing WAL positions", LSN_REACHED, lsn=lsn) == "t",
                            f"at {self.replayed_lsn()}"), timeout, "see its postgres.log")


def wait_streaming(primary: Replication, slot: str, timeout: float) -> dict:
    """Until the primary sees the standby streaming; its row of pg_stat_replication."""
    found: dict = {}

    def streaming() -> tuple[bool, str]:
        nonlocal found
        found = next((row for row in primary.standbys() if row["name"] == slot), {})
        return found.get("state") == "streaming", f"state {found.get('state', 'not connected')}"

    wait_until(f"the standby {slot} streaming from {primary.db.endpoint}", streaming, timeout,
               "see the standby's postgres.log")
    return found

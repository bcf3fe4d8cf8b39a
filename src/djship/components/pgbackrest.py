"""Continuous archiving with pgBackRest (backup.archive) on the db host, as the db user.

PostgreSQL's archive_command pushes every WAL segment into the repository (pgbackrest.conf's repo1-path, off the db
host); `backup` takes a full or differential backup there. A point-in-time restore recovers a scratch cluster from
the repository to the target time (`restore --type=time`), which djship then dumps into a new database of the live
cluster (djship.ops.pitr): the live cluster, its stanza and its archive stay as they are.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path

from djship.components.database import DatabaseServer
from djship.connectors import CommandFailed, Connector
from djship.errors import DjshipError
from djship.plan import Plan
from djship.waiting import wait_until

# The time up to which WAL is in the repository: the end of the last segment PostgreSQL archived.
LAST_ARCHIVED = (
    "SELECT json_build_object('last', extract(epoch FROM last_archived_time), 'failed', failed_count, "
    "'last_failed', extract(epoch FROM last_failed_time)) FROM pg_stat_archiver\n"
)
IN_RECOVERY = "SELECT pg_is_in_recovery()\n"
# Recovery to a time stops at the first commit after it, so the archive must hold one: an empty transaction that
# commits (txid_current() gives it an id), then a switch to a new segment, which archive_command then pushes.
SEAL = ("BEGIN; SELECT txid_current() \\g /dev/null\nCOMMIT;\n"
        "SELECT json_build_object('segment', pg_walfile_name(pg_switch_wal()), 'at', extract(epoch FROM now()))\n")
ARCHIVED_WAL = "SELECT coalesce(last_archived_wal, '') FROM pg_stat_archiver\n"


@dataclass(frozen=True)
class ArchiveBackup:
    label: str
    type: str
    """"full", "diff" or "incr"."""
    started: datetime
    stopped: datetime
    size: int


@dataclass(frozen=True)
class Window:
    """The instants a point-in-time restore can reach: from the end of the oldest backup to the end of the WAL
    archived last."""
    start: datetime
    end: datetime

    def covers(self, moment: datetime) -> bool:
        return self.start <= moment <= self.end


def parse_info(output: str, stanza: str) -> list[ArchiveBackup]:
    """`pgbackrest info --output=json`'s backups of the stanza, oldest first."""
    found = next((entry for entry in json.loads(output or "[]") if entry.get("name") == stanza), None)
    if found is None:
        return []
    status = found.get("status", {})
    if status.get("code") not in (0, 2, 6, None):  # 2: no backup yet; 6: a backup is running
        raise DjshipError(f"pgBackRest cannot read the archive's stanza {stanza}: {status.get('message')}")
    return [ArchiveBackup(backup["label"], backup["type"], _utc(backup["timestamp"]["start"]),
                          _utc(backup["timestamp"]["stop"]), int(backup["info"]["size"]))
            for backup in found.get("backup", [])]


def _utc(epoch: float) -> datetime:
    return datetime.fromtimestamp(float(epoch), timezone.utc)


def window_of(backups: list[ArchiveBackup], last_archived: datetime | None) -> Window | None:
    if not backups or last_archived is None or last_archived < backups[0].stopped:
        return None
    return Window(backups[0].stopped, last_archived)


def backup_type(backups: list[ArchiveBackup], now: datetime) -> str:
    """A full backup when there is none of the last 7 days, else a differential one (what changed since it)."""
    fulls = [backup for backup in backups if backup.type == "full"]
    return "diff" if fulls and (now - fulls[-1].stopped).days < 7 else "full"


WAL_SEGMENT = re.compile(r"[0-9A-F]{24}")


def segment_number(name: str, segment_size: int) -> int:
    """A WAL segment's number, from its name (timeline, then the number in two parts of 2^32 bytes' worth)."""
    return int(name[8:16], 16) * (2**32 // segment_size) + int(name[16:24], 16)


def unarchived_segments(names: list[str], archived_last: str, replayed_lsn: str, segment_size: int) -> list[str]:
    """Of the files in a standby's pg_wal, the complete segments of the archive's newest timeline that came after
    the last one archived: those the former primary had not archived yet. The one the standby was replaying is left
    out (not complete: PostgreSQL archives it itself, as .partial, at the promotion), and so is anything after it
    (a recycled file bearing a future name)."""
    high, low = replayed_lsn.split("/")
    replaying = ((int(high, 16) << 32) | int(low, 16)) // segment_size
    last = segment_number(archived_last, segment_size)
    return sorted(name for name in names if WAL_SEGMENT.fullmatch(name) and name[:8] == archived_last[:8]
                  and last < segment_number(name, segment_size) < replaying)


class PgBackRest:
    def __init__(self, plan: Plan, connector: Connector):
        self.plan, self.connector = plan, connector
        self.archive = plan.backup.archive
        self.db = plan.database
        self.owner = plan.user_of("db")

    def _argv(self, *args: str) -> list[str]:
        if not self.plan.tools.pgbackrest:
            raise DjshipError("backup.archive needs pgBackRest on the db host; install it with: "
                              "apt-get install -y pgbackrest")
        return [self.plan.tools.pgbackrest, f"--config={self.archive.conf}", f"--stanza={self.archive.stanza}", *args]

    def _env(self) -> dict[str, str]:
        # pgBackRest connects with libpq, which takes the address and password file from the environment.
        return {"PGHOST": self.db.own_address, "PGPASSFILE": str(self.archive.pgpass), "PGCONNECT_TIMEOUT": "10"}

    def run(self, what: str, *args: str, timeout: float | None = 600) -> str:
        result = self.connector.run(self._argv(*args), user=self.owner, env=self._env(), timeout=timeout)
        if not result.ok:
            raise CommandFailed(f"pgbackrest {what}", result)
        return result.stdout

    def prepare(self, superuser_password: str) -> None:
        """pgBackRest's own directories and, on one machine, the repository, the db user's alone; the directory
        holding the repository (backup.dir) may be traversed by it, not listed. (On real hosts the repository is the
        backup host's, mounted: djship.components.offsite.)"""
        archive = self.archive
        for directory in (archive.work, archive.work / "log", archive.work / "lock", archive.work / "spool"):
            self.connector.makedirs(directory, mode=0o700, owner=self.owner)
        if archive.store is None:
            self.connector.makedirs(archive.repo.parent, mode=0o711)
            self.connector.makedirs(archive.repo, mode=0o700, owner=self.owner)
        self.connector.put(archive.pgpass, f"{self.db.own_address}:*:*:{self.db.superuser}:{superuser_password}\n",
                           mode=0o600, owner=self.owner)

    @property
    def where(self) -> str:
        """Where the repository is, as the user knows it."""
        host, path = self.plan.backup.archive_place
        return f"{path} on the backup host {host}" if host else str(path)

    def ensure_stanza(self) -> None:
        """The stanza in the repository (made once; pgBackRest checks it matches this cluster), then `check`: a WAL
        segment pushed through archive_command and found in the repository."""
        self.run("stanza-create", "stanza-create")
        self.run("check", "check", timeout=120)

    def archived_last(self) -> str | None:
        """The newest WAL segment in the repository (of the stanza's current cluster), None: none yet."""
        found = next((entry for entry in json.loads(self.run("info", "info", "--output=json", timeout=60) or "[]")
                      if entry.get("name") == self.archive.stanza), None)
        archives = (found or {}).get("archive") or []
        return archives[-1].get("max") if archives else None

    # -- a failover: the WAL the dead primary had not archived, from the standby's copy ---------------------------

    @property
    def rescued_dir(self) -> Path:
        return self.archive.work / "unarchived"

    def keep_unarchived(self, replayed_lsn: str, segment_size: int) -> list[str]:
        """On the standby, before its promotion (whose checkpoint may then remove them from pg_wal): a copy of each
        complete WAL segment the archive lacks, to push once promoted."""
        archived_last = self.archived_last()
        wal = self.db.data_dir / "pg_wal"
        listed = self.connector.run(["ls", "-1", "--", str(wal)], user=self.owner)
        if archived_last is None or not listed.ok:
            return []
        names = unarchived_segments(listed.stdout.split(), archived_last, replayed_lsn, segment_size)
        self.connector.run(["rm", "-rf", "--", str(self.rescued_dir)])
        if names:
            self.connector.makedirs(self.rescued_dir, mode=0o700, owner=self.owner)
            copied = self.connector.run(["cp", "--", *(str(wal / name) for name in names), str(self.rescued_dir)],
                                        user=self.owner)
            if not copied.ok:
                raise CommandFailed(f"copying {len(names)} WAL segments out of {wal}", copied)
        return names

    def push_unarchived(self, names: list[str]) -> None:
        """Push the copies keep_unarchived made (the promoted host is the only archiver now), then remove them."""
        try:
            for name in names:
                self.run(f"archive-push {name}", "archive-push", str(self.rescued_dir / name), timeout=300)
        finally:
            self.connector.run(["rm", "-rf", "--", str(self.rescued_dir)])

    def backups(self) -> list[ArchiveBackup]:
        return parse_info(self.run("info", "info", "--output=json", timeout=60), self.archive.stanza)

    def backup(self, kind: str) -> ArchiveBackup:
        self.run(f"backup --type={kind}", "backup", f"--type={kind}", timeout=None)
        return self.backups()[-1]

    # -- the scratch cluster a point-in-time restore recovers into -------------------------------------------

    def restore_scratch(self, target: datetime | None) -> Path:
        """The repository's newest backup before target restored into the scratch directory, to recover to target
        (None: to the end of that backup only)."""
        scratch = self.archive.scratch_dir
        self.remove_scratch()
        self.connector.makedirs(scratch, mode=0o700, owner=self.owner)
        if target is None:
            args = ["--type=immediate", "--target-action=promote"]
        else:
            args = ["--type=time", f"--target={target.astimezone(timezone.utc):%Y-%m-%d %H:%M:%S.%f+00}",
                    "--target-action=promote"]
        self.run("restore", "restore", f"--pg1-path={scratch}", *args, timeout=None)
        # The backup's pg_hba.conf is that of the host it was taken on: with a standby, a backup of the former
        # primary admits the superuser from that host only. The live cluster's, here, admits it from this one.
        live_rules = self.connector.get(self.db.data_dir / "pg_hba.conf")
        if live_rules is not None:
            self.connector.put(scratch / "pg_hba.conf", live_rules, mode=0o600, owner=self.owner)
        return scratch

    def start_scratch(self, timeout: float = 300) -> None:
        """PostgreSQL on the scratch directory, on its own port, archiving nothing (its WAL is not the live
        cluster's) and waiting for no standby (a backup taken with one has synchronous_standby_names set), until
        recovery reached the target and it was promoted."""
        scratch = self.archive.scratch_dir
        options = (f"-c port={self.archive.scratch_port} -c archive_mode=off -c synchronous_standby_names= "
                   f"-c listen_addresses={self.db.address}")
        result = self.connector.run(
            [self.plan.tools.pg("pg_ctl"), "-D", str(scratch), "-o", options, "-l", str(scratch.parent / "scratch.log"),
             "-w", "-t", str(int(timeout)), "start"], user=self.owner, timeout=timeout + 30)
        if not result.ok:
            log = self.connector.get(scratch.parent / "scratch.log") or b""
            fatal = [line for line in log.decode(errors="replace").splitlines() if "FATAL" in line]
            raise DjshipError("PostgreSQL could not recover to that time: "
                              + (fatal[-1] if fatal else (result.stderr.strip() or "pg_ctl failed")))
        wait_until("the scratch cluster's recovery", lambda: (self._promoted(), "still recovering"), timeout,
                   f"see {scratch.parent / 'scratch.log'}")

    def _promoted(self) -> bool:
        result = self.connector.run(self.scratch_psql("postgres"), env=self._env(), input=IN_RECOVERY, user=self.owner)
        return result.ok and result.stdout.strip() == "f"

    def scratch_psql(self, database: str) -> list[str]:
        return [self.plan.tools.pg("psql"), "-X", "-q", "-tA", "-v", "ON_ERROR_STOP=1", "-h", self.db.address,
                "-p", str(self.archive.scratch_port), "-U", self.db.superuser, "-d", database, "-f", "-"]

    def scratch_dump_argv(self, database: str, output: Path) -> list[str]:
        return [self.plan.tools.pg("pg_dump"), "--no-password", "--format=custom", "-h", self.db.address,
                "-p", str(self.archive.scratch_port), "-U", self.db.superuser, f"--file={output}", database]

    def verify(self, superuser_password: str) -> dict:
        """pgBackRest's own verify of the repository (every file against its checksum), then the newest backup
        restored into the scratch cluster and every table of the app's databases counted there; the result, with its
        time, kept for `status` and the doctor. The caller holds the scratch lock."""
        backups = self.backups()
        if not backups:
            raise DjshipError("the archive has no backup to verify yet; `djship backup` takes one")
        label, started = backups[-1].label, datetime.now(timezone.utc)
        result = {"at": started.isoformat(timespec="seconds"), "backup": label, "ok": False, "tables": None}
        try:
            self.run("verify", "verify", timeout=None)
            self.restore_scratch(None)
            self.start_scratch()
            rows = self._count_scratch(superuser_password)
            result.update(ok=bool(rows), tables=len(rows), rows=sum(rows.values()),
                          problem=None if rows else "the restored cluster holds no table of the app")
        except DjshipError as error:
            result["problem"] = str(error).splitlines()[0]
        finally:
            self.remove_scratch()
        self.connector.put(self.archive.verified, json.dumps(result) + "\n", mode=0o644)
        return result

    def scratch_server(self) -> DatabaseServer:
        plan = self.plan
        return DatabaseServer(replace(plan, database=replace(plan.database, port=self.archive.scratch_port)),
                              self.connector)

    def _count_scratch(self, superuser_password: str) -> dict[str, int]:
        """Rows per table ("database.schema.table") of every database of the app in the scratch cluster."""
        scratch = self.scratch_server()
        return {f"{database}.{table}": rows for database in scratch.app_databases(superuser_password)
                for table, rows in scratch.row_counts(superuser_password, database).items()}

    def remove_scratch(self) -> None:
        scratch = self.archive.scratch_dir
        if self.connector.get(scratch / "postmaster.pid") is not None:
            self.connector.run([self.plan.tools.pg("pg_ctl"), "-D", str(scratch), "-m", "immediate", "-w", "stop"],
                               user=self.owner, timeout=60)
        self.connector.run(["rm", "-rf", "--", str(scratch)])

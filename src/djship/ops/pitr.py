"""Point-in-time restore from pgBackRest's archive (backup.archive), without failing a request.

`djship restore --to TIME`: refused before anything changes unless TIME is inside the recoverable window (from the end
of the oldest backup in the repository to the end of the WAL archived last). Then, under the deploy lock: the newest
backup before TIME is restored into a scratch cluster on the db host, which replays the archived WAL up to TIME and
is promoted; its live database is dumped (pg_dump, with every table's row count in the same snapshot) and restored
into a new database of the live cluster (<name>_<time>), the counts checked, migrated to the live release, and the app
servers switched to it batch by batch exactly as `djship restore BACKUP` does. The live cluster and its archive are
never touched; the previous database is kept. The uploads are not part of it: the live media directory stays.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone

from djship.components.pgbackrest import ARCHIVED_WAL, LAST_ARCHIVED, SEAL, ArchiveBackup, PgBackRest, Window, \
    backup_type, window_of
from djship.deploy.live import Live, read_live, write_live
from djship.deploy.release import Release
from djship.deploy.rolling import Rollout
from djship.errors import DjshipError
from djship.ops import archive
from djship.ops.archive import DUMP
from djship.ops.backup import RESTORE_STAGING, Backups, RestoreResult
from djship.ops.store import run_checked
from djship.waiting import wait_until

# How long the WAL of now may take to reach the archive before a restore to a time near now is refused.
SEAL_TIMEOUT = 60


def parse_target(text: str) -> datetime:
    """"2026-12-01 10:42:00" (UTC) or an ISO time with its offset."""
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise DjshipError(f"--to {text!r}: not a time; write it as \"2026-12-01 10:42:00\" (UTC)") from None
    return moment.replace(tzinfo=timezone.utc) if moment.tzinfo is None else moment.astimezone(timezone.utc)


def _when(moment: datetime) -> str:
    return f"{moment:%Y-%m-%d %H:%M:%S} UTC"


class PointInTime:
    def __init__(self, backups: Backups):
        self.backups = backups
        self.system, self.reporter, self.db = backups.system, backups.reporter, backups.db
        if self.db.plan.backup.archive is None:
            raise DjshipError("there is no archive to restore to a point in time from; set backup.archive = true in "
                              "[backup] and run `djship up` (or restore a pg_dump backup: `djship restore NAME`)")
        self.archiver = PgBackRest(self.db.plan, self.db.connector)

    def archive_backups(self) -> list[ArchiveBackup]:
        return self.archiver.backups()

    def backup(self) -> ArchiveBackup:
        """A full backup into the archive when there is none of the last 7 days, else a differential one."""
        self.backups._require_database()
        kind = backup_type(self.archive_backups(), datetime.now(timezone.utc))
        with self.reporter.step(f"Taking a {'full' if kind == 'full' else 'differential'} backup into the archive "
                                "(pgBackRest)"):
            return self.archiver.backup(kind)

    def last_archived(self) -> datetime | None:
        password = self.backups._superuser_password()
        found = json.loads(self.backups.database.admin_psql(password, "reading pg_stat_archiver", LAST_ARCHIVED))
        return datetime.fromtimestamp(found["last"], timezone.utc) if found["last"] is not None else None

    def window(self) -> Window | None:
        return window_of(self.archive_backups(), self.last_archived())

    def window_if_running(self) -> Window | None:
        """The window, when PostgreSQL is up to say how far its archive reaches; None when it is down."""
        return self.window() if self.backups.database.is_ready() else None

    def sealed_window(self) -> Window | None:
        """The window once everything committed until now is in the archive, with a commit after it (what recovery
        to a time stops at); if archiving does not catch up in time, the window as it is."""
        database, password = self.backups.database, self.backups._superuser_password()
        sealed = json.loads(database.admin_psql(password, "switching to a new WAL segment", SEAL).strip().splitlines()[-1])

        def archived() -> tuple[bool, str]:
            last = database.admin_psql(password, "reading pg_stat_archiver", ARCHIVED_WAL).strip()
            return last >= sealed["segment"], f"WAL segment {sealed['segment']} not archived yet (last: {last or 'none'})"

        try:
            wait_until("the archive", archived, SEAL_TIMEOUT, "see PostgreSQL's log (`djship logs postgres`)")
        except DjshipError:
            return self.window()
        backups = self.archive_backups()
        return Window(backups[0].stopped, datetime.fromtimestamp(sealed["at"], timezone.utc)) if backups else None

    def check(self, target: datetime) -> Window:
        """The window, if it holds target; else the one-line refusal (nothing has changed yet)."""
        self.backups._require_database()
        window = self.window()
        if window is not None and window.start <= target:
            window = self.sealed_window()  # its end was up to archive_timeout behind now
        if window is None:
            raise DjshipError(f"cannot restore to {_when(target)}: the archive has no backup with its WAL yet "
                              "(`djship backup` takes one); nothing was changed")
        if not window.covers(target):
            raise DjshipError(f"cannot restore to {_when(target)}: the archive has no WAL for that time; the recoverable "
                              f"window is from {_when(window.start)} to {_when(window.end)}; nothing was changed")
        return window

    def _scratch_lock(self):
        """On the db host, where the scratch cluster is: the daily backup's verification takes the same lock there."""
        return self.db.connector.lock(self.db.plan.backup.archive.scratch_lock,
                                      "a restore or verification from the archive",
                                      busy="another restore or verification from the archive is running")

    def verify(self) -> dict:
        """The archive's own verify, then its newest backup restored into the scratch cluster and counted
        (PgBackRest.verify); the result kept on the db host."""
        self.backups._require_database()
        password = self.backups._superuser_password()
        with self._scratch_lock(), self.reporter.step("Verifying the archive (pgbackrest verify) and restoring its "
                                                      "newest backup into a scratch cluster to count its rows"):
            return self.archiver.verify(password)

    def restore(self, target: datetime) -> RestoreResult:
        self.check(target)
        rollout = Rollout(self.system)
        with self._scratch_lock(), rollout.locked("restore") as release:
            self.backups._check_releases_can_switch()
            try:
                return self._restore(target, rollout, release)
            finally:
                self.archiver.remove_scratch()
                self.backups._clear_staging(self.backups.live_hosts, RESTORE_STAGING)

    def _restore(self, target: datetime, rollout: Rollout, release: Release) -> RestoreResult:
        backups, db = self.backups, self.db
        hosts = backups.live_hosts
        previous = {name: read_live(host.plan, host.connector) for name, host in hosts.items()}
        password = backups._superuser_password()
        source = previous[db.name].database
        database = archive.restored_database_name(db.plan.database.name, datetime.now(timezone.utc))
        targets = {name: Live(database, live.media) for name, live in previous.items()}
        staging = backups._staging(db, RESTORE_STAGING)
        backups._clear_staging({db.name: db}, RESTORE_STAGING)
        db.connector.makedirs(staging, mode=0o700)
        with self.reporter.step(f"Recovering a scratch cluster to {_when(target)} (pgBackRest restore, WAL replay)"):
            self.archiver.restore_scratch(target)
            self.archiver.start_scratch()
        scratch = self.archiver.scratch_server()
        with self.reporter.step(f"Dumping database {source} as it was at {_when(target)} (pg_dump)"):
            rows = scratch.dump(password, source, staging / DUMP)
        try:
            with self.reporter.step(f"Restoring it into the new database {database} (pg_restore)"):
                backups.database.create_database(password, database)
                run_checked(db.connector, f"pg_restore into {database}",
                            archive.pg_restore_argv(db.plan.tools.pg("pg_restore"), db.plan.database, database,
                                                    staging / DUMP),
                            env={"PGPASSFILE": str(backups.database.passfile(password))})
            with self.reporter.step("Verifying the row count of every table against the recovered cluster"):
                problems = archive.row_count_problems(rows, backups.database.row_counts(password, database))
                if problems:
                    raise DjshipError(f"the restored database does not match the recovered cluster: "
                                      f"{'; '.join(problems[:3])}")
            backups._migrate(release, targets)
        except BaseException:
            with self.reporter.step("Removing the unfinished restore (the live database was not touched)"):
                if database in backups.database.app_databases(password):
                    backups.database.drop_database(password, database)
            raise
        try:
            rollout.roll(f"database {database}", lambda server: backups._switch_server(server, targets[server.host]),
                         lambda server: backups._switch_server(server, previous[server.host]))
        except DjshipError as error:
            backups.database.drop_database(password, database)
            raise DjshipError(f"{error}; database {source} keeps serving") from None
        for name, host in hosts.items():
            write_live(host.plan, host.connector, targets[name])
        return RestoreResult(database, targets[db.name].media, previous[db.name], "")

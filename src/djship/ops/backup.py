"""Backups of the live database and media, and restoring one without failing a request.

backup:  one PostgreSQL snapshot gives both the row counts and the dump (pg_dump --snapshot), then the media
         directory is archived; the files get sha256 checksums in a manifest, the directory appears under its
         final name only when complete, and old backups are pruned (see archive.expired).
restore: every checksum and the dump's table of contents are verified before anything changes; then, under the
         deploy lock: a safety backup, a new database (<name>_<time>) restored and its row counts checked against
         the manifest, the media in a new directory, and app server by app server (drain -> restart gunicorn on
         the new database and media -> health check -> rotation) the switch. The old database is kept.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import psycopg

from djship import __version__
from djship.connectors import CommandFailed, Result
from djship.deploy.live import Live, read_live, write_live
from djship.deploy.lock import exclusive
from djship.deploy.release import Release
from djship.deploy.rolling import Rollout
from djship.errors import DjshipError
from djship.ops import archive
from djship.ops.archive import DUMP, MANIFEST, MEDIA, FileEntry, Manifest
from djship.plan import AppServer
from djship.system import System, point_server


@dataclass(frozen=True)
class Backup:
    name: str
    path: Path
    manifest: Manifest | None
    """None when the manifest is missing or unreadable (the backup cannot be restored)."""

    @property
    def created(self) -> datetime | None:
        return archive.backup_time(self.name)


@dataclass(frozen=True)
class BackupResult:
    backup: Backup
    pruned: list[str]


@dataclass(frozen=True)
class RestoreResult:
    database: str
    media: Path
    previous: Live
    safety_backup: str


class Backups:
    def __init__(self, system: System):
        if not system.topology.one_machine:
            raise DjshipError("backup, backups, restore, databases and drop-database work on the one-machine target "
                              "so far; on real hosts they are not built yet")
        self.system = system
        self.plan = system.db_host.plan
        self.connector = system.db_host.connector
        self.reporter = system.reporter
        self.database = system.database

    def _run(self, what: str, argv: list[str], env: dict[str, str] | None = None) -> Result:
        result = self.connector.run(argv, env=env)
        if not result.ok:
            raise CommandFailed(what, result)
        return result

    def _superuser_password(self) -> str:
        return self.system.secrets().superuser_password

    def _require_database(self) -> None:
        if self.system.db_host.supervisor.pid() is None or not self.database.is_ready():
            raise DjshipError("the system is not running; start it with `djship up` first")

    # --- backup -----------------------------------------------------------------------------------------------

    def backup(self, note: str = "", protect: frozenset[str] = frozenset()) -> BackupResult:
        """Back up the live database and media; prune old backups, never one named in protect."""
        self._require_database()
        with exclusive(self.plan.paths.backup_lock, "backup", busy="another backup is running"):
            self._remove_unfinished()
            backup = self._take(note)
            return BackupResult(backup, self.prune(protect | {backup.name}))

    def _remove_unfinished(self) -> None:
        """Partial backups left by a backup that was killed (none can be running: the backup lock is held)."""
        if self.plan.backup.dir.is_dir():
            for path in self.plan.backup.dir.glob(".*.partial"):
                self._run(f"removing the unfinished backup {path.name}", archive.remove_argv(path))

    def _new_name(self) -> str:
        base = archive.backup_name(datetime.now(timezone.utc))
        name, suffix = base, 1
        while (self.plan.backup.dir / name).exists():
            suffix += 1
            name = f"{base}-{suffix}"
        return name

    def _take(self, note: str) -> Backup:
        plan, connector = self.plan, self.connector
        password = self._superuser_password()
        live = read_live(plan, connector)
        release = self.system.current()
        connector.makedirs(plan.backup.dir, mode=0o700)
        name = self._new_name()
        partial = plan.backup.dir / f".{name}.partial"
        final = plan.backup.dir / name
        connector.makedirs(partial, mode=0o700)
        try:
            with self.reporter.step(f"Dumping database {live.database} (pg_dump, one consistent snapshot)"):
                rows = self._dump(password, live.database, partial / DUMP)
            with self.reporter.step(f"Archiving media {live.media}"):
                connector.makedirs(live.media, mode=0o755, owner=plan.service_user)
                self._run("archiving the media directory", archive.tar_create_argv(live.media, partial / MEDIA))
            files = [partial / DUMP, partial / MEDIA]
            self._run("restricting the backup files", ["chmod", "0600", *map(str, files)])
            digests = self._checksums(files)
            sizes = archive.parse_stat_sizes(self._run("sizing the backup", archive.stat_sizes_argv(files)).stdout)
            manifest = Manifest(
                created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
                database=live.database,
                release=release.id if release else None,
                djship=__version__,
                files={path.name: FileEntry(digests[path.name], sizes[path.name]) for path in files},
                rows=rows,
                note=note,
            )
            connector.put(partial / MANIFEST, manifest.to_json(), mode=0o600)
            self._run("completing the backup", archive.rename_argv(partial, final))
        except BaseException:
            connector.run(archive.remove_argv(partial))
            raise
        return Backup(name, final, manifest)

    def _dump(self, password: str, database: str, output: Path) -> dict[str, int]:
        """Dump the database and count its rows in one snapshot, so the counts describe exactly the dump."""
        with self.database.administering(), self.database.admin_connection(password, database, autocommit=False) as connection:
            connection.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
            connection.read_only = True
            snapshot = connection.execute("SELECT pg_export_snapshot()").fetchone()[0]
            rows = self.database.row_counts(connection)
            self._run(
                f"pg_dump of {database}",
                archive.pg_dump_argv(self.plan.tools.pg("pg_dump"), self.plan.database, database, snapshot, output),
                env={"PGPASSWORD": password},
            )
            connection.rollback()
        return rows

    def _checksums(self, files: list[Path]) -> dict[str, str]:
        # sha256sum exits non-zero when a file is missing; the ones it could read are still listed.
        return archive.parse_sha256sum(self.connector.run(archive.sha256sum_argv(files)).stdout)

    # --- listing and retention ----------------------------------------------------------------------------------

    def list(self) -> list[Backup]:
        """Every complete backup in the backup directory, oldest first."""
        directory = self.plan.backup.dir
        if not directory.is_dir():
            return []
        backups = []
        for path in sorted(directory.iterdir(), key=lambda entry: entry.name):
            if archive.backup_time(path.name) is None or not path.is_dir():
                continue
            try:
                manifest = archive.parse_manifest(self.connector.get(path / MANIFEST), path / MANIFEST)
            except DjshipError:
                manifest = None
            backups.append(Backup(path.name, path, manifest))
        return backups

    def prune(self, protect: frozenset[str] = frozenset()) -> list[str]:
        names = [backup.name for backup in self.list()]
        today = datetime.now(timezone.utc).date()
        removed = [name for name in archive.expired(names, self.plan.backup.keep, today) if name not in protect]
        for name in removed:
            self._run(f"removing backup {name}", archive.remove_argv(self.plan.backup.dir / name))
        return removed

    # --- restore ------------------------------------------------------------------------------------------------

    def find(self, reference: str) -> Backup:
        """A backup by name (in the backup directory) or by the path of its directory."""
        path = self.plan.backup.dir / reference
        if "/" in reference or not path.is_dir():
            try:
                path = Path(reference).expanduser().resolve()
            except RuntimeError:  # ~user of a user that does not exist
                raise DjshipError(f"no backup {reference!r}: there is no user {reference[1:].split('/')[0]!r}; "
                                  "write the backup directory's path out") from None
        if not path.is_dir():
            known = ", ".join(backup.name for backup in self.list()) or "none yet; `djship backup` takes one"
            raise DjshipError(f"no backup {reference!r}; `djship backups` lists them ({known})")
        manifest = archive.parse_manifest(self.connector.get(path / MANIFEST), path / MANIFEST)
        return Backup(path.name, path, manifest)

    def verify(self, reference: str) -> Backup:
        """The backup, after every file's checksum and the dump's table of contents are checked; nothing changes."""
        backup = self.find(reference)
        manifest = backup.manifest
        digests = self._checksums([backup.path / name for name in sorted(manifest.files)])
        problems = archive.checksum_problems(manifest, digests)
        if problems:
            more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
            raise DjshipError(
                f"backup {backup.name} is damaged: {problems[0]}{more}; nothing was changed. "
                "Restore another backup (`djship backups` lists them)"
            )
        toc = self.connector.run(archive.pg_restore_list_argv(self.plan.tools.pg("pg_restore"), backup.path / DUMP))
        if not toc.ok:
            reason = (toc.stderr.strip().splitlines() or [f"exit code {toc.returncode}"])[-1]
            raise DjshipError(
                f"backup {backup.name}: {DUMP} is not a readable PostgreSQL dump ({reason}); nothing was changed"
            )
        return backup

    def _check_releases_can_switch(self) -> None:
        """Releases built before restore existed name their database in the settings; they cannot switch."""
        marker = b"DJSHIP_LIVE_FILE"
        for server in self.plan.app_servers:
            release = self.system.release_of(server)
            settings = self.connector.get(release.dir / "djship_production" / "settings.py") or b""
            if marker not in settings:
                raise DjshipError(
                    f"release {release.id} on {server.name} cannot switch databases (it was built by an older djship); "
                    "run `djship deploy` first, then restore"
                )

    def restore(self, backup: Backup) -> RestoreResult:
        """Restore a verified backup into a new database and media directory and switch every app server to them."""
        plan, connector = self.plan, self.connector
        rollout = Rollout(self.system)
        with rollout.locked("restore") as release:
            self._check_releases_can_switch()
            previous = read_live(plan, connector)
            self.reporter.note(f"Safety backup of database {previous.database} and its media first")
            safety = self.backup(note=f"safety backup before restoring {backup.name}", protect=frozenset({backup.name}))
            password = self._superuser_password()
            now = datetime.now(timezone.utc)
            target = Live(
                archive.restored_database_name(plan.database.name, now),
                plan.paths.shared / f"media-{archive.backup_name(now)}",
            )
            try:
                self._restore_data(backup, target, password)
                self._migrate(release, target)
            except BaseException:
                with self.reporter.step("Removing the unfinished restore (the live database was not touched)"):
                    self._remove(target, password)
                raise

            def apply(server: AppServer) -> None:
                self._switch_server(server, target, rollout)

            def revert(server: AppServer) -> None:
                self._switch_server(server, previous, rollout)

            try:
                rollout.roll(f"database {target.database}", apply, revert)
            except DjshipError as error:
                self._remove(target, password)
                raise DjshipError(f"{error}; database {previous.database} keeps serving") from None
            write_live(plan, connector, target)  # what new app servers, `manage`, `status` and backups use
            return RestoreResult(target.database, target.media, previous, safety.backup.name)

    def _restore_data(self, backup: Backup, target: Live, password: str) -> None:
        plan = self.plan
        with self.reporter.step(f"Restoring backup {backup.name} into the new database {target.database} (pg_restore)"):
            self.database.create_database(password, target.database)
            self._run(
                f"pg_restore into {target.database}",
                archive.pg_restore_argv(plan.tools.pg("pg_restore"), plan.database, target.database, backup.path / DUMP),
                env={"PGPASSWORD": password},
            )
        with self.reporter.step("Verifying the row count of every table against the backup"):
            with self.database.administering(), self.database.admin_connection(password, target.database) as connection:
                counts = self.database.row_counts(connection)
            problems = archive.row_count_problems(backup.manifest.rows, counts)
            if problems:
                raise DjshipError(f"the restored database does not match backup {backup.name}: {'; '.join(problems[:3])}")
        with self.reporter.step(f"Restoring media into {target.media}"):
            self.connector.makedirs(target.media, mode=0o755, owner=plan.service_user)
            self._run("extracting the media archive", archive.tar_extract_argv(backup.path / MEDIA, target.media))

    def _migrate(self, release: Release, target: Live) -> None:
        """Bring the restored database to the live release's migrations (the backup may predate some)."""
        with self.reporter.step(f"Migrating {target.database} to release {release.id} (once, under the advisory lock)"):
            self.connector.put(self.plan.paths.restoring, target.to_json(), mode=0o644)
            try:
                self.system.migrate(release, self.plan.paths.restoring)
            finally:
                self.connector.run(archive.remove_argv(self.plan.paths.restoring))

    def _switch_server(self, server: AppServer, live: Live, rollout: Rollout) -> None:
        """Point the server at this database and media directory; gunicorn reads them when it restarts."""
        point_server(server, self.connector, live)
        rollout.system.restart_app(server, rollout.system.release_of(server))

    def _remove(self, target: Live, password: str) -> None:
        if target.database in self.database.app_databases(password):
            self.database.drop_database(password, target.database)
        self.connector.run(archive.remove_argv(target.media))

    # --- databases ----------------------------------------------------------------------------------------------

    def databases(self) -> list[dict]:
        """The app's databases: the live one and those earlier restores left behind."""
        self._require_database()
        live = read_live(self.plan, self.connector).database
        sizes = self.database.app_databases(self._superuser_password())
        return [{"name": name, "live": name == live, "size": size} for name, size in sizes.items()]

    def drop_database(self, name: str) -> None:
        self._require_database()
        password = self._superuser_password()
        live = read_live(self.plan, self.connector).database
        if name == live:
            raise DjshipError(f"{name} is the live database; djship never drops it")
        names = self.database.app_databases(password)
        if name not in names:
            raise DjshipError(f"no database {name!r} of the app; `djship databases` lists them: {', '.join(names)}")
        with self.reporter.step(f"Dropping database {name}"):
            self.database.drop_database(password, name)

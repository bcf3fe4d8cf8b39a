"""Backups of the live database and media, and restoring one without failing a request, on any topology.

backup:  on the db host, one psql session counts every table's rows and runs pg_dump in the same snapshot; the media
         host (else the first app host) archives the media. Both files are streamed to backup.dir on this machine (the
         control machine) and checked against the checksums taken where they were made; a manifest lists them (see
         djship.ops.store). The daily scheduler of backup.schedule takes them the same way on the db host itself, and
         on real hosts keeps them there (backup.daily_dir); `backups` lists both and `restore` takes either.
restore: every checksum is verified where the backup is kept first. Then, under the deploy lock: the dump streamed to the db host (its
         table of contents read there) and the media to the media host (else to every app host), each copy checked
         again; a safety backup; a new database (<name>_<time>) restored on the db host and its row counts checked
         against the manifest; the media in a new directory there, beside the live one; and app server by app server (drain -> restart gunicorn on
         the new database and media -> health check -> rotation) the switch. The old database is kept.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from djship.connectors import on_each
from djship.connectors.local import LocalConnector
from djship.deploy.live import Live, read_live, write_live
from djship.deploy.lock import exclusive
from djship.deploy.release import Release
from djship.deploy.rolling import Rollout
from djship.errors import DjshipError
from djship.ops import archive
from djship.components import redis as redis_server
from djship.ops.archive import DUMP, MANIFEST, MEDIA, REDIS
from djship.ops.store import Backup, Sources, Store, entries, run_checked, take
from djship.plan import REDIS_PROGRAM, AppServer
from djship.system import System, point_server
from djship.topology import Host

# Under a host's state root: the files a backup makes there before they are streamed here, and those a restore
# streams there. Each kind is removed whole when its operation starts, under its own lock.
BACKUP_STAGING = "backup-staging"
RESTORE_STAGING = "restore-staging"
REDIS_READY_SECONDS = 60


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
    redis_kept: Path | None = None
    """With --redis: where Redis's data before the restore was kept (on the redis host)."""


class Backups:
    def __init__(self, system: System):
        self.system = system
        self.reporter = system.reporter
        self.db = system.db_host
        self.database = system.database
        self.first_app_host = next(iter(system.app_hosts.values()))
        """The first app host: restore's migrate runs there."""
        self.media_keepers = {host.name: host for host in system.topology.holding("media")} or system.code_hosts
        """Where the media directories are: the media host every app and worker host mounts them from, else the one
        host that runs the app's code."""
        self.media_source = next(iter(self.media_keepers.values()))
        self.local = LocalConnector()
        plan = self.db.plan
        # The plan's default backup.dir lies under a host's own root; the backups are kept on this machine.
        self.dir = plan.backup.dir
        self.keep = plan.backup.keep
        self.store = Store(self.local, self.dir, mode=0o711 if plan.backup.archive else 0o700)
        daily, target = plan.backup.daily_dir, plan.backup.target
        self.offsite = Store(system.hosts[target.host].connector, target.dir, system.hosts[target.host]) \
            if target is not None else None
        """The backup host's store (servers.backup), where every backup goes; None: backups are kept here."""
        self.stores = [self.store] + ([Store(self.db.connector, daily, self.db)] if daily is not None else []) + \
            ([self.offsite] if self.offsite else [])
        """Where backups are: here, on the db host when its daily scheduler kept them there, on the backup host."""

    @property
    def live_hosts(self) -> dict[str, Host]:
        """The hosts that keep a live.json: those that run the app's code (its gunicorns and processes read it), the db
        host, the standby's (the db host once promoted: its backups and restores read it) and the media host."""
        standby = self.system.standby_host
        return {**self.system.code_hosts, self.db.name: self.db, **({standby.name: standby} if standby else {}),
                **self.media_keepers}

    def _superuser_password(self) -> str:
        return self.system.secrets().superuser_password

    def _require_database(self) -> None:
        if self.db.supervisor.pid() is None or not self.database.is_ready():
            raise DjshipError("the system is not running; start it with `djship up` first")

    @staticmethod
    def _staging(host: Host, kind: str) -> Path:
        return host.plan.paths.state / kind

    def _clear_staging(self, hosts: dict[str, Host], kind: str) -> None:
        on_each(hosts, lambda host: run_checked(host.connector, f"removing {kind} on {host.name}",
                                                archive.remove_argv(self._staging(host, kind))))

    # --- backup -----------------------------------------------------------------------------------------------

    def backup(self, note: str = "", protect: frozenset[str] = frozenset()) -> BackupResult:
        """Back up the live database and media; prune old backups, never one named in protect."""
        self._require_database()
        if self.offsite is not None:
            return self._backup_offsite(note, protect)
        self.system.control.state.mkdir(parents=True, exist_ok=True)
        with exclusive(self.system.control.backup_lock, "backup", busy="another backup is running"):
            sources = self._sources()
            self.store.remove_unfinished()
            sources.clear()
            backup = take(sources, self.store, note, self.reporter)
            return BackupResult(backup, self.store.prune(self.keep, protect | {backup.name}))

    def _backup_offsite(self, note: str, protect: frozenset[str]) -> BackupResult:
        """The db host's agent takes it there and sends it to the backup host, as its daily backup does."""
        with self.reporter.step(f"Backing up on {self.db.name} and sending it to {self.offsite.host.name}"):
            flags = [word for name in sorted(protect) for word in ("--protect", name)]
            done = json.loads(self.system.agent("backup", "--note", note, *flags, host=self.db))
        backup = next(backup for backup in self.offsite.list() if backup.name == done["backup"])
        return BackupResult(backup, done["pruned"])

    def _sources(self) -> Sources:
        release = self.system.current()
        redis = self.db.plan.redis
        return Sources(self.db, self.media_source, self._superuser_password(), release.id if release else None,
                       BACKUP_STAGING, name_hosts=len(self.system.hosts) > 1,
                       redis_password=self.system.secrets().redis_password if redis and redis.backup else None)

    def _on(self, host: Host) -> str:
        return "" if len(self.system.hosts) == 1 else f" on {host.name}"

    # --- listing ------------------------------------------------------------------------------------------------

    def list(self) -> list[Backup]:
        """Every complete backup, here and on the db host, oldest first."""
        return sorted((backup for store in self.stores for backup in store.list()), key=lambda backup: backup.name)

    # --- restore ------------------------------------------------------------------------------------------------

    def find(self, reference: str) -> Backup:
        """A backup by name (here, else on the db host) or by the path of its directory here."""
        path = self.dir / reference
        if "/" not in reference and not path.is_dir():
            kept = next((backup for store in self.stores[1:] for backup in store.list() if backup.name == reference),
                        None)
            if kept is not None:
                return self._readable(kept)
        if "/" in reference or not path.is_dir():
            try:
                path = Path(reference).expanduser().resolve()
            except RuntimeError:  # ~user of a user that does not exist
                raise DjshipError(f"no backup {reference!r}: there is no user {reference[1:].split('/')[0]!r}; "
                                  "write the backup directory's path out") from None
        if not path.is_dir():
            known = ", ".join(backup.name for backup in self.list()) or "none yet; `djship backup` takes one"
            raise DjshipError(f"no backup {reference!r}; `djship backups` lists them ({known})")
        return Backup(path.name, path, archive.parse_manifest(self.local.get(path / MANIFEST), path / MANIFEST))

    @staticmethod
    def _readable(backup: Backup) -> Backup:
        if backup.manifest is None:
            raise DjshipError(f"backup {backup.name} on {backup.host.name} has no readable {MANIFEST}; it cannot be "
                              "restored (`djship backups` lists the others)")
        return backup

    def _connector_of(self, backup: Backup):
        return self.local if backup.host is None else backup.host.connector

    def verify(self, reference: str) -> Backup:
        """The backup, after every file's checksum is checked where it is kept; nothing changes."""
        backup = self.find(reference)
        found = entries(self._connector_of(backup), [backup.path / name for name in sorted(backup.manifest.files)])
        problems = archive.checksum_problems(backup.manifest, {name: entry.sha256 for name, entry in found.items()})
        if problems:
            more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
            raise DjshipError(
                f"backup {backup.name} is damaged: {problems[0]}{more}; nothing was changed. "
                "Restore another backup (`djship backups` lists them)"
            )
        return backup

    def _deliver(self, backup: Backup, file: str, host: Host, target: Path) -> None:
        """A file of the backup to a host: copied there when the host keeps the backup, else streamed from here (a
        backup kept on another host passes through a private temporary file here)."""
        source = backup.path / file
        if backup.host is not None and backup.host.name == host.name:
            run_checked(host.connector, f"copying {file} of backup {backup.name}", ["cp", str(source), str(target)])
        elif backup.host is None:
            host.connector.upload(source, target)
        else:
            with tempfile.TemporaryDirectory(prefix="djship-restore-") as relay:
                backup.host.connector.download(source, Path(relay) / file)
                host.connector.upload(Path(relay) / file, target)

    def _send(self, backup: Backup, redis: bool) -> None:
        """The dump to the db host and the media to every app host (with redis, Redis's snapshot to the redis host),
        each copy checked there, and the dump's table of contents read on the db host; nothing of the system
        changes."""
        receivers = self._receivers(redis)
        wanted = {name: [DUMP] if name == self.db.name else [] for name in receivers}
        for name in self.media_keepers:
            wanted[name].append(MEDIA)
        if redis:
            wanted[self.system.redis_host.name].append(REDIS)
        self._clear_staging(receivers, RESTORE_STAGING)

        def send(host: Host) -> None:
            staging = self._staging(host, RESTORE_STAGING)
            host.connector.makedirs(staging, mode=0o700)
            for file in wanted[host.name]:
                self._deliver(backup, file, host, staging / file)
            copies = entries(host.connector, [staging / file for file in wanted[host.name]])
            changed = [file for file in wanted[host.name] if copies.get(file) != backup.manifest.files[file]]
            if changed:
                raise DjshipError(f"{changed[0]} of backup {backup.name} changed on its way to {host.name}; "
                                  "nothing was changed")

        where = "this machine" if len(self.system.hosts) == 1 else ", ".join(receivers)
        with self.reporter.step(f"Streaming backup {backup.name} to {where}"):
            on_each(receivers, send)
        dump = self._staging(self.db, RESTORE_STAGING) / DUMP
        toc = self.db.connector.run(archive.pg_restore_list_argv(self.db.plan.tools.pg("pg_restore"), dump))
        if not toc.ok:
            reason = (toc.stderr.strip().splitlines() or [f"exit code {toc.returncode}"])[-1]
            raise DjshipError(
                f"backup {backup.name}: {DUMP} is not a readable PostgreSQL dump ({reason}); nothing was changed"
            )

    def _check_releases_can_switch(self) -> None:
        """Releases built before restore existed name their database in the settings; they cannot switch."""
        marker = b"DJSHIP_LIVE_FILE"
        for server in self.system.plan.app_servers:
            release = self.system.release_of(server)
            settings = self.system.host_of(server).connector.get(release.dir / "djship_production" / "settings.py")
            if marker not in (settings or b""):
                raise DjshipError(
                    f"release {release.id} on {server.name} cannot switch databases (it was built by an older djship); "
                    "run `djship deploy` first, then restore"
                )

    def restore(self, backup: Backup, redis: bool = False) -> RestoreResult:
        """Restore a verified backup into a new database and media directory and switch every app server to them;
        with redis, Redis's data too (it is stopped for as long as it takes to load)."""
        if redis:
            self._check_redis(backup)
        rollout = Rollout(self.system)
        with rollout.locked("restore") as release:
            self._check_releases_can_switch()
            try:
                return self._restore(backup, rollout, release, redis)
            finally:
                self._clear_staging(self._receivers(redis), RESTORE_STAGING)

    def _check_redis(self, backup: Backup) -> None:
        if self.system.redis_host is None:
            raise DjshipError("--redis: there is no [redis] in djship.toml to restore Redis's data into")
        if not backup.manifest.holds_redis:
            raise DjshipError(f"--redis: backup {backup.name} holds no snapshot of Redis (it was taken without "
                              "[redis] backup = true); restore it without --redis")

    def _receivers(self, redis: bool) -> dict[str, Host]:
        """The hosts a restore streams files to: those with a live.json, and with redis the redis host."""
        return {**self.live_hosts, **({self.system.redis_host.name: self.system.redis_host} if redis else {})}

    def _restore(self, backup: Backup, rollout: Rollout, release: Release, redis: bool) -> RestoreResult:
        hosts = self.live_hosts
        previous = {name: read_live(host.plan, host.connector) for name, host in hosts.items()}
        self._send(backup, redis)
        self.reporter.note(f"Safety backup of database {previous[self.db.name].database} and its media first")
        safety = self.backup(note=f"safety backup before restoring {backup.name}", protect=frozenset({backup.name}))
        password = self._superuser_password()
        now = datetime.now(timezone.utc)
        database = archive.restored_database_name(self.db.plan.database.name, now)
        targets = {name: Live(database, host.plan.media_dirs / f"media-{archive.backup_name(now)}")
                   for name, host in hosts.items()}
        try:
            self._restore_data(backup, targets, password)
            self._migrate(release, targets)
        except BaseException:
            with self.reporter.step("Removing the unfinished restore (the live database was not touched)"):
                self._remove(targets, password)
            raise
        try:
            rollout.roll(f"database {database}", lambda server: self._switch_server(server, targets[server.host]),
                         lambda server: self._switch_server(server, previous[server.host]))
        except DjshipError as error:
            self._remove(targets, password)
            raise DjshipError(f"{error}; database {previous[self.db.name].database} keeps serving") from None
        for name, host in hosts.items():  # what new app servers, `manage`, `status` and backups use
            write_live(host.plan, host.connector, targets[name])
        kept = self._restore_redis(backup, now) if redis else None
        return RestoreResult(database, targets[self.media_source.name].media, previous[self.media_source.name],
                             safety.backup.name, kept)

    def _restore_redis(self, backup: Backup, now: datetime) -> Path:
        """Redis stopped, its data directory kept aside, the snapshot loaded into a new one, Redis started on it.
        Returns where the data before it was kept."""
        host = self.system.redis_host
        plan, connector = host.plan, host.connector
        data = plan.redis.data_dir
        kept = data.with_name(f"data-before-{archive.backup_name(now)}")
        with self.reporter.step(f"Restoring Redis's data from backup {backup.name}{self._on(host)} (Redis stops "
                                f"while it loads; the data before it is kept in {kept})"):
            host.supervisor.stop(REDIS_PROGRAM)
            run_checked(connector, "keeping Redis's data aside", ["mv", "--", str(data), str(kept)])
            connector.makedirs(data, mode=0o700, owner=plan.user_of("redis"))
            snapshot, staged = data / "dump.rdb", self._staging(host, RESTORE_STAGING) / REDIS
            if plan.user_of("redis"):  # in root's staging directory, before it enters one Redis's user writes in
                run_checked(connector, "giving the snapshot to Redis", ["chown", plan.user_of("redis"), str(staged)])
            run_checked(connector, "moving the snapshot into place", ["mv", "--", str(staged), str(snapshot)])
            redis_server.load(plan, connector, self.system.secrets().redis_password, snapshot)
            host.supervisor.start(REDIS_PROGRAM)
            redis_server.wait_ready(plan, connector, self.system.secrets().redis_password, REDIS_READY_SECONDS)
        # A Celery worker whose broker went away may not consume again by itself; restarted, it reads the queues as
        # they now are.
        release = self.system.current()
        if release is not None:
            self.system.restart_processes(release)
        return kept

    def _restore_data(self, backup: Backup, targets: dict[str, Live], password: str) -> None:
        db, database = self.db, targets[self.db.name].database
        with self.reporter.step(f"Restoring backup {backup.name} into the new database {database}{self._on(db)} "
                                "(pg_restore)"):
            self.database.create_database(password, database)
            run_checked(db.connector, f"pg_restore into {database}",
                 archive.pg_restore_argv(db.plan.tools.pg("pg_restore"), db.plan.database, database,
                                         self._staging(db, RESTORE_STAGING) / DUMP),
                 env=self.database.client_env(password))
        with self.reporter.step("Verifying the row count of every table against the backup"):
            problems = archive.row_count_problems(backup.manifest.rows, self.database.row_counts(password, database))
            if problems:
                raise DjshipError(f"the restored database does not match backup {backup.name}: "
                                  f"{'; '.join(problems[:3])}")

        def extract(host: Host) -> None:
            media = targets[host.name].media
            host.connector.makedirs(media, mode=0o755, owner=host.plan.media_owner)
            run_checked(host.connector, f"extracting the media archive on {host.name}",
                 archive.tar_extract_argv(self._staging(host, RESTORE_STAGING) / MEDIA, media))

        source = self.media_source
        with self.reporter.step(f"Restoring media into {targets[source.name].media}"
                                + (self._on(source) if len(self.media_keepers) == 1 else " on every app host")):
            on_each(self.media_keepers, extract)

    def _migrate(self, release: Release, targets: dict[str, Live]) -> None:
        """Bring the restored database to the live release's migrations (the backup may predate some); migrate runs
        on the first app host."""
        host = self.first_app_host
        target = targets[host.name]
        with self.reporter.step(f"Migrating {target.database} to release {release.id} (once, under the advisory lock)"):
            host.connector.put(host.plan.paths.restoring, target.to_json(), mode=0o644)
            try:
                self.system.migrate(release, host.plan.paths.restoring)
            finally:
                host.connector.run(archive.remove_argv(host.plan.paths.restoring))

    def _switch_server(self, server: AppServer, live: Live) -> None:
        """Point the server at this database and media directory; gunicorn reads them when it restarts."""
        point_server(server, self.system.host_of(server).connector, live)
        self.system.restart_app(server, self.system.release_of(server))

    def _remove(self, targets: dict[str, Live], password: str) -> None:
        database = targets[self.db.name].database
        if database in self.database.app_databases(password):
            self.database.drop_database(password, database)
        on_each(self.media_keepers, lambda host: host.connector.run(archive.remove_argv(targets[host.name].media)))

    # --- databases ----------------------------------------------------------------------------------------------

    def _live_database(self) -> str:
        return read_live(self.db.plan, self.db.connector).database

    def databases(self) -> list[dict]:
        """The app's databases: the live one and those earlier restores left behind."""
        self._require_database()
        live = self._live_database()
        sizes = self.database.app_databases(self._superuser_password())
        return [{"name": name, "live": name == live, "size": size} for name, size in sizes.items()]

    def drop_database(self, name: str) -> None:
        self._require_database()
        password = self._superuser_password()
        if name == self._live_database():
            raise DjshipError(f"{name} is the live database; djship never drops it")
        names = self.database.app_databases(password)
        if name not in names:
            raise DjshipError(f"no database {name!r} of the app; `djship databases` lists them: {', '.join(names)}")
        with self.reporter.step(f"Dropping database {name}"):
            self.database.drop_database(password, name)

"""Where backups are kept and how one is taken, on whichever host runs it.

A store is a directory on one host, reached through its connector: backup.dir on the control machine (what `djship
backup` writes), or the db host's own directory on real hosts (what its daily scheduler writes, see djship.agent).
Taking a backup is the same in both: the dump and the media archive are made where they live (in a staging
directory), streamed into `.<name>.partial` in the store, checked against the checksums taken where they were made,
a manifest written, and the directory renamed to its final name only when complete.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Protocol

from djship import __version__
from djship.components import redis
from djship.components.database import DatabaseServer
from djship.connectors import CommandFailed, Connector, Result, on_each
from djship.deploy.live import read_live
from djship.errors import DjshipError
from djship.ops import archive
from djship.ops.archive import DUMP, MANIFEST, MEDIA, REDIS, FileEntry, Manifest
from djship.plan import Plan
from djship.progress import Reporter


class Host(Protocol):
    """A host as a backup sees it (a topology Host; on a host, djship's agent's own): no more than this, so that the
    agent needs none of what the control machine runs."""

    @property
    def name(self) -> str: ...

    @property
    def plan(self) -> Plan: ...

    @property
    def connector(self) -> Connector: ...


@dataclass(frozen=True)
class Backup:
    name: str
    path: Path
    manifest: Manifest | None
    """None when the manifest is missing or unreadable (the backup cannot be restored)."""
    host: Host | None = None
    """The host whose store keeps it; None: this machine's backup.dir."""

    @property
    def created(self) -> datetime | None:
        return archive.backup_time(self.name)


def run_checked(connector: Connector, what: str, argv: list[str], env: dict[str, str] | None = None) -> Result:
    result = connector.run(argv, env=env)
    if not result.ok:
        raise CommandFailed(what, result)
    return result


def entries(connector: Connector, files: list[Path]) -> dict[str, FileEntry]:
    """sha256 and size of each file that exists, by file name."""
    # sha256sum and stat exit non-zero when a file is missing; the ones they could read are still listed.
    digests = archive.parse_sha256sum(connector.run(archive.sha256sum_argv(files)).stdout)
    sizes = archive.parse_stat_sizes(connector.run(archive.stat_sizes_argv(files)).stdout)
    return {name: FileEntry(digest, sizes[name]) for name, digest in digests.items() if name in sizes}


@dataclass(frozen=True)
class Store:
    connector: Connector
    dir: Path
    host: Host | None = None
    """The host it is on, as Backup.host names it."""

    def list(self) -> list[Backup]:
        """Every complete backup, oldest first."""
        names = self.connector.listdir(self.dir) or []
        backups = []
        for name in sorted(names):
            if archive.backup_time(name) is None:
                continue
            path = self.dir / name
            try:
                manifest = archive.parse_manifest(self.connector.get(path / MANIFEST), path / MANIFEST)
            except DjshipError:
                manifest = None
            backups.append(Backup(name, path, manifest, self.host))
        return backups

    def prune(self, keep: int, protect: frozenset[str] = frozenset()) -> list[str]:
        names = [backup.name for backup in self.list()]
        today = datetime.now(timezone.utc).date()
        removed = [name for name in archive.expired(names, keep, today) if name not in protect]
        for name in removed:
            run_checked(self.connector, f"removing backup {name}", archive.remove_argv(self.dir / name))
        return removed

    def remove_unfinished(self) -> None:
        """What a backup that was killed left (none can be running: the caller holds the store's lock)."""
        for name in self.connector.listdir(self.dir) or []:
            if name.startswith(".") and name.endswith(".partial"):
                run_checked(self.connector, f"removing the unfinished backup {name}",
                            archive.remove_argv(self.dir / name))

    def new_name(self) -> str:
        base = archive.backup_name(datetime.now(timezone.utc))
        taken = set(self.connector.listdir(self.dir) or [])
        name, suffix = base, 1
        while name in taken:
            suffix += 1
            name = f"{base}-{suffix}"
        return name


@dataclass(frozen=True)
class Sources:
    """What a backup is made of: the live database on the db host and the live media on the media host; with
    [redis] backup, a snapshot of Redis, taken from the db host too."""
    db: Host
    media: Host
    superuser_password: str
    release: str | None
    staging: str
    """The directory under each source host's state root where the files are made before they are streamed."""
    name_hosts: bool = True
    """Whether the progress lines say which host a step runs on (not when there is one)."""
    redis_password: str | None = None
    """With [redis] backup: the password the db host takes Redis's snapshot with; None: no snapshot."""

    def staging_dir(self, host: Host) -> Path:
        return host.plan.paths.state / self.staging

    def by_host(self) -> dict[str, Host]:
        return {self.db.name: self.db, self.media.name: self.media}

    def clear(self) -> None:
        on_each(self.by_host(), lambda host: run_checked(host.connector, f"removing {self.staging} on {host.name}",
                                                         archive.remove_argv(self.staging_dir(host))))

    def on(self, host: Host) -> str:
        return f" on {host.name}" if self.name_hosts else ""


def take(sources: Sources, store: Store, note: str, reporter: Reporter) -> Backup:
    """A backup of the live database and media into the store."""
    db, media_host = sources.db, sources.media
    database = read_live(db.plan, db.connector).database
    media = read_live(media_host.plan, media_host.connector).media
    store.connector.makedirs(store.dir, mode=0o700)
    name = store.new_name()
    partial, final = store.dir / f".{name}.partial", store.dir / name
    store.connector.makedirs(partial, mode=0o700)
    made = {DUMP: (db, sources.staging_dir(db) / DUMP), MEDIA: (media_host, sources.staging_dir(media_host) / MEDIA)}
    if sources.redis_password:
        made[REDIS] = (db, sources.staging_dir(db) / REDIS)
    try:
        on_each(sources.by_host(), lambda host: host.connector.makedirs(sources.staging_dir(host), mode=0o700))
        with reporter.step(f"Dumping database {database}{sources.on(db)} (pg_dump, one consistent snapshot)"):
            rows = DatabaseServer(db.plan, db.connector).dump(sources.superuser_password, database, made[DUMP][1])
        with reporter.step(f"Archiving media {media}{sources.on(media_host)}"):
            media_host.connector.makedirs(media, mode=0o755, owner=media_host.plan.media_owner)
            run_checked(media_host.connector, "archiving the media directory",
                        archive.tar_create_argv(media, made[MEDIA][1]))
        if REDIS in made:
            with reporter.step(f"Taking a snapshot of Redis on {db.plan.redis.endpoint}{sources.on(db)} (redis-cli --rdb)"):
                redis.snapshot(db.plan, db.connector, sources.redis_password, made[REDIS][1])
        where = store.dir if store.host is None else f"{store.dir} on {store.host.name}"
        with reporter.step(f"Streaming the backup to {where}"):
            files = {file: _copy(host, path, store, partial / file) for file, (host, path) in made.items()}
        manifest = Manifest(
            created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
            database=database,
            release=sources.release,
            djship=__version__,
            files=files,
            rows=rows,
            note=note,
        )
        store.connector.put(partial / MANIFEST, manifest.to_json(), mode=0o600)
        run_checked(store.connector, "completing the backup", archive.rename_argv(partial, final))
    except BaseException:
        store.connector.run(archive.remove_argv(partial))
        raise
    finally:
        sources.clear()
    return Backup(name, final, manifest, store.host)


def _copy(host: Host, made: Path, store: Store, target: Path) -> FileEntry:
    """A file made on host, into the store; its checksum and size as taken where it was made, checked on the copy.
    The store is on host itself (the agent's) or on this machine (`djship backup`'s): download() writes here."""
    entry = entries(host.connector, [made]).get(made.name)
    if entry is None:
        raise DjshipError(f"{made} is missing on {host.name}")
    if store.connector is host.connector:  # made where the store is: moved in, private as a download is
        run_checked(host.connector, f"moving {made.name} into the backup", archive.rename_argv(made, target))
        run_checked(host.connector, f"making {made.name} private", ["chmod", "600", str(target)])
    else:
        host.connector.download(made, target)
    if entries(store.connector, [target]).get(target.name) != entry:
        raise DjshipError(f"{made.name} changed on its way from {host.name} to {target}; nothing was kept")
    return entry

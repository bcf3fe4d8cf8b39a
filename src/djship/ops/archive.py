"""The pure parts of backup and restore: names, command lines, the manifest, retention, the daily schedule.

A backup is one directory, named by the UTC time it was taken (e.g. 20261125T203000Z), 0700:

    database.dump   pg_dump --format=custom of the live database, from one snapshot
    media.tar       the live media directory
    manifest.json   created, database, release, djship version, sha256 and size of each file, and the row
                    count of every table in the dump's snapshot (what a restore is verified against)

Nothing here touches a machine: the command lines are run through a host's connector by djship.ops.backup.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

from djship.errors import DjshipError
from djship.plan import Database

DUMP = "database.dump"
MEDIA = "media.tar"
REDIS = "redis.rdb"
MANIFEST = "manifest.json"
FORMAT = 1
_STAMP = "%Y%m%dT%H%M%SZ"
_NAME = re.compile(r"^\d{8}T\d{6}Z(-\d+)?$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")



def backup_name(now: datetime) -> str:
    return now.astimezone(timezone.utc).strftime(_STAMP)


def backup_time(name: str) -> datetime | None:
    """When the backup called name was taken, or None when name is not a backup's name."""
    if not _NAME.fullmatch(name):
        return None
    return datetime.strptime(name[:16], _STAMP).replace(tzinfo=timezone.utc)


def restored_database_name(database: str, now: datetime) -> str:
    """The new database a restore creates beside the live one, e.g. board_20261125203000 (at most 63 bytes)."""
    return f"{database[:48]}_{now.astimezone(timezone.utc):%Y%m%d%H%M%S}"


def _connection(tool: str, db: Database) -> list[str]:
    # The password comes from the file PGPASSFILE names, never from the command line.
    return [tool, "--host", db.address, "--port", str(db.port), "--username", db.superuser, "--no-password"]


def pg_restore_argv(tool: str, db: Database, database: str, dump: Path) -> list[str]:
    """Restore into an existing, empty database, every object owned by the app's role, all or nothing."""
    return [
        *_connection(tool, db), f"--dbname={database}", "--no-owner", "--no-privileges", f"--role={db.user}",
        "--single-transaction", "--exit-on-error", str(dump),
    ]


def pg_restore_list_argv(tool: str, dump: Path) -> list[str]:
    """Reads the dump's table of contents: fails on a file that is not a readable custom-format dump."""
    return [tool, "--list", str(dump)]


def tar_create_argv(source: Path, archive: Path) -> list[str]:
    return ["tar", "--create", f"--file={archive}", f"--directory={source}", "."]


def tar_extract_argv(archive: Path, target: Path) -> list[str]:
    return ["tar", "--extract", f"--file={archive}", f"--directory={target}", "--no-overwrite-dir"]


def sha256sum_argv(files: list[Path]) -> list[str]:
    return ["sha256sum", "--", *map(str, files)]


def parse_sha256sum(output: str) -> dict[str, str]:
    """`sha256sum` output ("<hex>  <path>", or "<hex> *<path>" in binary mode) as {file name: hex digest}."""
    digests = {}
    for line in output.splitlines():
        digest, _, rest = line.partition(" ")
        path = rest[1:] if rest[:1] in (" ", "*") else ""
        if _SHA256.fullmatch(digest) and path:
            digests[Path(path).name] = digest
    return digests


@dataclass(frozen=True)
class FileEntry:
    sha256: str
    size: int


@dataclass(frozen=True)
class Manifest:
    created: str
    database: str
    release: str | None
    djship: str
    files: dict[str, FileEntry]
    rows: dict[str, int]
    note: str = ""
    format: int = field(default=FORMAT)

    @property
    def holds_redis(self) -> bool:
        """Whether it holds a snapshot of Redis ([redis] backup)."""
        return REDIS in self.files

    @property
    def size(self) -> int:
        return sum(entry.size for entry in self.files.values())

    def to_json(self) -> str:
        return json.dumps(
            {
                "format": self.format,
                "created": self.created,
                "database": self.database,
                "release": self.release,
                "djship": self.djship,
                "note": self.note,
                "files": {name: {"sha256": e.sha256, "size": e.size} for name, e in sorted(self.files.items())},
                "rows": dict(sorted(self.rows.items())),
            },
            indent=2,
        ) + "\n"


def parse_manifest(text: bytes | str | None, source: Path) -> Manifest:
    """The manifest of a backup; raise DjshipError naming the problem when it is missing or malformed."""
    if text is None:
        raise DjshipError(f"{source} is missing: {source.parent} is not a complete djship backup")
    try:
        data = json.loads(text)
        if data["format"] != FORMAT:
            raise DjshipError(f"{source} has format {data['format']!r}; this djship reads format {FORMAT}")
        files = {
            str(name): FileEntry(str(entry["sha256"]), int(entry["size"])) for name, entry in data["files"].items()
        }
        rows = {str(table): int(count) for table, count in data["rows"].items()}
        manifest = Manifest(
            created=str(data["created"]), database=str(data["database"]), release=data.get("release"),
            djship=str(data["djship"]), files=files, rows=rows, note=str(data.get("note", "")),
        )
    except DjshipError:
        raise
    except (ValueError, KeyError, TypeError, AttributeError):
        raise DjshipError(f"{source} is not a valid djship backup manifest; the backup cannot be used") from None
    missing = {DUMP, MEDIA} - set(files)
    bad = [name for name, entry in files.items() if not _SHA256.fullmatch(entry.sha256) or "/" in name]
    if missing or bad:
        raise DjshipError(f"{source} lists {'no ' + ', '.join(sorted(missing)) if missing else 'a bad entry ' + bad[0]}; "
                          "the backup cannot be used")
    return manifest


def checksum_problems(manifest: Manifest, actual: dict[str, str]) -> list[str]:
    """What differs between the manifest's checksums and the files' (empty when every file is intact)."""
    problems = []
    for name, entry in sorted(manifest.files.items()):
        if name not in actual:
            problems.append(f"{name} is missing")
        elif actual[name] != entry.sha256:
            problems.append(f"{name} does not match its sha256 (the file is corrupted or was changed)")
    return problems


def row_count_problems(expected: dict[str, int], actual: dict[str, int]) -> list[str]:
    """Tables whose row counts in the restored database differ from the backup's."""
    problems = [f"{table}: {actual.get(table, 'no table')} rows, the backup has {count}"
                for table, count in sorted(expected.items()) if actual.get(table) != count]
    problems += [f"{table}: not in the backup" for table in sorted(set(actual) - set(expected))]
    return problems


def expired(names: list[str], keep: int, today: date) -> list[str]:
    """Retention: keep the newest backup of each of the `keep` most recent days that have one, and every backup
    taken today (today counts as one of the days); return the names of the others, oldest first.
    Names that are not backup names are never returned."""
    dated = sorted((when, name) for name in names if (when := backup_time(name)) is not None)
    newest_of_day: dict[date, str] = {}
    for when, name in dated:
        newest_of_day[when.date()] = name
    kept_days = sorted(newest_of_day, reverse=True)[:keep]
    kept = {newest_of_day[day] for day in kept_days} | {name for when, name in dated if when.date() == today}
    return [name for _, name in dated if name not in kept]


def parse_time_of_day(value: str) -> tuple[int, int]:
    hours, minutes = value.split(":")
    return int(hours), int(minutes)


def seconds_until(now: datetime, at: str) -> float:
    """Seconds from now (aware) to the next time the UTC clock shows at ("HH:MM"); a full day when it is now."""
    hours, minutes = parse_time_of_day(at)
    now = now.astimezone(timezone.utc)
    target = now.replace(hour=hours, minute=minutes, second=0, microsecond=0)
    if target <= now:
        target += timedelta(days=1)
    return (target - now).total_seconds()


def human_size(size: int) -> str:
    value = float(size)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"


def human_age(seconds: float) -> str:
    seconds = max(0, int(seconds))
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    if seconds < 2 * 86400:
        return f"{seconds // 3600}h"
    return f"{seconds // 86400}d"


def stat_sizes_argv(files: list[Path]) -> list[str]:
    return ["stat", "--format=%s %n", "--", *map(str, files)]


def parse_stat_sizes(output: str) -> dict[str, int]:
    """`stat --format='%s %n'` output as {file name: size in bytes}."""
    sizes = {}
    for line in output.splitlines():
        size, _, path = line.partition(" ")
        if size.isdigit() and path:
            sizes[Path(path).name] = int(size)
    return sizes


def remove_argv(path: Path) -> list[str]:
    return ["rm", "-rf", "--", str(path)]


def rename_argv(source: Path, target: Path) -> list[str]:
    return ["mv", "--no-target-directory", "--", str(source), str(target)]

"""The static files of every kept release, in one store that every app server falls back to.

A page names the static files of the release that rendered it. During a deploy or a rollback the page and its
CSS can come from app servers on different releases, and a tab opened before a deploy may load an old hashed
file later, so each app server's nginx serves its live release's static files first and then this store:

shared/static/<name>       a hard link to <name> in the newest kept release that has it (and to its .gz)

`publish` runs once per release build, after collectstatic. On the host, under the release's own Python (stdlib
only: djship itself is not installed on app hosts), it pre-compresses the text files of every release (gzip -9,
read by nginx's gzip_static) and makes the store hold exactly the files of the releases still on disk, so
files of pruned releases leave it at the next build.
"""

from __future__ import annotations

import gzip
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from djship.connectors import Connector

COMPRESSIBLE = frozenset({
    ".css", ".js", ".mjs", ".map", ".json", ".svg", ".txt", ".html", ".xml", ".webmanifest", ".ico", ".ttf",
    ".otf", ".eot", ".wasm",
})
TEMPORARY = ".djship-tmp"


def publish(connector: Connector, python: Path, releases: Path, store: Path, user: str | None) -> None:
    """Compress the releases' static files and make `store` their union (run after collectstatic)."""
    from djship.errors import DjshipError  # here, not above: the hosts run this file without djship installed

    connector.makedirs(store, owner=user)
    result = connector.run([str(python), "-I", "-", str(releases), str(store)], input=Path(__file__).read_text(),
                           user=user)
    if not result.ok:
        lines = (result.stderr.strip() or result.stdout.strip()).splitlines()
        raise DjshipError(f"publishing static files into {store} failed: "
                          f"{lines[-1] if lines else f'exit code {result.returncode}'}")


def _files(top: Path) -> list[Path]:
    """Every file under top, relative to it (the store's unfinished temporary links excluded)."""
    return sorted(
        Path(directory, name).relative_to(top)
        for directory, _, names in os.walk(top)
        for name in names
        if not name.endswith(TEMPORARY)
    )


def compress(static: Path) -> None:
    """Write name.gz beside each text file that lacks one, when it is smaller (with the original's mtime, so both
    answers carry the same Last-Modified)."""
    for relative in _files(static):
        path = static / relative
        packed_path = path.with_name(path.name + ".gz")
        if path.suffix.lower() not in COMPRESSIBLE or packed_path.exists():
            continue
        data = path.read_bytes()
        packed = gzip.compress(data, 9, mtime=0)
        if len(packed) >= len(data):
            continue
        temporary = packed_path.with_name(packed_path.name + TEMPORARY)
        temporary.write_bytes(packed)
        stat = path.stat()
        os.utime(temporary, ns=(stat.st_atime_ns, stat.st_mtime_ns))
        os.replace(temporary, packed_path)


def wanted(statics: list[Path]) -> dict[Path, Path]:
    """What the store holds: each name from the newest release that has it (statics oldest first), and a file's
    .gz from the same release as the file, so the two never disagree."""
    chosen: dict[Path, Path] = {}
    for static in statics:
        names = set(_files(static))
        for relative in names:
            if relative.suffix == ".gz" and relative.with_suffix("") in names:
                continue
            chosen[relative] = static / relative
            chosen.pop(_packed(relative), None)
            if _packed(relative) in names:
                chosen[_packed(relative)] = static / _packed(relative)
    return chosen


def _packed(relative: Path) -> Path:
    return relative.with_name(relative.name + ".gz")


def merge(statics: list[Path], store: Path) -> None:
    """Hard-link what `wanted` names into the store (each replacement atomic), then remove everything else."""
    files = wanted(statics)
    for relative, source in files.items():
        target = store / relative
        if target.exists() and os.path.samefile(source, target):
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        temporary = target.with_name(target.name + TEMPORARY)
        temporary.unlink(missing_ok=True)
        os.link(source, temporary)
        os.replace(temporary, target)
    for relative in _files(store):
        if relative not in files:
            (store / relative).unlink()
    for directory, _, _ in os.walk(store, topdown=False):
        if Path(directory) != store and not os.listdir(directory):
            os.rmdir(directory)


def main(releases: Path, store: Path) -> None:
    statics = sorted(path for path in releases.glob("*/static") if path.is_dir())
    for static in statics:
        compress(static)
    merge(statics, store)


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))

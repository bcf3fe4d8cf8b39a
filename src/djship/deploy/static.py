"""The static files of every kept release, in one store that every app server falls back to.

A page names the static files of the release that rendered it. During a deploy or a rollback the page and its
CSS can come from app servers on different releases, and a tab opened before a deploy may load an old hashed
file later, so each app server's nginx serves its live release's static files first and then this store:

shared/static/<name>       a hard link to <name> in the newest kept release that has it (and to its .gz, .br)

`publish` runs once per release build, after collectstatic. On the host, under the release's own Python (stdlib
only: djship itself is not installed on app hosts), it pre-compresses the text files of every release (gzip -9,
and brotli -q 10 where the brotli program is installed, for nginx's gzip_static and brotli_static) and makes the
store hold exactly the files of the releases still on disk, so files of pruned releases leave it at the next build.
"""

from __future__ import annotations

import gzip
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from djship.connectors import Connector

COMPRESSIBLE = frozenset({
    ".css", ".js", ".mjs", ".map", ".json", ".svg", ".txt", ".html", ".xml", ".webmanifest", ".ico", ".ttf",
    ".otf", ".eot", ".wasm",
})
ENCODINGS = (".gz", ".br")
# Brotli's quality: the admin's 127 text files (1.42 MB) took 1.71 s on 2 cores at 11 (315,059 bytes) and 0.74 s at
# 10 (321,763: 2.1% more), a second of every first start and of every deploy that changes many files; 9 was 11% more.
BROTLI_QUALITY = "10"
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


def _gzip(source: Path, target: Path) -> None:
    target.write_bytes(gzip.compress(source.read_bytes(), 9, mtime=0))


def _brotli(program: str):
    def packer(source: Path, target: Path) -> None:
        subprocess.run([program, "-f", "-q", BROTLI_QUALITY, "-o", str(target), "--", str(source)], check=True,
                       capture_output=True)

    return packer


def _same(one: Path, other: Path) -> bool:
    return other.is_file() and (os.path.samefile(one, other) or (
        one.stat().st_size == other.stat().st_size and one.read_bytes() == other.read_bytes()))


def prepare(static: Path, store: Path) -> None:
    """For a file the store already has with the same content: take the store's mtime, so its Last-Modified and
    ETag stay the same across releases and a browser's revalidation after a deploy is a 304.
    Then write name.gz (and name.br where the brotli program is installed) beside each text file that lacks them,
    when smaller, with the original's mtime so every encoding carries the same Last-Modified; an unchanged file
    gets copies of the store's. The files are packed on every core at once, the largest first."""
    brotli = shutil.which("brotli")
    packers = {".gz": _gzip, **({".br": _brotli(brotli)} if brotli else {})}
    jobs = []
    for relative in _files(static):
        path = static / relative
        unchanged = _same(path, store / relative)
        if unchanged:
            earlier = (store / relative).stat()
            os.utime(path, ns=(earlier.st_atime_ns, earlier.st_mtime_ns))
        if path.suffix.lower() in COMPRESSIBLE:
            jobs += [(static, store, relative, unchanged, suffix, packer) for suffix, packer in packers.items()]
    jobs.sort(key=lambda job: (static / job[2]).stat().st_size, reverse=True)  # the longest first: all end together
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        list(pool.map(lambda job: _pack(*job), jobs))


def _pack(static: Path, store: Path, relative: Path, unchanged: bool, suffix: str, packer) -> None:
    """static/relative + suffix (.gz or .br), from the store's copy when the file is unchanged; none when larger."""
    path = static / relative
    packed = static / _encoded(relative, suffix)
    if packed.exists():
        return
    temporary = packed.with_name(packed.name + TEMPORARY)
    earlier = store / _encoded(relative, suffix)
    if unchanged and earlier.is_file():
        shutil.copyfile(earlier, temporary)
    else:
        packer(path, temporary)
    stat = path.stat()
    if temporary.stat().st_size >= stat.st_size:
        temporary.unlink()
        return
    os.utime(temporary, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    os.replace(temporary, packed)


def _encoded(relative: Path, suffix: str) -> Path:
    return relative.with_name(relative.name + suffix)


def wanted(statics: list[Path]) -> dict[Path, Path]:
    """What the store holds: each name from the newest release that has it (statics oldest first), and a file's
    .gz and .br from the same release as the file, so they never disagree."""
    chosen: dict[Path, Path] = {}
    for static in statics:
        names = set(_files(static))
        for relative in names:
            if relative.suffix in ENCODINGS and relative.with_suffix("") in names:
                continue
            chosen[relative] = static / relative
            for suffix in ENCODINGS:
                packed = _encoded(relative, suffix)
                chosen.pop(packed, None)
                if packed in names:
                    chosen[packed] = static / packed
    return chosen


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
        prepare(static, store)
    merge(statics, store)


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))

"""The static store: every kept release's collected files, pre-compressed, hard-linked into shared/static."""

from __future__ import annotations

import gzip
import os
import subprocess
import sys
from pathlib import Path

import pytest

from djship.connectors.local import LocalConnector
from djship.deploy import static
from djship.errors import DjshipError

ENCODINGS = ("", ".gz", ".br")
CSS_V1 = "body { background: #f5f6f8; }\n" * 40
CSS_V2 = "body { background: #000000; }\n" * 40


def _release(releases: Path, release_id: str, files: dict[str, str | bytes]) -> Path:
    root = releases / release_id / "static"
    for name, content in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content.encode() if isinstance(content, str) else content)
    return root


def _publish(tmp_path: Path) -> Path:
    store = tmp_path / "shared" / "static"
    static.publish(LocalConnector(), Path(sys.executable), tmp_path / "releases", store, None)
    return store


def _tree(top: Path) -> set[str]:
    return {str(path.relative_to(top)) for path in top.rglob("*") if path.is_file()}


def _unbrotli(path: Path) -> bytes:
    return subprocess.run(["brotli", "-d", "-c", "--", str(path)], capture_output=True, check=True).stdout


def test_the_store_holds_every_release_s_hashed_names_and_the_newest_unhashed_ones(tmp_path):
    old = _release(tmp_path / "releases", "20260101-000001", {"css/board.css": CSS_V1, "css/board.aaaaaaaaaaaa.css": CSS_V1})
    new = _release(tmp_path / "releases", "20260101-000002", {"css/board.css": CSS_V2, "css/board.bbbbbbbbbbbb.css": CSS_V2})

    store = _publish(tmp_path)

    assert _tree(store) == {
        f"css/board{name}.css{encoding}" for name in ("", ".aaaaaaaaaaaa", ".bbbbbbbbbbbb") for encoding in ENCODINGS}
    assert os.path.samefile(store / "css/board.aaaaaaaaaaaa.css", old / "css/board.aaaaaaaaaaaa.css")
    assert os.path.samefile(store / "css/board.css", new / "css/board.css")
    assert os.path.samefile(store / "css/board.css.gz", new / "css/board.css.gz")
    assert gzip.decompress((store / "css/board.css.gz").read_bytes()).decode() == CSS_V2


def test_files_of_a_release_that_is_gone_leave_the_store_at_the_next_build(tmp_path):
    _release(tmp_path / "releases", "20260101-000001", {"css/old.aaaaaaaaaaaa.css": CSS_V1, "img/only-old.png": b"\x89PNG"})
    _release(tmp_path / "releases", "20260101-000002", {"css/board.bbbbbbbbbbbb.css": CSS_V2})
    store = _publish(tmp_path)
    assert "css/old.aaaaaaaaaaaa.css" in _tree(store)

    for path in sorted((tmp_path / "releases" / "20260101-000001").rglob("*"), reverse=True):
        path.rmdir() if path.is_dir() else path.unlink()
    _release(tmp_path / "releases", "20260101-000003", {"css/board.cccccccccccc.css": CSS_V1})
    store = _publish(tmp_path)

    assert _tree(store) == {
        f"css/board.{name}.css{encoding}" for name in ("bbbbbbbbbbbb", "cccccccccccc") for encoding in ENCODINGS}
    assert not (store / "img").exists()


def test_text_files_are_compressed_once_with_the_original_s_mtime_and_others_are_left_alone(tmp_path):
    root = _release(tmp_path / "releases", "20260101-000001", {
        "app.js": "console.log('djship');\n" * 50,
        "logo.png": b"\x89PNG" + bytes(range(256)) * 4,
        "tiny.css": "a{}",
        "given.css": CSS_V1,
        "given.css.gz": b"compressed by the project",
    })
    os.utime(root / "app.js", (1_700_000_000, 1_700_000_000))

    static.prepare(root, tmp_path / "store")

    assert gzip.decompress((root / "app.js.gz").read_bytes()) == (root / "app.js").read_bytes()
    assert _unbrotli(root / "app.js.br") == (root / "app.js").read_bytes()
    assert (root / "app.js.gz").stat().st_mtime == (root / "app.js.br").stat().st_mtime == 1_700_000_000
    assert not (root / "logo.png.gz").exists() and not (root / "logo.png.br").exists()
    assert not (root / "tiny.css.gz").exists()  # either would make it bigger
    assert _tree(root) == {"app.js", "app.js.gz", "app.js.br", "logo.png", "tiny.css", "given.css",
                           "given.css.gz", "given.css.br"}
    assert (root / "given.css.gz").read_bytes() == b"compressed by the project"


def test_an_unchanged_file_takes_the_store_s_compressed_copies_instead_of_compressing_again(tmp_path):
    old = _release(tmp_path / "releases", "20260101-000001", {"board.css": CSS_V1, "app.css": CSS_V1})
    store = _publish(tmp_path)
    (old / "board.css.br").write_bytes(b"compressed for the first release")  # the store's copy is the same file
    new = _release(tmp_path / "releases", "20260101-000002", {"board.css": CSS_V1, "app.css": CSS_V2})

    _publish(tmp_path)

    assert (new / "board.css.br").read_bytes() == b"compressed for the first release"
    assert not os.path.samefile(new / "board.css.br", old / "board.css.br")
    assert _unbrotli(new / "app.css.br") == CSS_V2.encode()
    assert os.path.samefile(store / "board.css.br", new / "board.css.br")


def test_an_unchanged_file_keeps_its_mtime_across_releases_so_its_validators_do_too(tmp_path):
    old = _release(tmp_path / "releases", "20260101-000001", {"board.css": CSS_V1, "logo.png": b"\x89PNG", "app.css": CSS_V1})
    for name in ("board.css", "logo.png", "app.css"):
        os.utime(old / name, (1_600_000_000, 1_600_000_000))
    _publish(tmp_path)
    new = _release(tmp_path / "releases", "20260101-000002", {"board.css": CSS_V1, "logo.png": b"\x89PNG", "app.css": CSS_V2})
    for name in ("board.css", "logo.png", "app.css"):
        os.utime(new / name, (1_700_000_000, 1_700_000_000))

    _publish(tmp_path)

    assert [(new / name).stat().st_mtime for name in ("board.css", "board.css.gz", "board.css.br", "logo.png")] == [
        1_600_000_000] * 4
    assert (new / "app.css").stat().st_mtime == (new / "app.css.gz").stat().st_mtime == 1_700_000_000


def test_a_file_s_gz_comes_from_the_same_release_as_the_file(tmp_path):
    old = _release(tmp_path / "releases", "20260101-000001", {"x.css": CSS_V1, "x.css.gz": gzip.compress(CSS_V1.encode()),
                                                            "x.css.br": b"br"})
    new = _release(tmp_path / "releases", "20260101-000002", {"x.css": "a{}"})

    assert static.wanted([old, new]) == {Path("x.css"): new / "x.css"}


def test_a_failing_publish_is_one_line_naming_the_store(tmp_path):
    with pytest.raises(DjshipError, match=r"^publishing static files into .*shared/static failed: exit code 1$"):
        static.publish(LocalConnector(), Path("/bin/false"), tmp_path / "releases", tmp_path / "shared" / "static", None)

"""Missing system programs are named together with the command that installs them."""

from __future__ import annotations

from dataclasses import replace

import pytest

from djship import tools
from djship.errors import DjshipError


def test_finds_the_installed_programs():
    found = tools.find_tools()
    assert found.nginx.endswith("nginx") and found.haproxy.endswith("haproxy")
    assert found.pg("initdb").endswith("/initdb")


def test_missing_programs_are_named_with_the_install_command(monkeypatch):
    monkeypatch.setattr(tools.shutil, "which", lambda name, path=None: None)
    monkeypatch.setattr(tools.glob, "glob", lambda pattern: [])
    with pytest.raises(DjshipError) as raised:
        tools.find_tools()
    assert str(raised.value) == "missing nginx, haproxy, postgresql; install with: sudo apt-get install -y nginx haproxy postgresql"


def test_nginx_without_mime_types_counts_as_missing(monkeypatch):
    monkeypatch.setattr(tools, "MIME_TYPES_CANDIDATES", ("/nonexistent/mime.types",))
    with pytest.raises(DjshipError, match=r"^missing nginx; install with: sudo apt-get install -y nginx$"):
        tools.find_tools()


@pytest.mark.parametrize(("bindir", "major"), [("/usr/lib/postgresql/15/bin", 15), ("/usr/lib/postgresql/13/bin", 13),
                                               ("/usr/local/pgsql/bin", None), ("/usr/bin", None), ("", None)])
def test_postgresql_major_version_is_read_from_debians_bindir(fake_tools, bindir, major):
    assert replace(fake_tools, pg_bindir=bindir).pg_major == major

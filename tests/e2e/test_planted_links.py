"""Links the app's user plants in the directories it owns are never followed by djship (issue 11): the next `up`
replaces them or refuses them, and the file or directory they point at keeps its content, mode and owner."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from djship.config import with_values
from tests.e2e.conftest import Ports, running_site, searchable_directory

pytestmark = pytest.mark.e2e

PLANTED_PORTS = Ports.of(https=25443, http=25080, database=32432, app_prefix="127.0.81", database_address="127.0.82.1")


def plant(link: Path, target: Path, user: str | None) -> None:
    """ln -s as the app's user (the service user when the tests run as root)."""
    subprocess.run([*(["runuser", "-u", user, "--"] if user else []), "ln", "-s", str(target), str(link)], check=True)


def snapshot(path: Path) -> tuple:
    status = path.lstat()
    return status.st_mode, status.st_uid, status.st_gid, path.read_bytes() if path.is_file() else sorted(os.listdir(path))


def test_up_never_follows_a_link_the_app_user_planted():
    user = "djship" if os.geteuid() == 0 else None
    with searchable_directory() as outside_dir, running_site(PLANTED_PORTS) as site:
        secret = outside_dir / "shadow"
        secret.write_text("root's secret\n")
        secret.chmod(0o600)
        private = outside_dir / "private"
        private.mkdir(mode=0o700)
        before = snapshot(secret), snapshot(private)
        server = site.project / ".djship" / "servers" / "app1"
        for name in (".gunicorn.conf.py.djship-tmp", ".nginx.conf.djship-tmp", ".live.json.djship-tmp"):
            plant(server / name, secret, user)
        config = site.project / "djship.toml"
        config.write_text(with_values(config.read_text(), {"app.timeout": 40}))

        site.up()  # rewrites both app servers' nginx.conf and gunicorn.conf.py (live.json stays, its link unused)

        assert (snapshot(secret), snapshot(private)) == before
        assert "timeout = 40" in (server / "gunicorn.conf.py").read_text()
        assert not (server / ".gunicorn.conf.py.djship-tmp").is_symlink() and not (server / "gunicorn.conf.py").is_symlink()
        assert site.component("app1-gunicorn")["state"] == "RUNNING"

        temp = server / "nginx-temp"
        subprocess.run([*(["runuser", "-u", user, "--"] if user else []), "rm", "-rf", str(temp)], check=True)
        plant(temp, private, user)
        config.write_text(with_values(config.read_text(), {"app.timeout": 45}))
        result = site.djship("up", check=False)

        assert result.returncode == 1, result.stdout + result.stderr
        assert result.stderr.strip().splitlines() == [
            f"error: local: {temp} is a symlink, where djship keeps a directory; remove it and run djship again"
        ]
        assert (snapshot(secret), snapshot(private)) == before

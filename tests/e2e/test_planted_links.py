"""Links a component's user plants in the directories it owns are never followed by djship (issue 11): the next `up`
replaces them or refuses them, and the file or directory they point at keeps its content, mode and owner.

As root, the directories root writes into are root's, except the data directory (PostgreSQL's user's) and the
balancer's (HAProxy's user's, for its socket): links are planted there, as those users, and the app's user cannot
plant anything where root writes the app servers' files. Run as another user, every component runs as that user, who
plants in the app server's own directory."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from djship.config import with_values
from tests.e2e.conftest import Ports, running_site, searchable_directory

pytestmark = pytest.mark.e2e

PLANTED_PORTS = Ports.of(https=25443, http=25080, database=32432, app_prefix="127.0.81", database_address="127.0.82.1")
AS_ROOT = os.geteuid() == 0


def as_user(user: str | None, *argv: str) -> subprocess.CompletedProcess:
    """argv as user (djship's own when None), as a compromised component would run it."""
    return subprocess.run([*(["runuser", "-u", user, "--"] if user else []), *argv], capture_output=True, text=True)


def plant(link: Path, target: Path, user: str | None) -> None:
    planted = as_user(user, "ln", "-s", str(target), str(link))
    assert planted.returncode == 0, planted.stderr


def snapshot(path: Path) -> tuple:
    status = path.lstat()
    return status.st_mode, status.st_uid, status.st_gid, path.read_bytes() if path.is_file() else sorted(os.listdir(path))


def test_up_never_follows_a_link_a_components_user_planted():
    with searchable_directory() as outside_dir, running_site(PLANTED_PORTS) as site:
        secret = outside_dir / "shadow"
        secret.write_text("root's secret\n")
        secret.chmod(0o600)
        private = outside_dir / "private"
        private.mkdir(mode=0o700)
        before = snapshot(secret), snapshot(private)
        state = site.project / ".djship"
        server = state / "servers" / "app1"
        data, balancer = state / "postgres" / "data", state / "balancer"
        # The temporary files djship writes next to each file it rewrites, by who may write in that directory.
        if AS_ROOT:
            planted = {data / ".postgresql.conf.djship-tmp": "djship-db", balancer / ".haproxy.cfg.djship-tmp": "djship-lb"}
        else:
            planted = {server / f".{name}.djship-tmp": None for name in ("gunicorn.conf.py", "nginx.conf", "live.json")}
        for link, user in planted.items():
            plant(link, secret, user)
        config = site.project / "djship.toml"
        config.write_text(with_values(config.read_text(), {"app.timeout": 40, "database.max_connections": 120}))

        site.up()  # rewrites nginx.conf, gunicorn.conf.py, haproxy.cfg and postgresql.conf (live.json stays)

        assert (snapshot(secret), snapshot(private)) == before
        assert "timeout = 40" in (server / "gunicorn.conf.py").read_text()
        assert "max_connections = 120" in (data / "postgresql.conf").read_text()
        assert "timeout server 50s" in (balancer / "haproxy.cfg").read_text()
        rewritten = [server / "gunicorn.conf.py", data / "postgresql.conf", balancer / "haproxy.cfg"]
        assert not any(path.is_symlink() for path in [*rewritten, *(link for link in planted if "live.json" not in str(link))])
        assert site.component("app1-gunicorn")["state"] == "RUNNING" and site.component("postgres")["state"] == "RUNNING"

        temp = server / "nginx-temp"
        if AS_ROOT:  # the app servers' directories are root's: neither the app's nor nginx's workers' user plants there
            for user in ("djship-app", "djship-web"):
                assert "Permission denied" in as_user(user, "ln", "-s", str(secret), str(server / ".nginx.conf.djship-tmp")).stderr
                assert "Permission denied" in as_user(user, "rm", "-rf", str(temp)).stderr
            assert temp.is_dir() and not temp.is_symlink()
            return
        as_user(None, "rm", "-rf", str(temp))
        plant(temp, private, None)
        config.write_text(with_values(config.read_text(), {"app.timeout": 45}))
        result = site.djship("up", check=False)

        assert result.returncode == 1, result.stdout + result.stderr
        assert result.stderr.strip().splitlines() == [
            f"error: local: {temp} is a symlink, where djship keeps a directory; remove it and run djship again"
        ]
        assert (snapshot(secret), snapshot(private)) == before

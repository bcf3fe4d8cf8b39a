"""Uploads shared by every app host: the media host in the plans, the supervised sshfs, the keys (all pure)."""

from __future__ import annotations

import os
import shlex
import subprocess
from pathlib import Path

import pytest
from supervisor.options import ServerOptions

from djship import render
from djship.components import media
from djship.errors import DjshipError
from djship.plan import MEDIA_PROGRAM, HostSpec, Paths, build_plans
from djship.topology import Host, Topology
from tests.unit.test_host_plans import ADDRESSES

UPDATE_GOLDEN = os.environ.get("DJSHIP_UPDATE_GOLDEN") == "1"
ROLES = {"lb1": ("lb",), "app1": ("app",), "app2": ("app",), "db1": ("db", "media")}
HOST_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHostKeyOfTheMediaHost"


def plans_for(make_config, tools, roles=ROLES, addresses=ADDRESSES, login_root=True, **config):
    config.setdefault("hosts", {name: {"address": addresses[name]} for name in roles})
    specs = [HostSpec(name, addresses[name], roles[name], Path("/srv") / name, tools, login_root) for name in roles]
    return build_plans(make_config(**config), Path("/srv/example/board"), specs)


@pytest.fixture
def plans(make_config, fake_tools):
    return plans_for(make_config, fake_tools)


def test_every_plan_knows_the_media_host_and_only_app_hosts_mount_it(plans):
    store = plans["app1"].media
    assert store == plans["lb1"].media == plans["db1"].media
    assert (store.host, store.source, store.clients) == ("db1", "djship-media@10.0.0.20:/srv/db1/uploads",
                                                         ("10.0.0.11", "10.0.0.12"))
    programs = {name: [program.name for program in render.programs(plan)] for name, plan in plans.items()}
    assert programs == {"lb1": ["haproxy"], "app1": [MEDIA_PROGRAM, "app1-gunicorn", "app1-nginx"],
                        "app2": [MEDIA_PROGRAM, "app2-gunicorn", "app2-nginx"], "db1": ["postgres"]}
    # The app servers use the mounted directory; a host's own `shared` (its static store) stays its own.
    assert plans["app2"].media_dir == Path("/srv/app2/uploads/media")
    assert plans["app2"].media_dirs == Path("/srv/app2/uploads") != plans["app2"].paths.shared_static.parent
    # What a backup or restore makes beside the media directory on the media host, the SFTP user must own.
    assert (plans["db1"].media_owner, plans["app1"].media_owner) == ("djship-media", "djship-app")


def test_the_sftp_users_are_named_by_users(make_config, fake_tools):
    """Named in [users] like every other component's user (two systems on hosts that share /etc/passwd need two)."""
    plans = plans_for(make_config, fake_tools, users={"media": "files-sftp"})
    assert plans["app1"].media.source == "files-sftp@10.0.0.20:/srv/db1/uploads"
    assert plans["db1"].media_owner == "files-sftp"
    access = media.Access(media.new_private_key(), HOST_KEY)
    assert render.media_authorized_keys(plans["db1"].media, access.public_key).endswith(" files-sftp\n")


def test_django_saves_into_the_mounted_media_directory_also_outside_an_app_server(plans):
    """`djship manage` and the app servers alike: before any restore there is no live.json to name it."""
    settings = render.production_settings(plans["app1"], "r1", Path("/srv/app1/releases/r1"))
    assert "'media': '/srv/app1/uploads/media'}" in settings.replace('"', "'")


def test_without_a_media_host_nothing_mounts(make_config, fake_tools):
    roles = {**ROLES, "db1": ("db",)}
    plans = plans_for(make_config, fake_tools, roles=roles)
    assert all(plan.media is None for plan in plans.values())
    assert MEDIA_PROGRAM not in {program.name for program in render.programs(plans["app1"])}
    assert plans["app1"].media_dir == plans["app1"].paths.media == Path("/srv/app1/shared/media")
    assert media.desired_files(plans["app1"], media.Access(media.new_private_key(), HOST_KEY)) == []


def test_a_media_host_of_its_own_runs_nothing_but_holds_the_key(make_config, fake_tools):
    roles = {**ROLES, "db1": ("db",), "files1": ("media",)}
    plans = plans_for(make_config, fake_tools, roles=roles, addresses={**ADDRESSES, "files1": "10.0.0.30"})
    assert plans["app1"].media.source == "djship-media@10.0.0.30:/srv/files1/uploads"
    assert render.programs(plans["files1"]) == []
    access = media.Access(media.new_private_key(), HOST_KEY)
    assert [file.path for file in media.desired_files(plans["files1"], access)] == [
        Path("/srv/files1/media-access/.ssh/authorized_keys")]
    assert media.desired_files(plans["db1"], access) == []


def test_the_media_host_needs_root(make_config, fake_tools):
    with pytest.raises(DjshipError, match="^servers.media: djship logs in to db1 as another user than root"):
        plans_for(make_config, fake_tools, login_root=False)


def test_the_mount_uses_the_media_hosts_ssh_port(make_config, fake_tools):
    plans = plans_for(make_config, fake_tools, hosts={name: {"address": ADDRESSES[name]} for name in ROLES} |
                      {"db1": {"address": ADDRESSES["db1"], "ssh_port": 2222}})
    assert ",Port=2222," in render.media_mount_command(plans["app1"], plans["app1"].media)
    assert render.media_known_hosts(plans["app1"].media, HOST_KEY) == f"[10.0.0.20]:2222 {HOST_KEY}\n"


def test_the_key_is_accepted_for_sftp_only_from_the_app_hosts(plans):
    access = media.Access(media.new_private_key(), HOST_KEY)
    assert access.public_key.startswith("ssh-ed25519 ")
    line = render.media_authorized_keys(plans["db1"].media, access.public_key)
    assert line == f'restrict,command="internal-sftp",from="10.0.0.11,10.0.0.12" {access.public_key} djship-media\n'


def test_a_host_name_among_the_app_hosts_drops_the_address_restriction(make_config, fake_tools):
    addresses = {**ADDRESSES, "app2": "app2.internal.example"}
    plans = plans_for(make_config, fake_tools, addresses=addresses)
    assert plans["db1"].media.clients == ()
    assert render.media_authorized_keys(plans["db1"].media, "ssh-ed25519 AAAA").startswith(
        'restrict,command="internal-sftp" ssh-ed25519 AAAA')


def test_each_host_gets_only_its_side_of_the_access(plans):
    access = media.Access(media.new_private_key(), HOST_KEY)
    files = {name: {file.path: file for file in media.desired_files(plan, access)} for name, plan in plans.items()}
    assert files["lb1"] == {}
    assert set(files["db1"]) == {Path("/srv/db1/media-access/.ssh/authorized_keys")}
    app1 = files["app1"]
    assert set(app1) == {Path("/srv/app1/secrets/media_ed25519"), Path("/srv/app1/secrets/media_known_hosts")}
    assert all(file.programs == (MEDIA_PROGRAM,) for file in app1.values())
    assert app1[Path("/srv/app1/secrets/media_known_hosts")].text == f"10.0.0.20 {HOST_KEY}\n"


def test_the_mount_command_is_one_shell_script_with_the_host_key_checked(plans):
    command = render.media_mount_command(plans["app1"], plans["app1"].media)
    sh, flag, script = shlex.split(command)
    assert (sh, flag) == ("/bin/sh", "-c")
    assert subprocess.run(["sh", "-n", "-c", script]).returncode == 0
    assert script.startswith("fusermount3 -u -z /srv/app1/uploads 2>/dev/null; exec sshfs -f ")
    assert "StrictHostKeyChecking=yes" in script and "UserKnownHostsFile=/srv/app1/secrets/media_known_hosts" in script
    assert "uid=$(id -u djship-app),gid=$(id -g djship-app)" in script
    assert script.endswith(" djship-media@10.0.0.20:/srv/db1/uploads /srv/app1/uploads")


def test_without_root_the_mount_is_the_login_users_own(make_config, fake_tools):
    """Logged in as another user, the services run as that user too: sshfs mounts for itself, no allow_other."""
    roles = {**ROLES, "db1": ("db",), "lb1": ("lb", "media")}
    specs = [HostSpec(name, ADDRESSES[name], roles[name], Path("/srv") / name, fake_tools, login_root=name == "lb1")
             for name in roles]
    plans = build_plans(make_config(hosts={name: {"address": ADDRESSES[name]} for name in roles}),
                        Path("/srv/example/board"), specs)
    script = render.media_mount_command(plans["app1"], plans["app1"].media)
    assert "allow_other" not in script and "uid=" not in script


def test_supervisor_parses_an_app_hosts_config_with_the_mount(plans, make_config, fake_tools, system_users, tmp_path,
                                                              capsys, golden_dir):
    text = render.supervisord_conf(plans["app1"])
    golden = golden_dir / "supervisord-media.conf"
    if UPDATE_GOLDEN:
        golden.write_text(text, encoding="utf-8")
    assert text == golden.read_text(encoding="utf-8"), "regenerate with DJSHIP_UPDATE_GOLDEN=1 and review the diff"
    parsed = render.supervisord_conf(plans_for(make_config, fake_tools, users=system_users)["app1"])
    programs = parsed_by_supervisor(parsed.replace("/srv/app1/", f"{tmp_path}/"), tmp_path, capsys)
    assert shlex.split(programs[MEDIA_PROGRAM].command)[:2] == ["/bin/sh", "-c"]
    assert programs[MEDIA_PROGRAM].uid is None  # root: FUSE mounts with allow_other need it


def parsed_by_supervisor(text: str, root: Path, capsys) -> dict:
    """supervisord.conf text as supervisor's own parser reads it, with root as the host's state root: each program's
    settings by name."""
    conf = root / "supervisord.conf"
    conf.write_text(text)
    (root / "logs").mkdir()
    (root / "supervisor").mkdir()
    options = ServerOptions()
    try:
        options.realize(args=["-c", str(conf)])
    except SystemExit:
        pytest.fail(f"supervisord rejected {conf}:\n{capsys.readouterr().err}")
    return {group.name: group.process_configs[0] for group in options.process_group_configs}


class HostFiles:
    """A host's connector, as far as the access needs one: the files it holds and its SSH host key."""

    def __init__(self, files: dict[Path, bytes]):
        self.files = files

    def get(self, path: Path) -> bytes | None:
        return self.files.get(path)

    def host_key(self) -> str:
        return HOST_KEY


def topology_of(plans, tmp_path, held: dict[Path, bytes]) -> Topology:
    hosts = {name: Host(name, ADDRESSES[name], HostFiles(held), plan, "python3", "wheels") for name, plan in plans.items()}
    return Topology(hosts, Paths(tmp_path / ".djship"))


def test_the_key_is_made_once_and_kept_here(plans, tmp_path):
    topology = topology_of(plans, tmp_path, {})
    assert media.read_access(topology) is None  # `up --dry-run` before the first up makes nothing
    made = media.ensure_access(topology)
    kept = tmp_path / ".djship/secrets/media_ed25519"
    assert kept.read_text() == made.private_key and kept.stat().st_mode & 0o777 == 0o600
    assert media.ensure_access(topology) == media.read_access(topology) == made
    assert made.host_key == HOST_KEY


def test_a_lost_key_is_read_back_from_an_app_host(plans, tmp_path):
    key = media.new_private_key()
    topology = topology_of(plans, tmp_path, {plans["app1"].paths.media_key: key.encode()})
    assert media.ensure_access(topology).private_key == key
    assert (tmp_path / ".djship/secrets/media_ed25519").read_text() == key

"""Boot registration: the systemd unit, boot.conf and boot.sh (golden files, the real systemd-analyze and
supervisord accepting them), and what register/unregister do on hosts with and without systemd."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
from supervisor.options import ServerOptions

from djship import render
from djship.components import boot
from djship.components.supervisor import Supervisor
from djship.connectors import Result
from djship.plan import PROGRAM_ENVIRONMENT

# supervisord starts with this environment and nothing else: its programs inherit it, not the shell's that ran djship.
CLEAN = ["/usr/bin/env", "-i", *(f"{name}={value}" for name, value in PROGRAM_ENVIRONMENT.items())]
UPDATE_GOLDEN = os.environ.get("DJSHIP_UPDATE_GOLDEN") == "1"
GOLDEN = {
    "djship.service": boot.systemd_unit,
    "supervisord-boot.conf": boot.boot_conf,
    "boot.sh": lambda plan: boot.boot_script(plan, "systemd is not the init system"),
}


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_rendering_matches_the_golden_file(golden_plan, golden_dir, name):
    text = GOLDEN[name](golden_plan)
    golden = golden_dir / name
    if UPDATE_GOLDEN:
        golden.write_text(text, encoding="utf-8")
    assert golden.is_file(), f"{golden} is missing; generate it with DJSHIP_UPDATE_GOLDEN=1"
    assert text == golden.read_text(encoding="utf-8"), f"{name} differs from {golden}; regenerate with DJSHIP_UPDATE_GOLDEN=1"


def _unit_settings(text: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line and not line.startswith("#"))


def test_the_unit_runs_supervisord_in_the_foreground_and_takes_its_whole_group_down_and_up_with_it(golden_plan):
    settings = _unit_settings(boot.systemd_unit(golden_plan))

    assert shlex.split(settings["ExecStart"]) == [
        *CLEAN, "/usr/bin/python3", "-m", "supervisor.supervisord", "-n", "-c", "/srv/example/board/.djship/supervisor/boot.conf"]
    assert settings["KillMode"] == "control-group"
    assert settings["Restart"] == "on-failure"
    assert settings["After"] == settings["Wants"] == "network-online.target"
    assert settings["RequiresMountsFor"] == "/srv/example/board/.djship"
    assert settings["WantedBy"] == "multi-user.target"
    stops = sum(program.stopwaitsecs for program in render.programs(golden_plan))
    assert int(settings["TimeoutStopSec"]) > stops


def test_each_state_root_has_its_own_unit(make_plan):
    first = boot.unit_name(make_plan(state_dir="/srv/a"))

    assert first.startswith("djship-board-") and first.endswith(".service")
    assert first != boot.unit_name(make_plan(state_dir="/srv/b"))
    assert first == boot.unit_name(make_plan(state_dir="/srv/a"))


def test_systemd_analyze_verify_accepts_the_unit(golden_plan, tmp_path):
    analyze = shutil.which("systemd-analyze")
    assert analyze, "systemd-analyze is missing: apt-get install systemd (./bootstrap test installs it)"
    unit = tmp_path / boot.unit_name(golden_plan)
    unit.write_text(boot.systemd_unit(golden_plan))

    result = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True)

    assert (result.returncode, result.stdout + result.stderr) == (0, ""), result.stdout + result.stderr


def test_systemd_analyze_verify_would_name_a_broken_unit(golden_plan, tmp_path):
    """The check above can fail: a unit systemd cannot run is reported."""
    unit = tmp_path / boot.unit_name(golden_plan)
    unit.write_text(boot.systemd_unit(golden_plan).replace("KillMode=control-group", "KillMode=group"))

    result = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True)

    assert "failed to parse kill mode" in (result.stdout + result.stderr).lower()


def test_supervisord_accepts_boot_conf_with_every_program_and_the_boot_program(make_plan, tmp_path, system_users):
    plan = make_plan(state_dir=str(tmp_path / "state"), running_as_root=True, users=system_users)
    plan.paths.supervisor.mkdir(parents=True)
    plan.paths.logs.mkdir()
    plan.paths.supervisor_conf.write_text(render.supervisord_conf(plan))
    boot.boot_conf_path(plan).write_text(boot.boot_conf(plan))
    options = ServerOptions()

    options.realize(args=["-c", str(boot.boot_conf_path(plan))])

    groups = {group.name: group.process_configs[0] for group in options.process_group_configs}
    assert sorted(groups) == sorted(["boot", *(program.name for program in render.programs(plan))])
    assert [name for name, config in groups.items() if config.autostart] == ["boot"]


def _boot_command(plan) -> list[str]:
    line = next(line for line in boot.boot_conf(plan).splitlines() if line.startswith("command = "))
    return shlex.split(line.removeprefix("command = "))


def test_the_boot_program_starts_every_component_in_order(golden_plan):
    command = _boot_command(golden_plan)

    assert command[command.index("start") + 1:] == [
        "postgres", "app1-gunicorn", "app1-nginx", "app2-gunicorn", "app2-nginx", "haproxy"]
    assert command[command.index("supervisor.supervisorctl") + 1:][:2] == ["-c", str(golden_plan.paths.supervisor_conf)]


@pytest.mark.parametrize("marked", [True, False])
def test_the_boot_program_starts_them_only_while_the_system_is_meant_to_be_up(make_plan, tmp_path, marked):
    plan = make_plan(state_dir=str(tmp_path))
    plan.paths.supervisor.mkdir()
    if marked:
        boot.marker_path(plan).write_text("")
    command = _boot_command(plan)
    shell = command[:command.index(plan.tools.python)]

    result = subprocess.run([*shell, "echo", "starting"], capture_output=True, text=True)

    assert (result.returncode, result.stdout) == (0, "starting\n" if marked else "")


class FakeHost:
    """A host with a dict for a file system; systemd as init or not; root or not; records every command."""

    def __init__(self, systemd: bool, root: bool = True):
        self.systemd, self.root = systemd, root
        self.files: dict[Path, tuple[bytes, int]] = {}
        self.commands: list[list[str]] = []

    def run(self, argv, **_) -> Result:
        argv = [str(part) for part in argv]
        self.commands.append(argv)
        if argv[:2] == ["test", "-d"]:
            return Result(tuple(argv), 0 if self.systemd and argv[2] == "/run/systemd/system" else 1, "", "")
        if argv == ["id", "-u"]:
            return Result(tuple(argv), 0, "0\n" if self.root else "1000\n", "")
        if argv[:2] == ["rm", "-f"]:
            self.files.pop(Path(argv[2]), None)
        return Result(tuple(argv), 0, "", "")

    def put(self, path: Path, content, *, mode: int = 0o644, owner=None) -> bool:
        data = content.encode() if isinstance(content, str) else content
        changed = self.files.get(path) != (data, mode)
        self.files[path] = (data, mode)
        return changed

    def get(self, path: Path) -> bytes | None:
        return self.files[path][0] if path in self.files else None

    @property
    def systemctl(self) -> list[list[str]]:
        return [command[1:] for command in self.commands if command[0] == "systemctl"]


def test_register_installs_and_enables_a_unit_where_systemd_is_init(golden_plan):
    host = FakeHost(systemd=True)
    unit = boot.UNIT_DIR / boot.unit_name(golden_plan)

    said = boot.register(host, golden_plan)

    assert host.files[unit] == (boot.systemd_unit(golden_plan).encode(), 0o644)
    assert host.files[boot.boot_conf_path(golden_plan)][0] == boot.boot_conf(golden_plan).encode()
    assert boot.marker_path(golden_plan) in host.files
    assert boot.boot_script_path(golden_plan) not in host.files
    assert host.systemctl == [["daemon-reload"], ["enable", unit.name]]
    assert said.startswith("systemd starts the supervisor at boot") and unit.name in said
    assert boot.registration(host, golden_plan).to_json() == {
        "init": "systemd", "command": str(unit), "starts_at_boot": True, "note": None}


def test_register_again_reloads_systemd_only_when_the_unit_changed(golden_plan):
    host = FakeHost(systemd=True)
    boot.register(host, golden_plan)
    host.commands.clear()

    boot.register(host, golden_plan)

    assert host.systemctl == [["enable", boot.unit_name(golden_plan)]]


@pytest.mark.parametrize(("systemd", "root", "reason"), [
    (False, True, "systemd is not the init system"),
    (True, False, "systemd is the init system, but registering a unit needs root"),
])
def test_without_systemd_to_register_with_the_boot_command_is_recorded_and_said(golden_plan, systemd, root, reason):
    host = FakeHost(systemd=systemd, root=root)

    said = boot.register(host, golden_plan)

    script, mode = host.files[boot.boot_script_path(golden_plan)]
    assert mode == 0o700
    assert script.decode().splitlines()[-1] == "exec " + shlex.join(boot.boot_argv(golden_plan))
    assert f"({reason})" in script.decode()
    assert host.systemctl == []
    assert said == f"{boot.NO_INIT} ({reason}); the boot command is in {boot.boot_script_path(golden_plan)}"
    assert boot.registration(host, golden_plan).to_json() == {
        "init": None, "command": str(boot.boot_script_path(golden_plan)), "starts_at_boot": True, "note": boot.NO_INIT}


def test_before_the_first_up_nothing_is_registered(golden_plan):
    assert boot.registration(FakeHost(systemd=False), golden_plan).to_json() == {
        "init": None, "command": None, "starts_at_boot": False, "note": boot.NO_INIT}


@pytest.mark.parametrize("systemd", [True, False])
def test_unregister_leaves_nothing_to_start_at_boot(golden_plan, systemd):
    host = FakeHost(systemd=systemd)
    boot.register(host, golden_plan)
    host.commands.clear()

    boot.unregister(host, golden_plan)

    assert boot.marker_path(golden_plan) not in host.files
    assert host.systemctl == ([["disable", boot.unit_name(golden_plan)]] if systemd else [])
    assert boot.registration(host, golden_plan).starts_at_boot is False


def test_uninstall_leaves_no_unit_naming_a_deleted_state_root(golden_plan):
    host = FakeHost(systemd=True)
    boot.register(host, golden_plan)
    host.commands.clear()

    boot.uninstall(host, golden_plan)

    assert boot.UNIT_DIR / boot.unit_name(golden_plan) not in host.files
    assert host.systemctl == [["disable", boot.unit_name(golden_plan)], ["daemon-reload"]]


def test_the_supervisor_starts_through_systemd_once_its_unit_is_installed(golden_plan, monkeypatch):
    host = FakeHost(systemd=True)
    boot.register(host, golden_plan)
    host.commands.clear()
    monkeypatch.setattr(Supervisor, "pid", lambda self: 4242)

    Supervisor(golden_plan, host).start_daemon()

    assert host.commands[0] == ["rm", "-f", str(boot.marker_path(golden_plan))]
    assert host.systemctl == [["start", boot.unit_name(golden_plan)]]


def test_the_supervisor_starts_by_itself_without_systemd(golden_plan, monkeypatch):
    host = FakeHost(systemd=False)
    boot.register(host, golden_plan)
    host.commands.clear()
    monkeypatch.setattr(Supervisor, "pid", lambda self: 4242)

    Supervisor(golden_plan, host).start_daemon()

    assert host.commands[0] == ["rm", "-f", str(boot.marker_path(golden_plan))]
    assert host.commands[-1] == [  # under the umask of its log files (0640), which it creates before reading its own
        *CLEAN, "sh", "-c", 'umask 027 && exec "$0" "$@"',
        "/usr/bin/python3", "-m", "supervisor.supervisord", "-c", str(golden_plan.paths.supervisor_conf)]


def test_systemd_reads_paths_with_percent_signs_literally(make_plan, tmp_path):
    plan = make_plan(state_dir="/srv/50%off/site")  # ($ is refused by the config: nginx would read a variable)
    unit = tmp_path / boot.unit_name(plan)
    unit.write_text(boot.systemd_unit(plan))
    settings = _unit_settings(unit.read_text())

    assert settings["ExecStart"].endswith("-c /srv/50%%off/site/supervisor/boot.conf")
    assert settings["RequiresMountsFor"] == "/srv/50%%off/site"
    result = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True)
    assert (result.returncode, result.stdout + result.stderr) == (0, ""), result.stdout + result.stderr

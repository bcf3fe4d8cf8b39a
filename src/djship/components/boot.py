"""Boot registration: the host's init system starts djship's supervisor at boot and again when it dies.

Where systemd is the init system, a unit per state root runs supervisord in the foreground with KillMode=control-group,
so a supervisor that dies takes everything it started with it and comes back with all of it. Elsewhere djship writes
the same command into <state>/supervisor/boot.sh for the user's own boot mechanism and says that nothing supervises
its processes after a reboot or a supervisor crash.

Either way the init system starts supervisord with boot.conf: supervisord.conf plus a program that starts every
component in order, but only while the system is meant to be up (the marker file, written by `register` at the end
of `up`, removed by `unregister` in `down` and whenever djship starts a supervisor itself).
"""

from __future__ import annotations

import hashlib
import shlex
from dataclasses import dataclass
from pathlib import Path

from djship import render
from djship.connectors import CommandFailed, Connector
from djship.plan import Plan, in_clean_environment

UNIT_DIR = Path("/etc/systemd/system")
SYSTEMD_RUNNING = Path("/run/systemd/system")
BOOT_PROGRAM = "boot"
# $0 the marker, then the command to run when it exists.
_IF_MARKED = 'test ! -e "$0" || exec "$@"'
NO_INIT = (
    "no init system: nothing starts djship's processes after a reboot, and after a supervisor crash they run "
    "unsupervised until `djship up`"
)


def unit_name(plan: Plan) -> str:
    """djship-<project>-<hash of the state root>.service: one per state root, readable in `systemctl list-units`."""
    project = plan.settings_module.split(".")[0].replace("_", "-")
    digest = hashlib.sha256(str(plan.paths.state).encode()).hexdigest()[:8]
    return f"djship-{project}-{digest}.service"


def boot_conf_path(plan: Plan) -> Path:
    return plan.paths.supervisor / "boot.conf"


def boot_script_path(plan: Plan) -> Path:
    return plan.paths.supervisor / "boot.sh"


def marker_path(plan: Plan) -> Path:
    """Present while the system is meant to be up: then a supervisor started by the init system starts everything."""
    return plan.paths.supervisor / "start-at-boot"


def boot_argv(plan: Plan) -> list[str]:
    """What the init system runs: supervisord in the foreground, with boot.conf and a clean environment (boot.sh may
    be run from a shell)."""
    return in_clean_environment([plan.tools.python, "-m", "supervisor.supervisord", "-n", "-c", str(boot_conf_path(plan))])


def boot_conf(plan: Plan) -> str:
    """supervisord.conf plus the program that starts every component in order (`supervisorctl start` waits until
    each is running before the next) when the marker is there."""
    start = [plan.tools.python, "-m", "supervisor.supervisorctl", "-c", str(plan.paths.supervisor_conf), "start",
             *(program.name for program in render.programs(plan))]
    command = shlex.join(["/bin/sh", "-c", _IF_MARKED, str(marker_path(plan)), *start])
    return render.supervisord_boot_conf(plan, BOOT_PROGRAM, command)


def systemd_unit(plan: Plan) -> str:
    stop_timeout = sum(program.stopwaitsecs for program in render.programs(plan)) + 10
    return render.systemd_unit(plan, shlex.join(boot_argv(plan)), stop_timeout)


def boot_script(plan: Plan, reason: str) -> str:
    return render.boot_script(plan, shlex.join(boot_argv(plan)), reason)


def _systemd_refusal(connector: Connector) -> str | None:
    """Why djship cannot register a systemd unit on this host; None: it can."""
    if not connector.run(["test", "-d", str(SYSTEMD_RUNNING)]).ok:
        return "systemd is not the init system"
    if connector.run(["id", "-u"]).stdout.strip() != "0":
        return "systemd is the init system, but registering a unit needs root"
    return None


def register(connector: Connector, plan: Plan) -> str:
    """Make the host's init system start the supervisor, and so every component, at boot and when it dies; call it
    once the system is up. Returns what it did, in one line."""
    connector.put(boot_conf_path(plan), boot_conf(plan), mode=0o600)
    refusal = _systemd_refusal(connector)
    if refusal is None:
        unit = UNIT_DIR / unit_name(plan)
        if connector.put(unit, systemd_unit(plan)):
            _systemctl(connector, "daemon-reload")
        _systemctl(connector, "enable", unit.name)
        connector.put(marker_path(plan), "", mode=0o600)
        return f"systemd starts the supervisor at boot and restarts it with everything when it dies ({unit.name})"
    connector.put(boot_script_path(plan), boot_script(plan, refusal), mode=0o700)
    connector.put(marker_path(plan), "", mode=0o600)
    return f"{NO_INIT} ({refusal}); the boot command is in {boot_script_path(plan)}"


def unregister(connector: Connector, plan: Plan) -> None:
    """After `down`: nothing starts at boot (a supervisor the init system starts anyway starts nothing)."""
    disarm(connector, plan)
    if systemd_unit_installed(connector, plan):
        _systemctl(connector, "disable", unit_name(plan))


def uninstall(connector: Connector, plan: Plan) -> None:
    """Before the state root is deleted (`destroy`): no unit is left naming it."""
    if systemd_unit_installed(connector, plan):
        _systemctl(connector, "disable", unit_name(plan))
        connector.run(["rm", "-f", str(UNIT_DIR / unit_name(plan))])
        _systemctl(connector, "daemon-reload")


def disarm(connector: Connector, plan: Plan) -> None:
    """Before djship starts a supervisor itself, it, not the boot program, starts each component (in its own way)."""
    connector.run(["rm", "-f", str(marker_path(plan))])


def systemd_unit_installed(connector: Connector, plan: Plan) -> bool:
    return _systemd_refusal(connector) is None and connector.get(UNIT_DIR / unit_name(plan)) is not None


def _systemctl(connector: Connector, *args: str) -> None:
    result = connector.run(["systemctl", *args])
    if not result.ok:
        raise CommandFailed(f"systemctl {' '.join(args)}", result)


@dataclass(frozen=True)
class Registration:
    init: str | None
    """"systemd", or None when djship could not register with the host's init system."""
    command: str | None
    """Where the boot command is: the unit file or boot.sh; None before the first `up`."""
    starts_at_boot: bool
    note: str | None
    """What a user must know; None when the init system takes care of it."""

    def to_json(self) -> dict:
        return {"init": self.init, "command": self.command, "starts_at_boot": self.starts_at_boot, "note": self.note}


def registration(connector: Connector, plan: Plan) -> Registration:
    """What `status` reports about boot: observed on the host, never changed."""
    armed = connector.get(marker_path(plan)) is not None
    if systemd_unit_installed(connector, plan):
        return Registration("systemd", str(UNIT_DIR / unit_name(plan)), armed, None)
    script = boot_script_path(plan)
    recorded = connector.get(script) is not None
    return Registration(None, str(script) if recorded else None, armed and recorded, NO_INIT)

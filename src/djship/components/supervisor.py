"""supervisord: one per host, it starts every long-running process and restarts any that dies."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from djship.components import boot
from djship.connectors import CommandFailed, Connector
from djship.errors import DjshipError
from djship.logfile import SUPERVISOR_UMASK
from djship.plan import Plan, in_clean_environment
from djship.waiting import wait_until

_STATUS_LINE = re.compile(r"^(?P<name>\S+)\s+(?P<state>[A-Z]+)\s*(?P<rest>.*)$")
_PID = re.compile(r"pid (\d+)")
# Run with the supervisor's Python: start each program of argv[3:] without waiting out its startsecs (supervisorctl
# always waits); one already running is left alone. argv[2] "again": stop them first (waiting until each has), in
# the same process rather than a supervisorctl of its own.
_LAUNCH = """
import sys
from xmlrpc.client import Fault
from supervisor.options import ClientOptions
from supervisor.xmlrpc import Faults
options = ClientOptions()
options.realize(["-c", sys.argv[1]], doc="")
supervisor = options.getServerProxy().supervisor
if sys.argv[2] == "again":
    for name in sys.argv[3:]:
        try:
            supervisor.stopProcess(name, True)
        except Fault as fault:
            if fault.faultCode != Faults.NOT_RUNNING:
                sys.exit(f"{name}: {fault.faultString}")
for name in sys.argv[3:]:
    try:
        supervisor.startProcess(name, False)
    except Fault as fault:
        if fault.faultCode != Faults.ALREADY_STARTED:
            sys.exit(f"{name}: {fault.faultString}")
"""
# Run with the supervisor's Python: what supervisord knows of program argv[2], as JSON. Unlike `supervisorctl status`,
# it names the pid of a program that is still STARTING: one that lives just past its startsecs, exits and is
# started again shows a new pid for nearly all of each round, not only for the moment it counts as RUNNING.
_INFO = """
import json, sys
from supervisor.options import ClientOptions
options = ClientOptions()
options.realize(["-c", sys.argv[1]], doc="")
info = options.getServerProxy().supervisor.getProcessInfo(sys.argv[2])
print(json.dumps({key: info[key] for key in ("statename", "pid", "description")}))
"""
# supervisorctl status's exit code when no supervisord answers on its socket (LSB's "unknown").
_NO_ANSWER = 4
# The states of a program that stopped trying to start, or ended (supervisorctl's words).
_GAVE_UP = ("BACKOFF", "FATAL", "EXITED")


@dataclass(frozen=True)
class ProcessStatus:
    name: str
    state: str
    pid: int | None
    detail: str


def parse_status(output: str) -> dict[str, ProcessStatus]:
    """Parse `supervisorctl status` output into one entry per program."""
    statuses = {}
    for line in output.splitlines():
        match = _STATUS_LINE.match(line.strip())
        if not match:
            continue
        pid = _PID.search(match["rest"])
        statuses[match["name"]] = ProcessStatus(
            match["name"], match["state"], int(pid.group(1)) if pid else None, match["rest"].strip()
        )
    return statuses


def parse_reread(output: str) -> dict[str, str]:
    """Parse `supervisorctl reread` ("app3-nginx: available", "... changed", "... disappeared")."""
    changes = {}
    for line in output.splitlines():
        name, _, change = line.strip().partition(": ")
        if change in ("available", "changed", "disappeared"):
            changes[name] = change
    return changes


class Supervisor:
    def __init__(self, plan: Plan, connector: Connector):
        self.plan = plan
        self.connector = connector

    def _ctl(self, *args: str):
        return self.connector.run(
            [self.plan.tools.python, "-m", "supervisor.supervisorctl", "-c", str(self.plan.paths.supervisor_conf), *args]
        )

    def pid(self) -> int | None:
        """supervisord's pid when it is running and answering, else None."""
        if self.connector.get(self.plan.paths.supervisor_pid) is None:
            return None
        answer = self._ctl("pid")
        return int(answer.stdout.strip()) if answer.ok and answer.stdout.strip().isdigit() else None

    def start_daemon(self) -> None:
        """Start supervisord with no program running: djship starts each in its own way. Where the init system
        supervises it (boot.register), through the init system, so that it is restarted when it dies. Either way
        with a clean environment, which its programs inherit: nothing of the shell that runs djship."""
        boot.disarm(self.connector, self.plan)
        if boot.systemd_unit_installed(self.connector, self.plan):
            result = self.connector.run(["systemctl", "start", boot.unit_name(self.plan)])
        else:
            # Its own log is created before it takes the umask of its configuration; nothing of djship's own
            # environment reaches it (nor so its programs).
            result = self.connector.run(in_clean_environment(
                ["sh", "-c", f'umask {SUPERVISOR_UMASK} && exec "$0" "$@"', self.plan.tools.python, "-m",
                 "supervisor.supervisord", "-c", str(self.plan.paths.supervisor_conf)]
            ))
        if not result.ok:
            raise CommandFailed("starting supervisord", result, self.plan.paths.logs / "supervisord.log")
        wait_until(
            "supervisord", lambda: (self.pid() is not None, "not answering"), 15,
            f"see {self.plan.paths.logs / 'supervisord.log'}",
        )

    def reload_config(self) -> set[str]:
        """Read a changed supervisord.conf without restarting anything that runs: new programs are added (stopped),
        vanished ones are stopped and removed. Returns the programs whose own settings changed; those take effect
        when they are restarted with restart(..., reconfigure=...)."""
        result = self._ctl("reread")
        if not result.ok:
            raise CommandFailed("supervisorctl reread", result)
        changes = parse_reread(result.stdout)
        for name, change in changes.items():
            if change == "disappeared":
                self.stop(name)
                self._ctl("remove", name)
            elif change == "available":
                self._ctl("add", name)
        return {name for name, change in changes.items() if change == "changed"}

    def status(self) -> dict[str, ProcessStatus]:
        # supervisorctl status exits 3 when some program is not running; the output is what matters.
        return parse_status(self._ctl("status").stdout)

    def answered_status(self) -> dict[str, ProcessStatus] | None:
        """status() when supervisord is running and answering, else None: pid() and status() in one supervisorctl."""
        if self.connector.get(self.plan.paths.supervisor_pid) is None:
            return None
        result = self._ctl("status")
        return None if result.returncode == _NO_ANSWER else parse_status(result.stdout)

    def process(self, name: str) -> ProcessStatus | None:
        """What supervisord says of one program, its pid from its start on; None when it does not answer."""
        result = self.connector.run([self.plan.tools.python, "-c", _INFO, str(self.plan.paths.supervisor_conf), name])
        if not result.ok:
            return None
        info = json.loads(result.stdout)
        return ProcessStatus(name, info["statename"], info["pid"] or None, info["description"])

    def start(self, *names: str) -> None:
        # One supervisorctl per program: given several, it starts them one after another, each waiting its startsecs
        # (1 s), while supervisord waits for those of several clients together.
        with ThreadPoolExecutor(max_workers=max(len(names), 1)) as pool:
            results = list(pool.map(lambda name: self._ctl("start", name), names))
        for name, result in zip(names, results):
            lines = result.stdout.splitlines()
            # Starting what already runs is not a failure: `up` starts a server's nginx and gunicorn when either stopped.
            if any("ERROR (already started)" in line for line in lines):
                continue
            failed = [line for line in lines if "ERROR" in line]
            if failed or not result.ok:
                raise DjshipError(
                    f"{name} did not start ({failed[0].split(':', 1)[-1].strip() if failed else result.stderr.strip()}); "
                    f"see {self.plan.paths.logs / (name + '.log')} or `djship logs {name}`"
                )

    def launch(self, *names: str, again: bool = False) -> None:
        """Start programs (stopped first, again: a restart) without waiting out their startsecs: for a caller that
        waits for each to be ready its own way (a health check, a socket), with answering() so that one that exits
        while starting fails at once."""
        result = self.connector.run([self.plan.tools.python, "-c", _LAUNCH, str(self.plan.paths.supervisor_conf),
                                     "again" if again else "once", *names])
        if not result.ok:
            name, _, reason = (result.stderr.strip().splitlines() or [f"{names[0]}: exit code {result.returncode}"])[
                -1].partition(": ")
            raise DjshipError(f"{name} did not start ({reason or 'no answer from the supervisor'}); "
                              f"see {self.plan.paths.logs / (name + '.log')} or `djship logs {name}`")

    def answering(self, name: str, ready: Callable[[], tuple[bool, str]]) -> Callable[[], tuple[bool, str]]:
        """ready() for wait_until, raising as soon as the launched program name exited instead of being ready."""

        seen: list[int] = []  # its pids: a second one means it exited after startsecs and was started again

        def check() -> tuple[bool, str]:
            answer = ready()
            if not answer[0]:
                status = self.process(name)
                if status is not None and status.pid is not None and status.pid not in seen:
                    seen.append(status.pid)
                if status is not None and (status.state in _GAVE_UP or len(seen) > 1):
                    how = f"{status.state} {status.detail}".strip() if len(seen) < 2 else "the supervisor started it again"
                    raise DjshipError(f"{name} exited while starting ({how}); see "
                                      f"{self.plan.paths.logs / (name + '.log')} or `djship logs {name}`")
            return answer

        return check

    def stop(self, *names: str) -> None:
        result = self._ctl("stop", *names)
        # Nothing to stop: a program that is not running, or one this supervisor does not run (djship.toml gained it
        # since the last `up`).
        failed = [line for line in result.stdout.splitlines()
                  if "ERROR" in line and "not running" not in line and "no such process" not in line]
        if not result.ok and failed:
            raise CommandFailed(f"stopping {', '.join(names)}", result)

    def signal(self, name: str, signal_name: str) -> None:
        result = self._ctl("signal", signal_name, name)
        if not result.ok or "ERROR" in result.stdout:
            raise CommandFailed(f"sending {signal_name} to {name}", result)

    def restart(self, *names: str, reconfigure: set[str] = frozenset()) -> None:
        """Stop and start; programs in reconfigure are reloaded with their new settings in between."""
        self.stop(*names)
        for name in reconfigure.intersection(names):
            self._ctl("remove", name)
            self._ctl("add", name)
        self.start(*names)

    def shutdown(self) -> None:
        pid = self.pid()
        if pid is None:
            return
        self._ctl("shutdown")
        wait_until(
            f"supervisord (pid {pid}) stopping", lambda: (not self._alive(pid), "still running"), 120,
            f"stop it with kill {pid}",
        )

    def _alive(self, pid: int) -> bool:
        return self.connector.run(["kill", "-0", str(pid)]).ok

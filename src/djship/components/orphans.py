"""djship's own processes left running by a supervisor that died, and putting them back under a new one.

When supervisord is killed (kill -9, the OOM killer) its programs keep running, reparented to init, and keep serving.
Each program is a process group the supervisor made, whose leader still carries the environment the supervisor gave
it: SUPERVISOR_SERVER_URL names this state root's supervisor socket, SUPERVISOR_PROCESS_NAME the program. nginx
overwrites its environment with its process title, which names its config file instead. That is how they are found,
with one command on the host and a pure parser.

`adopt` replaces them without a failed request where the balancer allows it: PostgreSQL is not restarted (its
supervised program waits on the surviving postmaster, see render._POSTGRES_RUN); each app server is drained in the
surviving HAProxy, stopped, started supervised, health-checked and put back; then a supervised HAProxy starts beside
the survivor (both bind with SO_REUSEPORT) and the survivor finishes its connections (SIGUSR1).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass

from djship import render
from djship.components import balancer as balancer_
from djship.components.supervisor import ProcessStatus, Supervisor
from djship.connectors import CommandFailed, Connector
from djship.errors import DjshipError
from djship.plan import AppServer, Plan
from djship.progress import Reporter
from djship.waiting import wait_until

UNSUPERVISED = "UNSUPERVISED"
# An app server's programs: app1-nginx on one machine, web1-2-gunicorn on a host (servers are named after it).
_APP_PROGRAM = re.compile(r"^(?P<server>.+)-(gunicorn|nginx)$")

# Runs on the host with its Python's standard library only (argv: the state root): one JSON line per process that a
# supervisor started or that names the state root in its command line (pid, process group, state, SUPERVISOR_*
# variables, argv). Processes it may not read are skipped.
SCAN = r"""
import json, os, sys
state = sys.argv[1].encode()
for entry in os.listdir("/proc"):
    if not entry.isdigit():
        continue
    try:
        with open(f"/proc/{entry}/environ", "rb") as handle:
            environ = handle.read().split(b"\0")
        with open(f"/proc/{entry}/cmdline", "rb") as handle:
            cmdline = handle.read()
        if state not in cmdline and not any(item.startswith(b"SUPERVISOR_SERVER_URL=") for item in environ):
            continue
        with open(f"/proc/{entry}/stat", "rb") as handle:
            stat = handle.read().decode(errors="replace")
    except OSError:
        continue
    argv = [part.decode(errors="replace") for part in cmdline.split(b"\0") if part]
    fields = stat.rsplit(")", 1)[1].split()
    variables = dict(item.decode(errors="replace").split("=", 1) for item in environ if item.startswith(b"SUPERVISOR_"))
    print(json.dumps({"pid": int(entry), "state": fields[0], "pgrp": int(fields[2]), "env": variables, "argv": argv}))
"""


@dataclass(frozen=True)
class Orphan:
    pid: int
    """The program's process, which leads its process group: every process of the program is in that group."""
    program: str
    argv: tuple[str, ...]


def parse_scan(output: str, supervisor_socket: str, servers_dir: str) -> list[Orphan]:
    """The programs of the supervisor at supervisor_socket among SCAN's lines, one per process group, by pid.

    servers_dir: where the app servers' nginx.conf files are, which nginx's title names
    (`nginx: master process /usr/sbin/nginx -c <servers_dir>/app1/nginx.conf ...`, web1-2/ on a host)."""
    url = f"unix://{supervisor_socket}"
    nginx_title = re.compile(rf" -c {re.escape(servers_dir)}/(?P<server>[^/\s]+)/nginx\.conf ")
    found = []
    for line in output.splitlines():
        try:
            process = json.loads(line)
        except json.JSONDecodeError:
            continue
        if process["pid"] != process["pgrp"] or process["state"] == "Z":
            continue
        env = process.get("env", {})
        if env.get("SUPERVISOR_SERVER_URL") == url and "SUPERVISOR_PROCESS_NAME" in env:
            program = env["SUPERVISOR_PROCESS_NAME"]
        elif "SUPERVISOR_SERVER_URL" not in env:
            title = nginx_title.search(" ".join(process["argv"]) + " ")
            program = f"{title['server']}-nginx" if title else None
        else:
            continue
        if program:
            found.append(Orphan(process["pid"], program, tuple(process["argv"])))
    return sorted(found, key=lambda orphan: orphan.pid)


def orphans(connector: Connector, plan: Plan) -> list[Orphan]:
    """djship's processes of this state root that run while no supervisor of it answers (call it only then: the
    programs of a live supervisor look the same)."""
    if not connector.run(["test", "-x", plan.tools.python]).ok:
        return []  # a host's first `up`: no supervisor was ever installed, so none left anything running
    result = connector.run([plan.tools.python, "-c", SCAN, str(plan.paths.state)], timeout=30)
    if not result.ok:
        raise CommandFailed("looking for djship's processes in /proc", result)
    return parse_scan(result.stdout, str(plan.paths.supervisor_socket), str(plan.paths.servers))


def as_statuses(found: list[Orphan]) -> dict[str, ProcessStatus]:
    """The orphans as `status` shows them, beside what a supervisor would say of its programs."""
    # Shells waiting on a postmaster (left from an earlier adoption) first, so the postmaster's own entry wins.
    ordered = sorted(found, key=lambda orphan: orphan.argv[:1] != ("/bin/sh",))
    return {orphan.program: ProcessStatus(orphan.program, UNSUPERVISED, orphan.pid, "no supervisor") for orphan in ordered}


def _signal_group(connector: Connector, orphan: Orphan, signal_name: str) -> None:
    connector.run(["kill", "-s", signal_name, "--", f"-{orphan.pid}"])


def _gone(connector: Connector, plan: Plan, orphan: Orphan) -> tuple[bool, str]:
    alive = any(other.pid == orphan.pid for other in orphans(connector, plan))
    return not alive, f"pid {orphan.pid} still running"


def stop(connector: Connector, plan: Plan, orphan: Orphan, signal_name: str, timeout: float) -> None:
    """Stop an orphaned program as its supervisor would have (stopasgroup, then killasgroup past the timeout)."""
    _signal_group(connector, orphan, signal_name)
    try:
        wait_until(f"{orphan.program} (pid {orphan.pid}) stopping", lambda: _gone(connector, plan, orphan), timeout)
    except DjshipError:
        _signal_group(connector, orphan, "KILL")
        wait_until(f"{orphan.program} (pid {orphan.pid}) stopping", lambda: _gone(connector, plan, orphan), 10)


def _stopping(programs: dict[str, render.Program], name: str) -> tuple[str, int]:
    """A program's stop signal and timeout; for one djship.toml no longer has (app3-nginx), another app server's."""
    kind = name.rsplit("-", 1)[-1]
    program = programs.get(name) or next((other for other in programs.values() if other.name.endswith(f"-{kind}")
                                          and _APP_PROGRAM.match(other.name)), None)
    return (program.stopsignal, program.stopwaitsecs) if program else ("TERM", 10)


def stop_all(connector: Connector, plan: Plan, found: list[Orphan]) -> None:
    """`down` without a supervisor: the balancer first, the database last, each with its own stop signal."""
    programs = render.programs(plan)
    order = {program.name: index for index, program in enumerate(programs)}
    settings = {program.name: program for program in programs}
    for orphan in sorted(found, key=lambda orphan: -order.get(orphan.program, len(order))):
        stop(connector, plan, orphan, *_stopping(settings, orphan.program))


def adopt(
    connector: Connector,
    plan: Plan,
    supervisor: Supervisor,
    balancer: balancer_.Balancer,
    found: list[Orphan],
    wait_healthy: Callable[[AppServer], None],
    wait_balancer_ready: Callable[[], None],
    reporter: Reporter,
) -> None:
    """Start a supervisor and put every orphan back under it, in the order that fails no request: the database is
    kept, app servers are replaced one at a time out of rotation, the balancer is replaced last.
    balancer: the one sending requests to this host's app servers (this host's own, surviving or not, or an lb
    host's); wait_healthy(server) returns once the server answers its health check; wait_balancer_ready() once this
    host's balancer serves over HTTPS with every app server up."""
    programs = {program.name: program for program in render.programs(plan)}
    by_program: dict[str, list[Orphan]] = {}
    for orphan in found:
        by_program.setdefault(orphan.program, []).append(orphan)
    pids = ", ".join(f"{orphan.program} {orphan.pid}" for orphan in found)
    with reporter.step(f"Starting a supervisor for the processes its predecessor left running ({pids})"):
        connector.put(plan.paths.supervisor_conf, render.supervisord_conf(plan))
        supervisor.start_daemon()
    if "postgres" in by_program:
        _adopt_database(connector, plan, supervisor, by_program.pop("postgres"), reporter)
    balancer_orphans = by_program.pop("haproxy", [])
    for server in plan.servers_here:
        server_orphans = [orphan for name in server.programs for orphan in by_program.pop(name, [])]
        if server_orphans:
            _replace_app_server(connector, plan, supervisor, balancer, server, server_orphans, wait_healthy, reporter)
    for name in sorted({match["server"] for program in by_program if (match := _APP_PROGRAM.match(program))}):
        with reporter.step(f"Stopping {name}, which djship.toml no longer has (drained first)"):
            if name in balancer.states():
                balancer.set_state(name, "drain")
                balancer.wait_drained(name, plan.balancer_timeout)
            for program in (f"{name}-nginx", f"{name}-gunicorn"):
                for orphan in by_program.pop(program, []):
                    stop(connector, plan, orphan, *_stopping(programs, program))
    if balancer_orphans:
        with reporter.step("Starting a supervised load balancer beside the one left running, which then finishes"):
            supervisor.start("haproxy")
            wait_balancer_ready()
            for orphan in balancer_orphans:
                stop(connector, plan, orphan, "USR1", programs["haproxy"].stopwaitsecs)
    for name, rest in sorted(by_program.items()):
        with reporter.step(f"{'Replacing' if name in programs else 'Stopping'} {name} "
                           f"(pid {', '.join(str(orphan.pid) for orphan in rest)})"):
            for orphan in rest:
                stop(connector, plan, orphan, *_stopping(programs, name))
            if name in programs:
                supervisor.start(name)


def _adopt_database(
    connector: Connector, plan: Plan, supervisor: Supervisor, found: list[Orphan], reporter: Reporter
) -> None:
    # A postgres program left from an earlier adoption is the shell that only waits on the postmaster: end it, never
    # the postmaster (SIGKILL runs no trap that would pass a stop signal on).
    waiters = [orphan for orphan in found if orphan.argv[:1] == ("/bin/sh",)]
    postmasters = [orphan for orphan in found if orphan not in waiters]
    with reporter.step(
        f"Supervising PostgreSQL (pid {postmasters[0].pid}) without restarting it; its log resumes at its next restart"
        if postmasters else "Starting PostgreSQL"
    ):
        for orphan in waiters:
            stop(connector, plan, orphan, "KILL", 10)
        supervisor.start("postgres")


def _replace_app_server(
    connector: Connector,
    plan: Plan,
    supervisor: Supervisor,
    balancer: balancer_.Balancer,
    server: AppServer,
    found: list[Orphan],
    wait_healthy: Callable[[AppServer], None],
    reporter: Reporter,
) -> None:
    programs = {program.name: program for program in render.programs(plan)}
    serving = any(state.status == "UP" for name, state in balancer.states().items() if name != server.name)
    with reporter.step(f"Replacing {server.name} under the supervisor"
                       + (" (drained first; the others serve)" if serving else "")):
        if serving:
            balancer.set_state(server.name, "drain")
            balancer.wait_drained(server.name, plan.balancer_timeout)
        for orphan in sorted(found, key=lambda orphan: orphan.program.endswith("-gunicorn")):  # nginx first
            program = programs[orphan.program]
            stop(connector, plan, orphan, program.stopsignal, program.stopwaitsecs)
        supervisor.start(*server.programs)
        wait_healthy(server)
        if serving:
            balancer.set_state(server.name, "ready")
            balancer.wait_status(server.name, "UP", 30)

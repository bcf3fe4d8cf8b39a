"""A balancer djship does not run (an ALB): what the app servers see of it, and taking them out of its rotation.

It has no runtime API djship may use, so a server leaves rotation the way the balancer itself decides: its health
check answers 503 (nginx, while the server's drain file exists). nginx logs every health check it answers
("<time> <status> <peer>" a line), which tells djship when the balancer has seen the server fail and pass again.
"""

from __future__ import annotations

import ipaddress
import re
import time
from dataclasses import dataclass
from pathlib import Path

from djship.components.appserver import probe_from
from djship.components.balancer import Balancer
from djship.connectors import Connector
from djship.errors import DjshipError
from djship.plan import IN_FLIGHT_PATH, AppServer, ExternalBalancer, Plan
from djship.waiting import wait_until

# argv: the health log, the line to start at (1: the first); prints the host's clock, then those lines.
_READ_LOG = 'date +%s.%N; [ -f "$1" ] && tail -n "+$2" -- "$1"; exit 0'
_IN_FLIGHT = re.compile(r"Reading: (\d+) Writing: (\d+)")


def _no_runtime_api(command: str, timeout: float) -> str:
    raise OSError(0, "the balancer is external: no runtime API")


# What the code written for HAProxy's runtime API sees of an external balancer: no server states (so nothing to set).
NO_RUNTIME_API = Balancer(Path("/nonexistent"), _no_runtime_api)


@dataclass(frozen=True)
class Check:
    """One health check nginx answered."""

    at: float
    status: int
    peer: str


@dataclass(frozen=True)
class HealthLog:
    """The health checks of one app server from a line on, with the host's clock when read."""

    now: float
    lines: int
    """How many lines were read (the next read starts after them)."""
    checks: tuple[Check, ...]

    def from_balancer(self, balancer: ExternalBalancer, server: AppServer) -> tuple[Check, ...]:
        """The checks from the balancer's networks, not those djship makes from the server's own host (whose address
        may be in them: nginx lets the more specific /32 win)."""
        networks = [ipaddress.ip_network(network, strict=False) for network in balancer.trusted]
        return tuple(check for check in self.checks if check.peer != server.address and _within(check.peer, networks))


def _within(peer: str, networks: list) -> bool:
    try:
        address = ipaddress.ip_address(peer)
    except ValueError:
        return False
    return any(address in network for network in networks)


def parse_health_log(text: str) -> HealthLog:
    """The output of _READ_LOG: the clock, then "<msec> <status> <peer>" lines (others are skipped)."""
    first, *lines = text.splitlines() or ["0"]
    checks = []
    for line in lines:
        parts = line.split()
        if len(parts) == 3 and parts[1].isdigit():
            try:
                checks.append(Check(float(parts[0]), int(parts[1]), parts[2]))
            except ValueError:
                pass
    try:
        now = float(first)
    except ValueError:
        now = 0.0
    return HealthLog(now, len(lines), tuple(checks))


def read_health_log(connector: Connector, server: AppServer, start: int = 1) -> HealthLog:
    result = connector.run(["sh", "-c", _READ_LOG, "sh", str(server.health_log), str(start)], timeout=30)
    return parse_health_log(result.stdout)


def seen_by_balancer(connector: Connector, plan: Plan, server: AppServer) -> dict | None:
    """The last health check the balancer sent this server (its status, from where, how long ago) and the balancer
    addresses among the last 200 lines of the log; None when none of them is the balancer's."""
    log = read_health_log(connector, server, max(1, _next_line(connector, server) - 200))
    checks = log.from_balancer(plan.external, server)
    if not checks:
        return None
    last = checks[-1]
    return {"status": last.status, "peer": last.peer, "seconds_ago": round(max(0.0, log.now - last.at), 1),
            "peers": sorted({check.peer for check in checks})}


def drain(connector: Connector, server: AppServer) -> int:
    """Make the server's health check answer 503 to the balancer; returns the health log's next line."""
    start = _next_line(connector, server)
    connector.put(server.drain_file, "", mode=0o644)
    return start


def undrain(connector: Connector, server: AppServer) -> int:
    start = _next_line(connector, server)
    connector.run(["rm", "-f", "--", str(server.drain_file)])
    return start


def draining(connector: Connector, server: AppServer) -> bool:
    return connector.get(server.drain_file) is not None


def _next_line(connector: Connector, server: AppServer) -> int:
    length = connector.run(["sh", "-c", 'wc -l < "$1" 2>/dev/null || echo 0', "sh", str(server.health_log)])
    count = length.stdout.strip()
    return (int(count) if count.isdigit() else 0) + 1


def wait_out(connector: Connector, plan: Plan, server: AppServer, start: int) -> None:
    """Wait drain_seconds, then make sure the balancer was told: at least one of its health checks got the 503."""
    balancer = plan.external
    time.sleep(balancer.drain_seconds)
    told = [check for check in read_health_log(connector, server, start).from_balancer(balancer, server) if check.status == 503]
    if not told:
        raise DjshipError(
            f"no health check from the balancer ({', '.join(balancer.trusted)}) reached {server.name} in "
            f"deploy.drain_seconds = {balancer.drain_seconds}; point its health check (target group) at "
            f"{plan.health_path} on {server.endpoint}, check balancer.trusted, or raise deploy.drain_seconds"
        )


def wait_in_flight(connector: Connector, host_plan: Plan, plan: Plan, server: AppServer, timeout: float) -> None:
    """Wait until nginx answers no request but djship's own; past the timeout the server restarts anyway (gunicorn
    still finishes the requests it holds)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status, body = probe_from(connector, host_plan, plan, server, [IN_FLIGHT_PATH])[0]
        counts = _IN_FLIGHT.search(body) if status == 200 else None
        if counts is None or int(counts[1]) + int(counts[2]) <= 1:
            return
        time.sleep(0.2)


def wait_back(connector: Connector, plan: Plan, server: AppServer, start: int, peers: set[str]) -> None:
    """Wait until the balancer has put the server back: each of its nodes that checked it (peers) has had
    healthy_threshold checks answered 200 in a row since start; with no node known, that many intervals."""
    balancer = plan.external
    if not peers:
        time.sleep(balancer.healthy_threshold * balancer.health_interval)
        return

    def back() -> tuple[bool, str]:
        checks = read_health_log(connector, server, start).from_balancer(balancer, server)
        short = {}
        for peer in peers:
            streak = _passed_in_a_row([check.status for check in checks if check.peer == peer])
            if streak < balancer.healthy_threshold:
                short[peer] = streak
        seen = ", ".join(f"{peer}: {count} of {balancer.healthy_threshold}" for peer, count in sorted(short.items()))
        return not short, f"health checks answered 200 in a row: {seen}"

    wait_until(f"{server.name} back in the balancer's rotation", back, balancer.back_timeout,
               f"see `djship logs {server.name}`")


def _passed_in_a_row(statuses: list[int]) -> int:
    """How many of the last statuses are 200."""
    streak = 0
    for status in reversed(statuses):
        if status != 200:
            break
        streak += 1
    return streak


def peers_told(connector: Connector, plan: Plan, server: AppServer, start: int) -> set[str]:
    """The balancer's nodes that sent the server a health check since start."""
    return {check.peer for check in read_health_log(connector, server, start).from_balancer(plan.external, server)}


def health_word(seen: dict | None) -> str:
    """status's health of an app server behind an external balancer, from _seen_by_external_balancer's entry."""
    if seen is None:
        return "unknown"
    if seen["draining"]:
        return "draining"
    last = seen["last_check"]
    if last is None:
        return "no check yet"
    return "up" if last["status"] == 200 else f"failing ({last['status']})"

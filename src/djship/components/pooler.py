"""PgBouncer on each app host (database.pooler): started, reloaded, and paused around a planned restart of
PostgreSQL, so the app's statements wait in its queue instead of failing."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from djship.connectors import on_each
from djship.plan import POOLER_PAUSE_TIMEOUT, POOLER_PORT, POOLER_PROGRAM, Plan
from djship.waiting import wait_until

if TYPE_CHECKING:
    from djship.topology import Host

READY_TIMEOUT = 30


def socket_path(plan: Plan) -> str:
    return str(plan.paths.pooler_socket_dir / f".s.PGSQL.{POOLER_PORT}")


def start(host: Host) -> None:
    host.supervisor.launch(POOLER_PROGRAM)
    listening = host.supervisor.answering(POOLER_PROGRAM, lambda: (is_listening(host), "its socket is not there yet"))
    wait_until(f"PgBouncer on {host.name}", listening, READY_TIMEOUT, f"see `djship logs {POOLER_PROGRAM}`")


def is_listening(host: Host) -> bool:
    return host.connector.run(["test", "-S", socket_path(host.plan)]).ok


def reload(host: Host) -> None:
    """Its config and password file read anew (SIGHUP): no client connection is dropped."""
    host.supervisor.signal(POOLER_PROGRAM, "HUP")


@contextmanager
def paused(hosts: dict[str, Host], pooled_connections: Callable[[], int]) -> Iterator[None]:
    """PAUSE (SIGUSR1) on every host: each PgBouncer lets the running transactions finish, closes its connections
    to PostgreSQL and queues every new statement; done once PostgreSQL sees none of their connections left. RESUME
    (SIGUSR2) afterwards, whatever happened meanwhile."""
    on_each(hosts, lambda host: host.supervisor.signal(POOLER_PROGRAM, "USR1"))
    try:
        wait_until("PgBouncer's PAUSE", lambda: (not (left := pooled_connections()), f"{left} connections still open"),
                   POOLER_PAUSE_TIMEOUT, "a statement runs longer than that; PostgreSQL was not restarted")
        yield
    finally:
        on_each(hosts, lambda host: host.supervisor.signal(POOLER_PROGRAM, "USR2"))

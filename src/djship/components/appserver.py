"""An app server (nginx -> gunicorn -> Django), probed the way the balancer probes it."""

from __future__ import annotations

from collections.abc import Callable

from djship.components.probe import request
from djship.connectors import Connector
from djship.errors import DjshipError
from djship.plan import AppServer, Plan
from djship.waiting import wait_until

# The health check as it runs on a balancer host (its Python's standard library only): argv address port host
# path timeout; prints "<status> <start of the body>", or "0 <reason>" when no answer came.
REMOTE_PROBE = """
import http.client, sys
address, port, host, path, timeout = sys.argv[1:6]
connection = http.client.HTTPConnection(address, int(port), timeout=float(timeout))
try:
    connection.request("GET", path, headers={"Host": host, "X-Forwarded-Proto": "https"})
    answer = connection.getresponse()
    print(answer.status, answer.read(200).decode(errors="replace").strip())
except (OSError, http.client.HTTPException) as error:
    print(0, getattr(error, "strerror", None) or str(error) or type(error).__name__)
"""


def health(plan: Plan, server: AppServer, timeout: float = 5) -> tuple[bool, str]:
    """GET the health path through this server's nginx and gunicorn; (healthy, what was seen)."""
    answer = request(
        server.address, server.port, plan.health_host, "GET", plan.health_path,
        headers={"X-Forwarded-Proto": "https"}, timeout=timeout,
    )
    if isinstance(answer, str):
        return False, answer
    body = answer.body[:200].decode(errors="replace").strip()
    return answer.status == 200, f"HTTP {answer.status} {body}".strip()


def health_from(connector: Connector, python: str, plan: Plan, server: AppServer, timeout: float = 5) -> tuple[bool, str]:
    """The same health check, made from another host (a balancer's: the only one an app server lets in)."""
    result = connector.run(
        [python, "-c", REMOTE_PROBE, server.address, str(server.port), plan.health_host, plan.health_path, str(timeout)],
        timeout=timeout + 15,
    )
    status, _, seen = result.stdout.strip().partition(" ")
    if not result.ok or not status.isdigit():
        return False, (result.stderr.strip() or f"exit code {result.returncode}").splitlines()[-1]
    if status == "0":
        return False, seen
    return status == "200", f"HTTP {status} {seen}".strip()


def wait_healthy(plan: Plan, server: AppServer, release_id: str, probe: Callable[[], tuple[bool, str]], log: str) -> None:
    """Until the server answers its health check, through nginx and gunicorn, from this release.

    log: where the server's gunicorn writes, named in the errors."""
    errors = []

    def answered() -> tuple[bool, str]:
        healthy, seen = probe()
        # 502/503 mean "still starting"; a 500 is the application's own answer, so a few in a row settle it.
        errors[:] = [*errors, seen][-3:] if seen.startswith("HTTP 500") else []
        if len(errors) == 3:
            raise DjshipError(
                f"app server {server.name} on release {release_id} answers its health check with {seen}; see {log}"
            )
        return healthy and seen.endswith(f"ok {release_id}"), seen

    wait_until(f"app server {server.name} on release {release_id}", answered, plan.health_timeout, f"see {log}")

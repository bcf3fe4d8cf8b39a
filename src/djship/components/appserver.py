"""An app server (nginx -> gunicorn -> Django), probed the way the balancer probes it."""

from __future__ import annotations

from collections.abc import Callable

from djship.connectors import Connector
from djship.errors import DjshipError
from djship.plan import AppServer, Plan
from djship.waiting import wait_until

# The health check as it runs on a balancer host (its Python's standard library only): argv address port host ca
# path timeout [more paths]; over TLS verified against the CA file ca for the address when ca is not empty. Prints one
# line per path, "<status> <start of the body>", or "0 <reason>" when no answer came.
REMOTE_PROBE = """
import http.client, ssl, sys
address, port, host, ca, first, timeout = sys.argv[1:7]
for path in [first, *sys.argv[7:]]:
    if ca:
        connection = http.client.HTTPSConnection(address, int(port), timeout=float(timeout),
                                                 context=ssl.create_default_context(cafile=ca))
    else:
        connection = http.client.HTTPConnection(address, int(port), timeout=float(timeout))
    try:
        connection.request("GET", path, headers={"Host": host, "X-Forwarded-Proto": "https"})
        answer = connection.getresponse()
        print(answer.status, " ".join(answer.read(200).decode(errors="replace").split()))
    except (OSError, http.client.HTTPException) as error:
        print(0, " ".join((getattr(error, "strerror", None) or str(error) or type(error).__name__).split()))
    finally:
        connection.close()
"""


def probe_from(connector: Connector, balancer: Plan, plan: Plan, server: AppServer, paths: list[str],
               timeout: float = 5) -> list[tuple[int, str]]:
    """GET each path through this server's nginx as the balancer sends it (over TLS, verified against djship's CA,
    when the server takes TLS), from the host of that connector: a balancer's, the only one an app server lets in;
    balancer is that host's plan. (status, start of the body) per path; (0, why) when no answer came."""
    ca = str(balancer.paths.ca_cert) if server.tls else ""
    result = connector.run(
        [balancer.tools.python, "-c", REMOTE_PROBE, server.address, str(server.port), plan.health_host, ca, paths[0],
         str(timeout), *paths[1:]],
        timeout=timeout * len(paths) + 15,
    )
    lines = result.stdout.strip().splitlines()
    answers = [line.partition(" ") for line in lines]
    if not result.ok or len(answers) != len(paths) or not all(status.isdigit() for status, _, _ in answers):
        reason = (result.stderr.strip() or f"exit code {result.returncode}").splitlines()[-1]
        return [(0, reason)] * len(paths)
    return [(int(status), text) for status, _, text in answers]


def health_from(connector: Connector, balancer: Plan, plan: Plan, server: AppServer, timeout: float = 5
                ) -> tuple[bool, str]:
    """The health check through nginx and gunicorn, made from a balancer's host; (healthy, what was seen)."""
    status, seen = probe_from(connector, balancer, plan, server, [plan.health_path], timeout)[0]
    if status == 0:
        return False, seen
    return status == 200, f"HTTP {status} {seen}".strip()


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

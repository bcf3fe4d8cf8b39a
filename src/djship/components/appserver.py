"""An app server (nginx -> gunicorn -> Django), probed the way the balancer probes it."""

from __future__ import annotations

import http.client

from djship.plan import AppServer, Plan


def health(plan: Plan, server: AppServer, timeout: float = 5) -> tuple[bool, str]:
    """GET the health path through this server's nginx and gunicorn; (healthy, what was seen)."""
    connection = http.client.HTTPConnection(server.address, server.port, timeout=timeout)
    try:
        connection.request(
            "GET", plan.health_path, headers={"Host": plan.health_host, "X-Forwarded-Proto": "https"}
        )
        response = connection.getresponse()
        body = response.read(200).decode(errors="replace").strip()
        return response.status == 200, f"HTTP {response.status} {body}".strip()
    except OSError as error:
        return False, error.strerror or type(error).__name__
    finally:
        connection.close()

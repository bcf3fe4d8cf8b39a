"""An app server (nginx -> gunicorn -> Django), probed the way the balancer probes it."""

from __future__ import annotations

from djship.components.probe import request
from djship.plan import AppServer, Plan


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

"""`djship doctor`: observe the running system (facts.py), then judge what was observed (checks.py).

Gathering touches the machine (files on disk, processes, live HTTP, PostgreSQL); judging is pure, so every check
is tested with facts that break exactly one thing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from djship.doctor.checks import CheckResult, evaluate
from djship.doctor.facts import gather

if TYPE_CHECKING:
    from djship.system import System


def diagnose(system: System, form_path: str | None = None) -> list[CheckResult]:
    """Every check against the running system; DjshipError when it is not running."""
    return evaluate(system.plan, gather(system, form_path))


def report(results: list[CheckResult]) -> dict:
    """The `djship doctor --json` document (schema in the README)."""
    counts = {status: sum(1 for result in results if result.status == status) for status in ("pass", "warn", "fail")}
    return {
        "ok": counts["fail"] == 0,
        "summary": counts,
        "checks": [result.as_dict() for result in results],
    }


__all__ = ["CheckResult", "diagnose", "report"]

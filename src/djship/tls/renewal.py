"""Renewing the ACME certificate before it expires: when, how often to retry, and what `djship status` shows.

The supervised program `renewal` (tls.mode = "acme") runs watch(): it sleeps until the certificate is due
(CertificateInfo.renew_at), renews, and on failure retries with a doubling back-off. Every attempt, its own or
one from `djship certs renew`, is recorded in tls/renewal.json.
"""

from __future__ import annotations

import datetime
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace

from djship.connectors import Connector
from djship.plan import Plan
from djship.tls.certificates import CertificateInfo, now

FIRST_RETRY = datetime.timedelta(minutes=1)
MAX_RETRY = datetime.timedelta(hours=6)
# Longest single sleep, so a certificate renewed by `djship certs renew` is noticed soon.
MAX_SLEEP = 30.0


@dataclass(frozen=True)
class RenewalState:
    """tls/renewal.json; times are ISO 8601 in UTC, or None."""

    last_attempt: str | None = None
    last_success: str | None = None
    last_error: str | None = None
    failures: int = 0
    next_attempt: str | None = None
    directory: str | None = None
    """The ACME directory that issued the certificate below."""
    serial: str | None = None
    """The serial of the last certificate djship obtained: only that one counts as the ACME certificate."""


def backoff(failures: int) -> datetime.timedelta:
    """How long to wait after the n-th failure in a row: 1 min, 2, 4, ... at most 6 h."""
    return min(FIRST_RETRY * 2 ** max(failures - 1, 0), MAX_RETRY)


def next_attempt(state: RenewalState, info: CertificateInfo | None, current: bool, at: datetime.datetime) -> datetime.datetime:
    """When to try next: at the certificate's renewal time if it is current, else now, or after the back-off when
    the last attempts failed."""
    if current and info is not None:
        return info.renew_at
    if state.failures and state.last_attempt:
        return max(at, datetime.datetime.fromisoformat(state.last_attempt) + backoff(state.failures))
    return at


def load(plan: Plan, connector: Connector) -> RenewalState:
    content = connector.get(plan.paths.renewal_state)
    if not content:
        return RenewalState()
    try:
        return RenewalState(**json.loads(content))
    except (ValueError, TypeError):
        return RenewalState()


def save(plan: Plan, connector: Connector, state: RenewalState) -> None:
    connector.put(plan.paths.renewal_state, json.dumps(asdict(state), indent=2) + "\n", mode=0o644)


def attempt(plan: Plan, connector: Connector, renew: Callable[[], str]) -> RenewalState:
    """Run renew() once and record how it went (and the serial it returns); re-raises its error after recording."""
    started = now().isoformat(timespec="seconds")
    state = load(plan, connector)
    try:
        serial = renew()
    except Exception as error:
        save(plan, connector, replace(state, last_attempt=started, last_error=str(error), failures=state.failures + 1))
        raise
    state = replace(
        state, last_attempt=started, last_success=started, last_error=None, failures=0,
        directory=plan.tls.acme_directory, serial=serial,
    )
    save(plan, connector, state)
    return state


def watch(
    plan: Plan,
    connector: Connector,
    site: Callable[[], tuple[CertificateInfo | None, bool]],
    renew: Callable[[], None],
    log: Callable[[str], None],
    sleep: Callable[[float], None] = time.sleep,
    keep_going: Callable[[], bool] = lambda: True,
    maintain: Callable[[], None] = lambda: None,
) -> None:
    """site() -> (the served certificate, whether it is current); renew() obtains and installs a new one and records
    the attempt (see attempt()); maintain() runs on every wake-up (refreshing the OCSP staple), its failures logged,
    never fatal."""
    while keep_going():
        try:
            maintain()
        except Exception as error:
            log(f"maintenance failed: {error}")
        state = load(plan, connector)
        info, current = site()
        at = now()
        due = next_attempt(state, info, current, at)
        if state.next_attempt != due.isoformat(timespec="seconds"):
            state = replace(state, next_attempt=due.isoformat(timespec="seconds"))
            save(plan, connector, state)
            log(f"next renewal attempt at {state.next_attempt}")
        if at < due:
            sleep(min(MAX_SLEEP, (due - at).total_seconds()))
            continue
        log("renewing the certificate for " + ", ".join(plan.domains))
        try:
            renew()
        except Exception as error:
            failures = load(plan, connector).failures
            log(f"renewal failed ({failures} in a row; next try in {backoff(failures)}): {error}")
        else:
            log("renewed and installed")

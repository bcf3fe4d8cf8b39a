"""What the schedulers of [jobs] recorded in PostgreSQL (djship_production.jobs): each job's last run and whether
a slot passed that no host ran, read as the superuser by status and the doctor."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from datetime import datetime, timezone

from djship.plan import Job

# One JSON document: the database's time, each job's first sighting and latest claimed slot, and its last run
# (a claimed slot that was not skipped). Without the tables (no scheduler ran yet) only the time.
RUNS = r"""
SELECT to_regclass('public.djship_job_runs') IS NOT NULL AND to_regclass('public.djship_jobs') IS NOT NULL
    AS has_tables \gset
\if :has_tables
SELECT json_build_object(
    'now', extract(epoch FROM now()),
    'since', (SELECT coalesce(json_object_agg(job, extract(epoch FROM since)), '{}') FROM djship_jobs),
    'claimed', (SELECT coalesce(json_object_agg(job, latest), '{}')
                FROM (SELECT job, extract(epoch FROM max(slot)) AS latest FROM djship_job_runs GROUP BY job) AS l),
    'runs', (SELECT coalesce(json_agg(r), '[]') FROM (
        SELECT DISTINCT ON (job) job, extract(epoch FROM slot) AS slot, host, extract(epoch FROM started) AS started,
               extract(epoch FROM finished) AS finished, exit_code
        FROM djship_job_runs WHERE skipped IS NULL ORDER BY job, slot DESC) AS r)
);
\else
SELECT json_build_object('now', extract(epoch FROM now()), 'since', '{}'::json, 'claimed', '{}'::json,
                         'runs', '[]'::json);
\endif
"""


@dataclass(frozen=True)
class LastRun:
    slot: str
    host: str
    started: str | None
    duration: float | None
    """Seconds; None while it runs."""
    exit_code: int | None
    """None while it runs."""


@dataclass(frozen=True)
class JobReport:
    name: str
    command: str
    schedule: str
    last_run: LastRun | None
    missed: str | None
    """The latest slot whose window closed with no host running it, since the job was first seen; None if none."""

    @property
    def failing(self) -> bool:
        return self.last_run is not None and self.last_run.exit_code not in (None, 0)

    def to_json(self) -> dict:
        return {**asdict(self), "failing": self.failing}


def _moment(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def reports(jobs: tuple[Job, ...], output: str) -> list[JobReport]:
    """Each job of the plan with its last run, from RUNS' output."""
    recorded = json.loads(output)
    now = recorded["now"]
    runs = {run["job"]: run for run in recorded["runs"]}
    result = []
    for job in jobs:
        run = runs.get(job.name)
        last = None if run is None else LastRun(
            slot=_moment(run["slot"]), host=run["host"],
            started=_moment(run["started"]) if run["started"] is not None else None,
            duration=round(run["finished"] - run["started"], 1) if run["finished"] is not None else None,
            exit_code=run["exit_code"])
        closed = job.slot(now - job.window)
        since = recorded["since"].get(job.name)
        claimed = recorded["claimed"].get(job.name)
        missed = since is not None and closed >= since and (claimed is None or claimed < closed)
        result.append(JobReport(job.name, job.command, job.schedule, last, _moment(closed) if missed else None))
    return result

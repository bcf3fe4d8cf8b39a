"""What the schedulers of [jobs] recorded in PostgreSQL (djship_production.jobs): each job's last run and whether
a slot passed that no host ran, read as the superuser by status and the doctor."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from datetime import datetime, timezone

from djship.plan import Job

# One JSON document: the database's time, each job's first sighting and latest claimed slot, and its last run
# (a claimed slot that was not skipped) and its last finished run. Without the tables (no scheduler ran yet) only the time.
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
        FROM djship_job_runs WHERE skipped IS NULL ORDER BY job, slot DESC) AS r),
    'finished', (SELECT coalesce(json_agg(r), '[]') FROM (
        SELECT DISTINCT ON (job) job, extract(epoch FROM slot) AS slot, host, extract(epoch FROM started) AS started,
               extract(epoch FROM finished) AS finished, exit_code
        FROM djship_job_runs WHERE skipped IS NULL AND finished IS NOT NULL ORDER BY job, slot DESC) AS r)
);
\else
SELECT json_build_object('now', extract(epoch FROM now()), 'since', '{}'::json, 'claimed', '{}'::json,
                         'runs', '[]'::json, 'finished', '[]'::json);
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
    finished: LastRun | None = None
    """Its latest run that ended: while the next one runs, whether the job fails is still this one's answer."""

    @property
    def failing(self) -> bool:
        return self.finished is not None and self.finished.exit_code != 0

    def to_json(self) -> dict:
        return {**asdict(self), "failing": self.failing}


def _moment(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def reports(jobs: tuple[Job, ...], output: str) -> list[JobReport]:
    """Each job of the plan with its last run, from RUNS' output."""
    recorded = json.loads(output)
    now = recorded["now"]
    runs = {run["job"]: _run(run) for run in recorded["runs"]}
    finished = {run["job"]: _run(run) for run in recorded["finished"]}
    result = []
    for job in jobs:
        closed = job.slot(now - job.window)
        since = recorded["since"].get(job.name)
        claimed = recorded["claimed"].get(job.name)
        missed = since is not None and closed >= since and (claimed is None or claimed < closed)
        result.append(JobReport(job.name, job.command, job.schedule, runs.get(job.name),
                                _moment(closed) if missed else None, finished.get(job.name)))
    return result


def _run(row: dict) -> LastRun:
    return LastRun(slot=_moment(row["slot"]), host=row["host"],
                   started=_moment(row["started"]) if row["started"] is not None else None,
                   duration=round(row["finished"] - row["started"], 1) if row["finished"] is not None else None,
                   exit_code=row["exit_code"])

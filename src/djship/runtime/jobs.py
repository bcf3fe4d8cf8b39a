"""The scheduler of [jobs]: one on every app host, each slot of each job run by exactly one of them.

Run as `python -m djship_production.jobs JOBS_FILE` inside a release, with the production settings and the app's
environment (supervised like a process of [processes]). Every second it asks PostgreSQL for the time, so every host
computes the same slot whatever its own clock says, and for each job whose latest slot it has not yet tried it:

1. claims the slot: `INSERT ... ON CONFLICT DO NOTHING` into djship_job_runs, whose key is (job, slot), so one host
   wins and the others see the row and do nothing;
2. takes the job's advisory lock (pg_try_advisory_lock) on the connection it keeps for the run: when the run of an
   earlier slot still holds it, on any host, the slot is marked skipped instead of starting a second copy;
3. runs the command as a child with this process's environment plus DJSHIP_HOST, DJSHIP_JOB and DJSHIP_JOB_SLOT, its
   output in this program's log, each line prefixed with the job and slot; then records the exit code and the end.

A slot may be claimed until its window closes (the interval, at most an hour), so one missed while every scheduler
was restarting (a deploy) or on a host that died is run by the next scheduler that sees it. On SIGTERM the scheduler
claims nothing more, passes SIGTERM on to the jobs it runs, records how they ended and exits.
"""

import json
import os
import signal
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import django
from django.db import Error as DatabaseError
from django.db import connection, transaction

# Fixed numbers shared by every release: the advisory lock classes of the tables' creation and of each job's run
# ("djjt", "djjb"); a job's lock is (JOB_LOCK, hashtext(name)).
TABLES_LOCK = 0x646A6A74
JOB_LOCK = 0x646A6A62
TABLES = """
CREATE TABLE IF NOT EXISTS djship_job_runs (
    job text NOT NULL,
    slot timestamptz NOT NULL,
    host text NOT NULL,
    started timestamptz,
    finished timestamptz,
    exit_code integer,
    skipped text,
    PRIMARY KEY (job, slot)
);
CREATE TABLE IF NOT EXISTS djship_jobs (
    job text PRIMARY KEY,
    since timestamptz NOT NULL DEFAULT now()
);
"""
TICK_SECONDS = 1
RETRY_SECONDS = 5


def log(text: str) -> None:
    print(text, flush=True)


def slot_name(slot: int) -> str:
    return datetime.fromtimestamp(slot, timezone.utc).strftime("%Y-%m-%dT%H:%MZ")


class Scheduler:
    def __init__(self, host: str, jobs: list[dict]):
        self.host = host
        self.jobs = jobs
        self.stopping = threading.Event()
        self.tried: dict[str, int] = {}
        self.runs: list[threading.Thread] = []
        self.children: dict[str, subprocess.Popen] = {}
        self.children_lock = threading.Lock()

    def run(self) -> None:
        while not self.stopping.is_set():
            try:
                self.prepare()
                break
            except DatabaseError as error:
                self.database_failed(error)
        while not self.stopping.is_set():
            try:
                self.start_due(self.database_time())
            except DatabaseError as error:
                self.database_failed(error)
                continue
            self.stopping.wait(TICK_SECONDS)
        self.finish()

    def prepare(self) -> None:
        """The tables (made by the first scheduler to run, under a lock so two never race), each job's first
        sighting (the doctor expects runs from then on)."""
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", [TABLES_LOCK])
            cursor.execute(TABLES)
            for job in self.jobs:
                cursor.execute("INSERT INTO djship_jobs (job) VALUES (%s) ON CONFLICT DO NOTHING", [job["name"]])
        log(f"scheduling {', '.join(job['name'] for job in self.jobs)} on {self.host}")

    def database_time(self) -> float:
        with connection.cursor() as cursor:
            cursor.execute("SELECT extract(epoch FROM clock_timestamp())::float8")
            return cursor.fetchone()[0]

    def database_failed(self, error: Exception) -> None:
        log(f"the database does not answer ({type(error).__name__}: {str(error).strip()}); retrying in "
            f"{RETRY_SECONDS} s")
        connection.close()
        self.stopping.wait(RETRY_SECONDS)

    def start_due(self, now: float) -> None:
        for job in self.jobs:
            slot = (int(now) - job["offset"]) // job["every"] * job["every"] + job["offset"]  # as plan.Job.slot
            if self.tried.get(job["name"]) == slot or now >= slot + job["window"]:
                continue
            self.tried[job["name"]] = slot
            run = threading.Thread(target=self.run_slot, args=(job, slot), name=f"{job['name']}-{slot}")
            self.runs = [thread for thread in self.runs if thread.is_alive()] + [run]
            run.start()

    def run_slot(self, job: dict, slot: int) -> None:
        """Claim the slot, and run the job unless another host claimed it or an earlier run still goes."""
        name = job["name"]
        try:
            with connection.cursor() as cursor:
                cursor.execute("INSERT INTO djship_job_runs (job, slot, host) VALUES (%s, to_timestamp(%s), %s) "
                               "ON CONFLICT DO NOTHING RETURNING 1", [name, slot, self.host])
                if cursor.fetchone() is None:
                    return
                cursor.execute("SELECT pg_try_advisory_lock(%s, hashtext(%s))", [JOB_LOCK, name])
                if not cursor.fetchone()[0]:
                    cursor.execute("UPDATE djship_job_runs SET skipped = %s WHERE job = %s AND slot = to_timestamp(%s)",
                                   ["the run of an earlier slot was still going", name, slot])
                    log(f"{name} {slot_name(slot)}: skipped, the run of an earlier slot is still going")
                    return
                try:
                    cursor.execute("UPDATE djship_job_runs SET started = clock_timestamp() "
                                   "WHERE job = %s AND slot = to_timestamp(%s)", [name, slot])
                    code = self.execute(job, slot)
                    cursor.execute("UPDATE djship_job_runs SET finished = clock_timestamp(), exit_code = %s "
                                   "WHERE job = %s AND slot = to_timestamp(%s)", [code, name, slot])
                finally:
                    cursor.execute("SELECT pg_advisory_unlock(%s, hashtext(%s))", [JOB_LOCK, name])
        except DatabaseError as error:
            log(f"{name} {slot_name(slot)}: the database failed ({type(error).__name__}: {str(error).strip()})")
            if self.tried.get(name) == slot and not self.stopping.is_set():
                self.tried.pop(name, None)  # not claimed, or its end not recorded: the next tick tries again
        finally:
            connection.close()

    def execute(self, job: dict, slot: int) -> int:
        """The job's command as a child, its output prefixed into this program's log; its exit code (-N: killed by
        signal N)."""
        name, label = job["name"], f"{job['name']} {slot_name(slot)}"
        argv = list(job["argv"])
        if argv[0] == "manage.py":
            argv.insert(0, sys.executable)
        environment = {**os.environ, "DJSHIP_HOST": self.host, "DJSHIP_JOB": name,
                       "DJSHIP_JOB_SLOT": slot_name(slot)}
        log(f"{label}: started on {self.host}: {' '.join(job['argv'])}")
        started = time.monotonic()
        try:
            child = subprocess.Popen(argv, env=environment, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True, errors="replace")
        except OSError as error:
            log(f"{label}: cannot start {argv[0]}: {error.strerror}")
            return 127
        with self.children_lock:
            self.children[name] = child
            if self.stopping.is_set():
                child.terminate()
        for line in child.stdout:
            log(f"{label}: {line.rstrip()}")
        code = child.wait()
        with self.children_lock:
            self.children.pop(name, None)
        log(f"{label}: exit {code} after {time.monotonic() - started:.1f} s")
        return code

    def stop(self, signum: int, frame: object) -> None:
        self.stopping.set()

    def finish(self) -> None:
        with self.children_lock:
            for child in self.children.values():
                child.terminate()
        for run in self.runs:
            run.join()
        log("stopped")


def main() -> None:
    definition = json.loads(Path(sys.argv[1]).read_text())
    scheduler = Scheduler(definition["host"], definition["jobs"])
    signal.signal(signal.SIGTERM, scheduler.stop)
    signal.signal(signal.SIGINT, scheduler.stop)
    django.setup()
    scheduler.run()


if __name__ == "__main__":
    main()

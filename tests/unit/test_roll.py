"""Rollout.roll, the drain -> change -> health -> rotation loop shared by deploy, rollback and restore."""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

from djship.deploy.rolling import Rollout
from djship.plan import build_plans
from djship.errors import DjshipError
from tests.unit.test_host_plans import specs


class _Reporter:
    @contextmanager
    def step(self, title):
        yield

    def note(self, text):
        pass


class _System:
    def __init__(self, plan, events):
        self.plan, self.reporter, self.events = plan, _Reporter(), events

    @contextmanager
    def out_of_rotation(self, servers):
        self.events.append(("drain", tuple(s.name for s in servers)))
        try:
            yield
        finally:
            self.events.append(("ready", tuple(s.name for s in servers)))


def test_every_server_is_changed_out_of_rotation_a_batch_at_a_time(make_plan):
    events = []
    busy = threading.Lock()

    def apply(server):  # one machine's servers share its files: never two at once
        assert busy.acquire(blocking=False), f"{server.name} changed while another server of its host was"
        time.sleep(0.05)
        events.append(("apply", server.name))
        busy.release()

    rollout = Rollout(_System(make_plan(app={"servers": 3}, deploy={"batch_size": 2}), events))
    rollout.roll("database board_1", apply, lambda s: events.append(("revert", s.name)))
    assert events[0] == ("drain", ("app1", "app2")) and sorted(events[1:3]) == [("apply", "app1"), ("apply", "app2")]
    assert events[3:] == [("ready", ("app1", "app2")), ("drain", ("app3",)), ("apply", "app3"), ("ready", ("app3",))]


def test_the_servers_of_a_batch_on_different_hosts_change_at_once(make_config, fake_tools):
    plan = build_plans(make_config(deploy={"batch_size": 2}), Path("/srv/example/board"), specs(fake_tools))["lb1"]
    events = []
    together = threading.Barrier(2, timeout=10)  # app1 and app2 each wait for the other: only at once passes

    def apply(server):
        together.wait()
        events.append(("apply", server.name))

    Rollout(_System(plan, events)).roll("release 2", apply, lambda s: events.append(("revert", s.name)))
    assert events[0] == ("drain", ("app1", "app2")) and sorted(events[1:3]) == [("apply", "app1"), ("apply", "app2")]
    assert events[3:] == [("ready", ("app1", "app2"))]


def test_a_failure_in_a_batch_returns_every_server_of_the_batch(make_plan):
    events = []

    def apply(server):
        events.append(("apply", server.name))
        if server.name == "app2":
            raise DjshipError("boom")

    rollout = Rollout(_System(make_plan(app={"servers": 3}, deploy={"batch_size": 2}), events))
    with pytest.raises(DjshipError, match=r"^release 2 failed on app2: boom$"):
        rollout.roll("release 2", apply, lambda server: events.append(("revert", server.name)))
    assert sorted(events[1:3]) == [("apply", "app1"), ("apply", "app2")]
    assert events[3:] == [("revert", "app1"), ("revert", "app2"), ("ready", ("app1", "app2"))]  # app3 untouched


def test_a_failure_reverts_its_batch_and_then_every_earlier_batch_out_of_rotation(make_plan):
    plan = make_plan(app={"servers": 3})
    events = []
    rollout = Rollout(_System(plan, events))

    def apply(server):
        events.append(("apply", server.name))
        if server.name == "app3":
            raise DjshipError("boom")

    with pytest.raises(DjshipError, match=r"^release 2 failed on app3: boom$"):
        rollout.roll("release 2", apply, lambda server: events.append(("revert", server.name)))
    assert events == [
        ("drain", ("app1",)), ("apply", "app1"), ("ready", ("app1",)),
        ("drain", ("app2",)), ("apply", "app2"), ("ready", ("app2",)),
        ("drain", ("app3",)), ("apply", "app3"), ("revert", "app3"), ("ready", ("app3",)),
        ("drain", ("app2",)), ("revert", "app2"), ("ready", ("app2",)),
        ("drain", ("app1",)), ("revert", "app1"), ("ready", ("app1",)),
    ]

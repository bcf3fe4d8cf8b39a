"""The users of the components on a host: made once through the connector (useradd, also when another host sharing
/etc/passwd makes the same one at once), and a data directory PostgreSQL's user does not own named before it fails."""

from __future__ import annotations

import pytest

from djship.components.database import DatabaseServer
from djship.connectors import Result
from djship.errors import DjshipError
from djship.system import ensure_users


class Accounts:
    """A host's connector as far as users go: `id -u` and `useradd` against a set of users; `stat -c %U` of any path
    answers the data directory's owner."""

    def __init__(self, existing: set[str], made_elsewhere: set[str] = frozenset(), refuses: bool = False,
                 data_owner: str = "djship-db"):
        self.users = set(existing)
        self.made_elsewhere = made_elsewhere
        self.refuses = refuses
        self.data_owner = data_owner
        self.added: list[str] = []

    def run(self, argv, **options) -> Result:
        if argv[:2] == ["id", "-u"]:
            return Result(tuple(argv), 0 if argv[2] in self.users else 1, "", "")
        if argv[0] == "useradd":
            user = argv[-1]
            if user in self.made_elsewhere:  # another host made it just now
                self.users.add(user)
                return Result(tuple(argv), 9, "", f"useradd: user '{user}' already exists\n")
            if self.refuses:
                return Result(tuple(argv), 1, "", "useradd: cannot lock /etc/passwd; try again later.\n")
            self.users.add(user)
            self.added.append(user)
            return Result(tuple(argv), 0, "", "")
        if argv[:3] == ["stat", "-c", "%U"]:
            return Result(tuple(argv), 0, f"{self.data_owner}\n", "")
        raise AssertionError(f"unexpected command {argv}")


def test_each_missing_user_of_the_hosts_components_is_made_once(make_plan):
    plan = make_plan(running_as_root=True)
    accounts = Accounts(existing={"djship-web"})
    ensure_users(plan, accounts)
    ensure_users(plan, accounts)
    assert accounts.added == ["djship-app", "djship-db", "djship-lb"]


def test_a_user_another_host_made_at_the_same_time_is_taken(make_plan):
    accounts = Accounts(existing=set(), made_elsewhere={"djship-app"})
    ensure_users(make_plan(running_as_root=True), accounts)
    assert accounts.users == {"djship-app", "djship-web", "djship-db", "djship-lb"}


def test_a_user_that_cannot_be_made_is_one_line(make_plan):
    with pytest.raises(DjshipError, match=r"^cannot create the system user djship-app: useradd: cannot lock /etc/passwd"):
        ensure_users(make_plan(running_as_root=True), Accounts(existing=set(), refuses=True))


def test_without_root_no_user_is_made(make_plan):
    accounts = Accounts(existing=set(), refuses=True)
    ensure_users(make_plan(running_as_root=False), accounts)
    assert accounts.users == set()


def test_a_data_directory_an_earlier_djship_gave_its_one_user_is_named_with_the_fix(make_plan):
    plan = make_plan(running_as_root=True)
    DatabaseServer(plan, Accounts(existing=set())).check_owner()
    with pytest.raises(DjshipError) as raised:
        DatabaseServer(plan, Accounts(existing=set(), data_owner="djship")).check_owner()
    data = plan.database.data_dir
    assert str(raised.value) == (
        f"PostgreSQL's data directory {data} belongs to djship, not to its user djship-db (users.db); run "
        f"`djship down`, then `chown -R djship-db: {data.parent}` and `djship up`")
    DatabaseServer(make_plan(running_as_root=False), Accounts(existing=set(), data_owner="someone")).check_owner()


def test_useradd_is_tried_again_while_another_holds_the_passwd_lock(monkeypatch):
    from djship.components import accounts
    from djship.connectors import Result

    answers = [Result(("useradd",), 1, "", "useradd: cannot lock /etc/passwd; try again later.\n")] * 2 + [
        Result(("useradd",), 0, "", "")]

    class Connector:
        calls = 0

        def run(self, argv):
            Connector.calls += 1
            return answers[Connector.calls - 1]

    monkeypatch.setattr(accounts, "LOCK_WAIT", 0)
    assert accounts.change_users(Connector(), ["useradd", "x"]).ok and Connector.calls == 3
    refused = Result(("useradd",), 9, "", "useradd: user 'x' already exists\n")
    assert accounts.change_users(type("C", (), {"run": lambda self, argv: refused})(), ["useradd", "x"]) is refused

"""Redis ([redis]): whether it answers PING with the password, asked from a host of the topology; a snapshot of its
data for a backup ([redis] backup), and loading one back."""

from __future__ import annotations

from pathlib import Path

from djship.connectors import Connector
from djship.errors import DjshipError
from djship.plan import Plan, Redis
from djship.waiting import wait_until

SNAPSHOT_TIMEOUT = 600

# Run with a host's Python: AUTH with the password read from stdin (never on a command line), then PING; prints
# Redis's two replies, or why it could not connect. With a third argument, over TLS verified against that CA file.
PING = r"""
import socket, ssl, sys
address, port = sys.argv[1], int(sys.argv[2])
password = sys.stdin.readline().rstrip("\n").encode()
command = lambda *words: b"*%d\r\n" % len(words) + b"".join(b"$%d\r\n%s\r\n" % (len(w), w) for w in words)
try:
    with socket.create_connection((address, port), timeout=5) as plain, (
            ssl.create_default_context(cafile=sys.argv[3]).wrap_socket(plain, server_hostname=address)
            if len(sys.argv) > 3 else plain) as connection:
        connection.sendall(command(b"AUTH", password) + command(b"PING"))
        replies = b""
        while replies.count(b"\r\n") < 2:
            chunk = connection.recv(4096)
            if not chunk:
                break
            replies += chunk
    print(" ".join(line.decode() for line in replies.split(b"\r\n") if line))
except OSError as error:
    print(error.strerror or error)
"""


def ping(plan: Plan, connector: Connector, redis: Redis, password: str) -> str:
    """What Redis answered AUTH and PING from this host ("+OK +PONG" when all is well), or why it did not."""
    ca = [str(plan.paths.ca_cert)] if redis.tls else []
    try:
        result = connector.run([plan.tools.python, "-c", PING, redis.address, str(redis.port), *ca],
                               input=password + "\n", timeout=30)
    except DjshipError as error:
        return str(error)
    return result.stdout.strip() or result.stderr.strip() or f"exit code {result.returncode}"


def answers(reply: str) -> bool:
    return reply == "+OK +PONG"


def wait_ready(plan: Plan, connector: Connector, password: str, timeout: float) -> None:
    redis = plan.redis

    def ready() -> tuple[bool, str]:
        reply = ping(plan, connector, redis, password)
        return answers(reply), f"Redis on {redis.endpoint} answered {reply!r}"

    wait_until(f"Redis on {redis.endpoint}", ready, timeout, "see `djship logs redis`")


# $1 the snapshot to write, $2 the address, $3 the port, then redis-cli's TLS options; the password is read from
# stdin (never on a command line).
_SNAPSHOT = 'IFS= read -r REDISCLI_AUTH && export REDISCLI_AUTH && target=$1 address=$2 port=$3 && shift 3 && ' \
            'exec redis-cli --no-auth-warning -h "$address" -p "$port" "$@" --rdb "$target"'


def snapshot(plan: Plan, connector: Connector, password: str, target: Path) -> None:
    """Redis's data as one RDB file at target on this host: redis-cli --rdb asks Redis for it the way a replica
    does, so Redis forks and writes a consistent snapshot while it goes on serving."""
    redis = plan.redis
    tls = ["--tls", "--cacert", str(plan.paths.ca_cert)] if redis.tls else []
    result = connector.run(["sh", "-c", _SNAPSHOT, "snapshot", str(target), redis.address, str(redis.port), *tls],
                           input=password + "\n", timeout=SNAPSHOT_TIMEOUT)
    if not result.ok:
        reason = (result.stderr.strip() or result.stdout.strip() or f"exit code {result.returncode}").splitlines()[-1]
        raise DjshipError(f"cannot take a snapshot of Redis on {redis.endpoint}: {reason}")


# As the redis user, in the data directory that holds only the snapshot as dump.rdb: a redis-server of its own (no
# TCP port, a unix socket in that directory) loads it with the AOF off, then turns the AOF on, which writes the
# data anew as the AOF, and shuts down once that is done. The supervised redis-server then starts from that AOF.
# Redis's own way to move an RDB under an AOF (the AOF takes precedence when both are there).
# $1 redis.conf, $2 the data directory; the password on stdin.
_LOAD = r'''
IFS= read -r REDISCLI_AUTH && export REDISCLI_AUTH
socket="$2/restore.sock"
redis-server "$1" --port 0 --tls-port 0 --unixsocket "$socket" --unixsocketperm 700 --appendonly no &
server=$!
ask() { redis-cli --no-auth-warning -s "$socket" "$@"; }
tries=0
until [ "$(ask PING 2>/dev/null)" = PONG ]; do
  tries=$((tries + 1)); [ "$tries" -lt 600 ] || { kill "$server"; echo "redis-server did not load the snapshot"; exit 1; }
  kill -0 "$server" 2>/dev/null || { echo "redis-server could not load the snapshot"; exit 1; }
  sleep 0.1
done
[ "$(ask CONFIG SET appendonly yes)" = OK ] || { kill "$server"; echo "Redis refused to turn the AOF on"; exit 1; }
until ask INFO persistence | grep -q '^aof_rewrite_in_progress:0' && \
      ask INFO persistence | grep -q '^aof_rewrite_scheduled:0'; do sleep 0.1; done
ask INFO persistence | grep -q '^aof_last_bgrewrite_status:ok' || { kill "$server"; echo "the AOF was not written"; exit 1; }
ask SHUTDOWN >/dev/null 2>&1
wait "$server"
rm -f "$socket"
'''


def load(plan: Plan, connector: Connector, password: str, snapshot_file: Path) -> None:
    """Make snapshot_file (already moved to <data>/dump.rdb, the data directory otherwise new and empty) the data the
    supervised Redis starts with. Redis must be stopped."""
    redis = plan.redis
    result = connector.run(["sh", "-c", _LOAD, "load", str(redis.conf), str(redis.data_dir)], input=password + "\n",
                           user=plan.user_of("redis"), cwd=redis.data_dir, timeout=SNAPSHOT_TIMEOUT)
    if not result.ok:
        reason = (result.stdout.strip() or result.stderr.strip() or f"exit code {result.returncode}").splitlines()[-1]
        raise DjshipError(f"cannot load {snapshot_file.name} into Redis on {redis.host}: {reason}")

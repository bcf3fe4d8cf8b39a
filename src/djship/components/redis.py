"""Redis ([redis]): whether it answers PING with the password, asked from a host of the topology."""

from __future__ import annotations

from djship.connectors import Connector
from djship.errors import DjshipError
from djship.plan import Plan, Redis
from djship.waiting import wait_until

# Run with a host's Python: AUTH with the password read from stdin (never on a command line), then PING; prints
# Redis's two replies, or why it could not connect.
PING = r"""
import socket, sys
address, port = sys.argv[1], int(sys.argv[2])
password = sys.stdin.readline().rstrip("\n").encode()
command = lambda *words: b"*%d\r\n" % len(words) + b"".join(b"$%d\r\n%s\r\n" % (len(w), w) for w in words)
try:
    with socket.create_connection((address, port), timeout=5) as connection:
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
    try:
        result = connector.run([plan.tools.python, "-c", PING, redis.address, str(redis.port)], input=password + "\n",
                               timeout=30)
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

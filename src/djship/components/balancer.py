"""HAProxy's runtime API: what the balancer thinks of each app server."""

from __future__ import annotations

import base64
import csv
import io
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from djship.components.probe import Response, request
from djship.connectors import Connector
from djship.errors import DjshipError
from djship.tls import local_ca
from djship.waiting import wait_until

BACKEND = "app_servers"
FRONTEND = "https"
# Mozilla's "intermediate" key exchange groups (guidelines 6.0), in its order: the post-quantum hybrid first.
INTERMEDIATE_CURVES = ("X25519MLKEM768", "X25519", "prime256v1", "secp384r1")
# Run on a balancer host with sh: argv the haproxy binary and the groups, a throwaway certificate and key on stdin;
# prints each group this HAProxy and its OpenSSL accept (`haproxy -c` of a TLS listener offering it alone; all at once).
CURVES_PROBE = """
haproxy=$1; shift
dir=$(mktemp -d) || exit 1
trap 'rm -rf "$dir"' EXIT
cat > "$dir/probe.pem"
for curve in "$@"; do
    printf 'global\\n    ssl-default-bind-curves %s\\nfrontend probe\\n    mode http\\n    bind 127.0.0.1:1 ssl crt %s\\n' \\
        "$curve" "$dir/probe.pem" > "$dir/$curve.cfg"
    { "$haproxy" -c -q -f "$dir/$curve.cfg" >/dev/null 2>&1 && echo "$curve"; } &
done
wait
"""


def accepted_curves(connector: Connector, haproxy: str) -> tuple[str, ...]:
    """The groups of INTERMEDIATE_CURVES that the host's HAProxy accepts, as its OpenSSL has them."""
    bundle = local_ca.issue_site_certificate(local_ca.new_authority("curve probe"), ("localhost",))
    result = connector.run(["sh", "-c", CURVES_PROBE, "sh", haproxy, *INTERMEDIATE_CURVES], input=bundle.decode(),
                           timeout=60)
    accepted = set(result.stdout.split())
    return tuple(curve for curve in INTERMEDIATE_CURVES if curve in accepted)


@dataclass(frozen=True)
class ServerState:
    name: str
    status: str
    check: str
    sessions: int


def parse_stat(output: str, backend: str = BACKEND) -> dict[str, ServerState]:
    """Parse the CSV of HAProxy's `show stat` into the servers of one backend."""
    text = output.lstrip("# ")
    servers = {}
    for row in csv.DictReader(io.StringIO(text)):
        if row.get("pxname") != backend or row.get("svname") in ("FRONTEND", "BACKEND"):
            continue
        servers[row["svname"]] = ServerState(
            name=row["svname"], status=row["status"], check=row.get("check_status", ""), sessions=int(row["scur"] or 0)
        )
    return servers


@dataclass(frozen=True)
class Traffic:
    """What a balancer answered over HTTPS, by HAProxy's own counters of its https frontend."""

    requests: int
    failed: int
    """5xx answers: from an app server, or HAProxy's own 502/503/504 when none could answer."""
    restarted: bool = False
    """A new HAProxy worker (a reload) began counting from zero meanwhile: the figures are a lower bound."""

    def since(self, earlier: Traffic) -> Traffic:
        if self.requests < earlier.requests or self.failed < earlier.failed:
            return Traffic(self.requests, self.failed, restarted=True)
        return Traffic(self.requests - earlier.requests, self.failed - earlier.failed)

    def __add__(self, other: Traffic) -> Traffic:
        return Traffic(self.requests + other.requests, self.failed + other.failed, self.restarted or other.restarted)

    def line(self, during: str) -> str:
        """E.g. "12,404 requests during the deploy, 0 failed"."""
        counted = f"{'at least ' if self.restarted else ''}{self.requests:,} requests during {during}"
        reloaded = " (the balancer reloaded, which restarts its counters)" if self.restarted else ""
        return f"{counted}, {self.failed:,} failed{reloaded}"


def parse_traffic(output: str, frontend: str = FRONTEND) -> Traffic:
    """The https frontend's request and 5xx counters from the CSV of `show stat`; zero when it is not listed."""
    for row in csv.DictReader(io.StringIO(output.lstrip("# "))):
        if row.get("pxname") == frontend and row.get("svname") == "FRONTEND":
            return Traffic(int(row.get("req_tot") or 0), int(row.get("hrsp_5xx") or 0))
    return Traffic(0, 0)


def runtime_command(socket_path: Path, command: str, timeout: float = 5) -> str:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as connection:
        connection.settimeout(timeout)
        connection.connect(str(socket_path))
        connection.sendall(command.encode() + b"\n")
        chunks = []
        while chunk := connection.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks).decode()


# The runtime API client that runs on a balancer host (its Python's standard library only): argv socket timeout,
# the command on stdin, the answer on stdout; exit 3 with the reason when the socket does not answer.
REMOTE_CLIENT = """
import socket, sys
connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
connection.settimeout(float(sys.argv[2]))
try:
    connection.connect(sys.argv[1])
    connection.sendall(sys.stdin.buffer.read())
    while chunk := connection.recv(65536):
        sys.stdout.buffer.write(chunk)
except OSError as error:
    sys.stderr.write(error.strerror or str(error))
    sys.exit(3)
"""


def remote_sender(connector: Connector, python: str, socket_path: Path) -> Callable[[str, float], str]:
    """Send runtime API commands to the HAProxy of another host, through its connector."""

    def send(command: str, timeout: float) -> str:
        result = connector.run([python, "-c", REMOTE_CLIENT, str(socket_path), str(timeout)], input=command + "\n",
                               timeout=timeout + 15)
        if not result.ok:
            raise OSError(0, result.stderr.strip() or f"exit code {result.returncode}")
        return result.stdout

    return send


class Balancer:
    """Changes to the running HAProxy through its runtime API: no reload, no dropped connection."""

    def __init__(self, socket_path: Path, send: Callable[[str, float], str] | None = None):
        """send: how a command reaches the socket; None: this machine's unix socket."""
        self.socket_path = socket_path
        self._send = send or (lambda command, timeout: runtime_command(socket_path, command, timeout))

    def _command(self, command: str) -> None:
        try:
            answer = self._send(command, 5).strip()
        except OSError as error:
            raise DjshipError(f"the load balancer's runtime API does not answer ({error.strerror}); is it running?") from None
        if answer:
            raise DjshipError(f"the load balancer refused `{command}`: {answer.splitlines()[0]}")

    def set_state(self, server: str, state: str) -> None:
        """state: ready (in rotation), drain (no new requests), maint (out)."""
        self._command(f"set server {BACKEND}/{server} state {state}")

    def set_health(self, server: str, health: str) -> None:
        """health: up, stopping or down, as if the checks had found it (they go on and may change it again)."""
        self._command(f"set server {BACKEND}/{server} health {health}")

    def add_map_entries(self, map_file: Path, entries: dict[str, str]) -> None:
        for key, value in entries.items():
            self._command(f"add map {map_file} {key} {value}")

    def delete_map_entries(self, map_file: Path, keys: list[str]) -> None:
        for key in keys:
            self._command(f"del map {map_file} {key}")

    def replace_certificate(self, cert_file: Path, bundle: bytes, ocsp_response: bytes | None) -> None:
        """Swap the certificate of `bind ... crt cert_file` (and the OCSP response it staples) in memory: new
        handshakes get it, no connection drops."""
        steps = [(f"set ssl cert {cert_file} <<\n{bundle.decode().strip()}\n", "Transaction")]
        if ocsp_response:
            steps.append((f"set ssl cert {cert_file}.ocsp <<\n{base64.b64encode(ocsp_response).decode()}\n", "Transaction"))
        steps.append((f"commit ssl cert {cert_file}", "Success!"))
        for command, expected in steps:
            try:
                answer = self._send(command, 30)
            except OSError as error:
                raise DjshipError(f"the load balancer's runtime API does not answer ({error.strerror}); is it running?") from None
            if expected not in answer:
                try:  # leave no transaction open; the certificate being served stays as it was
                    self._send(f"abort ssl cert {cert_file}", 5)
                except OSError:
                    pass
                reason = next((line for line in answer.splitlines() if line.strip()), "no answer")
                raise DjshipError(f"the load balancer refused the new certificate for {cert_file}: {reason}")

    def states(self) -> dict[str, ServerState]:
        """The balancer's view of every app server; empty when HAProxy is not answering."""
        try:
            return parse_stat(self._send("show stat", 5))
        except OSError:
            return {}

    def traffic(self) -> Traffic | None:
        """Its counters since it started; None when HAProxy is not answering."""
        try:
            return parse_traffic(self._send("show stat", 5))
        except OSError:
            return None

    def wait_drained(self, server: str, timeout: float) -> None:
        """Wait until no request is in flight on the server; past the timeout the server is restarted anyway."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            state = self.states().get(server)
            if state is None or state.sessions == 0:
                return
            time.sleep(0.1)

    def wait_status(self, server: str, status: str, timeout: float) -> None:
        def seen() -> tuple[bool, str]:
            state = self.states().get(server)
            return state is not None and state.status == status, f"the balancer sees it {state.status if state else 'not listed'}"

        wait_until(f"{server} as {status} in the load balancer", seen, timeout)


def https_probe(address: str, port: int, host_name: str, path: str, certificate: bytes, timeout: float = 5) -> int | None:
    """GET path over HTTPS from the balancer, which must present exactly this certificate (DER) for host_name.

    Returns the HTTP status, or None when no response came back with that certificate.
    """
    answer = request(address, port, f"{host_name}:{port}", "GET", path, tls_name=host_name, pinned=certificate,
                     headers={"Connection": "close"}, timeout=timeout)
    return answer.status if isinstance(answer, Response) else None

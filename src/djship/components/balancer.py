"""HAProxy's runtime API: what the balancer thinks of each app server."""

from __future__ import annotations

import csv
import io
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path

BACKEND = "app_servers"


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


def runtime_command(socket_path: Path, command: str, timeout: float = 5) -> str:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as connection:
        connection.settimeout(timeout)
        connection.connect(str(socket_path))
        connection.sendall(command.encode() + b"\n")
        chunks = []
        while chunk := connection.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks).decode()


def server_states(socket_path: Path) -> dict[str, ServerState]:
    """The balancer's view of every app server; empty when HAProxy is not answering."""
    try:
        return parse_stat(runtime_command(socket_path, "show stat"))
    except OSError:
        return {}


def https_probe(address: str, port: int, host_name: str, path: str, ca_file: Path, timeout: float = 5) -> int | None:
    """GET path over HTTPS from the balancer, verifying its certificate for host_name against ca_file.

    Returns the HTTP status, or None when no verified response came back.
    """
    context = ssl.create_default_context(cafile=str(ca_file))
    try:
        with socket.create_connection((address, port), timeout=timeout) as raw:
            with context.wrap_socket(raw, server_hostname=host_name) as tls:
                tls.sendall(f"GET {path} HTTP/1.1\r\nHost: {host_name}:{port}\r\nConnection: close\r\n\r\n".encode())
                status_line = tls.recv(64).split(b"\r\n", 1)[0].decode(errors="replace")
    except (OSError, ssl.SSLError):
        return None
    parts = status_line.split()
    return int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else None

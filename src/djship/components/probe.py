"""One HTTP(S) request to a given address with a given Host header: how djship probes the balancer and the app
servers (never through DNS, so a site's real domain can be checked on the machine that serves it)."""

from __future__ import annotations

import http.client
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Response:
    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes

    def header(self, name: str) -> str | None:
        return next((value for key, value in self.headers if key.lower() == name.lower()), None)

    def cookies(self) -> dict[str, str]:
        cookies = {}
        for key, value in self.headers:
            if key.lower() == "set-cookie":
                cookie_name, _, rest = value.partition("=")
                cookies[cookie_name.strip()] = rest.split(";", 1)[0]
        return cookies


def describe_error(error: BaseException) -> str:
    """An OS, TLS or HTTP error as a short text (TLS verification failures say why)."""
    if isinstance(error, ssl.SSLCertVerificationError):
        return f"TLS verification failed: {error.verify_message}"
    return getattr(error, "strerror", None) or str(error) or type(error).__name__


def request(
    address: str, port: int, host: str, method: str, path: str, *, tls_name: str | None = None,
    ca_file: Path | None = None, pinned: bytes | None = None, headers: dict[str, str] | None = None,
    body: bytes | None = None, timeout: float = 10,
) -> Response | str:
    """One HTTP request to address:port with this Host header, over TLS when tls_name is given: verified for
    tls_name against ca_file (None: the system's trust store), or, with pinned, only to a server presenting exactly
    that certificate (DER), whoever issued it. The answer, or what went wrong as text."""
    connection = http.client.HTTPConnection(address, port, timeout=timeout)
    try:
        if tls_name:
            raw = socket.create_connection((address, port), timeout=timeout)
            if pinned is None:
                context = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
            else:
                context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
            connection.sock = context.wrap_socket(raw, server_hostname=tls_name)
            if pinned is not None and connection.sock.getpeercert(binary_form=True) != pinned:
                return "the server presents another certificate than the one expected"
        connection.request(method, path, body=body, headers={"Host": host, **(headers or {})})
        answer = connection.getresponse()
        return Response(answer.status, tuple(answer.getheaders()), answer.read(200_000))
    except (OSError, ssl.SSLError, http.client.HTTPException) as error:
        return describe_error(error)
    finally:
        connection.close()

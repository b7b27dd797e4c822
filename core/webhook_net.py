"""Calling a webhook URL without becoming a proxy into the service's own network.

A webhook URL is chosen by the client, and the worker that calls it sits inside the
operator's network: next to Redis, cloud metadata endpoints (169.254.169.254) and private
services. So the call is made in a way that cannot be steered there:

- only ``http`` and ``https`` URLs, without user info;
- the host is resolved once, every address it resolves to must be public (or inside a
  network that ``CONVOY_WEBHOOK_ALLOW`` names), and the connection goes to that checked
  address, not to a second lookup of the name (which could answer differently);
- redirects are not followed; connect and read timeouts bound the call; the response body
  is read up to ``MAX_RESPONSE_BYTES`` and dropped.

The resolver and the connector are arguments, so tests prove a refusal by recording the
attempts of a stub instead of connecting anywhere.
"""

from __future__ import annotations

import http.client
import ipaddress
import socket
import ssl
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

MAX_RESPONSE_BYTES = 4096
Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Resolver = Callable[[str, int], list[str]]  # (host, port) → addresses
Connector = Callable[[str, int, float], socket.socket]  # (address, port, timeout) → socket
# Cloud metadata endpoints that are not already link-local (AWS's IPv6 one is a ULA).
METADATA = (ipaddress.ip_network("169.254.169.254/32"), ipaddress.ip_network("fd00:ec2::254/128"),
            ipaddress.ip_network("100.100.100.200/32"))


class Refused(ValueError):
    """A webhook URL or address this service does not call."""


@dataclass(frozen=True)
class Target:
    scheme: str
    host: str
    port: int
    path: str  # with the query


@dataclass(frozen=True)
class Reply:
    status: int
    body: bytes  # at most MAX_RESPONSE_BYTES


def networks(allow: Iterable[str]) -> list[Network]:
    """The allowlist setting as networks ('127.0.0.1' is '127.0.0.1/32')."""
    out: list[Network] = []
    for item in allow:
        try:
            out.append(ipaddress.ip_network(item.strip(), strict=False))
        except ValueError as e:
            raise ValueError(f"CONVOY_WEBHOOK_ALLOW: {item!r} is not an address or network") from e
    return out


def parse(url: str) -> Target:
    """The parts of a webhook URL; Refused unless it is http(s) with a host and no user info."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as e:
        raise Refused(f"webhook is not a valid URL: {e}") from e
    if parts.scheme not in ("http", "https"):
        raise Refused("webhook must be an http or https URL")
    if not parts.hostname:
        raise Refused("webhook URL has no host")
    if parts.username is not None or parts.password is not None:
        raise Refused("webhook URL must not carry user info")
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return Target(parts.scheme, parts.hostname, port or (443 if parts.scheme == "https" else 80),
                  path)


def refusal(address: str, allow: list[Network]) -> str | None:
    """Why an address is not called (None: it is). Allowlisted networks always are."""
    ip: Address = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if any(ip in net for net in allow):
        return None
    if any(ip in net for net in METADATA):
        return "a cloud metadata address"
    for what, hit in (("a loopback", ip.is_loopback), ("a link-local", ip.is_link_local),
                      ("a multicast", ip.is_multicast), ("a private", ip.is_private),
                      ("an unspecified", ip.is_unspecified), ("a reserved", ip.is_reserved)):
        if hit:
            return f"{what} address"
    if not ip.is_global:
        return "not a public address"
    return None


def check_literal(url: str, allow: list[Network]) -> None:
    """At submission: Refused for a URL that is not http(s), or whose host is an address (or
    'localhost') that would be refused. Names are resolved only when the call is made."""
    target = parse(url)
    host = target.host
    if host.lower() == "localhost" or host.lower().endswith(".localhost"):
        host = "127.0.0.1"
    try:
        ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return  # a name
    why = refusal(host, allow)
    if why is not None:
        raise Refused(f"webhook host {target.host} is {why}; set CONVOY_WEBHOOK_ALLOW to "
                      "allow it")


def resolve(host: str, port: int) -> list[str]:
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def connect(address: str, port: int, timeout: float) -> socket.socket:
    return socket.create_connection((address, port), timeout=timeout)


def post(url: str, body: bytes, headers: dict[str, str], allow: list[Network], *,
         connect_timeout: float = 5.0, read_timeout: float = 10.0,
         resolver: Resolver = resolve, connector: Connector = connect) -> Reply:
    """POST ``body`` to ``url`` once, by the rules above. Refused before any connection for
    a URL or address the rules refuse; OSError (timeouts included) for a failed call."""
    target = parse(url)
    try:
        addresses = resolver(target.host, target.port)
    except OSError as e:
        raise OSError(f"cannot resolve {target.host}: {e}") from e
    if not addresses:
        raise OSError(f"{target.host} resolves to no address")
    for address in addresses:
        why = refusal(address, allow)
        if why is not None:
            raise Refused(f"{target.host} resolves to {address}, {why}")
    sock = connector(addresses[0], target.port, connect_timeout)
    try:
        sock.settimeout(read_timeout)
        if target.scheme == "https":
            sock = ssl.create_default_context().wrap_socket(sock, server_hostname=target.host)
        conn = http.client.HTTPConnection(target.host, target.port, timeout=read_timeout)
        conn.sock = sock  # the checked address: http.client does not connect again
        conn.request("POST", target.path, body=body, headers=headers)
        response = conn.getresponse()
        return Reply(response.status, response.read(MAX_RESPONSE_BYTES))
    except http.client.HTTPException as e:
        raise OSError(f"bad HTTP response: {e!r}") from e
    finally:
        sock.close()

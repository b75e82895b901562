"""Where a model download may connect: the scheme and address rules, and a connection pinned to the checked address.

Every URL a person types (and every redirect a server answers with) is hostile. A host name is resolved once,
every address it resolves to is checked, and the connection is made to that checked address, never to the
name again: a DNS answer that changes between the check and the connect (rebinding) cannot move the download
onto this machine or the local network. The peer of the connected socket is checked once more before a byte is
sent. Proxy variables from the environment are not used, for the same reason.

Refused unless `--allow-private-downloads`: loopback, private (RFC 1918, fc00::/7), link-local (cloud metadata
at 169.254.169.254), shared (100.64/10), multicast, reserved and unspecified addresses, and IPv6 forms that
carry one of those (IPv4-mapped, 6to4, Teredo, NAT64). Plain http only with that flag and only to such an
address (a mirror on this machine or the local network); the public internet is https only.
"""

from __future__ import annotations

import http.client
import ipaddress
import re
import socket
import ssl
import urllib.parse
from dataclasses import dataclass
from typing import Any

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

SCHEMES = ("https", "http")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


class DownloadRefused(ValueError):
    """A download that may not happen; the message names why, for the person who asked."""


@dataclass(frozen=True)
class Target:
    """One checked hop: the URL as given, its parts, and the address the connection must go to."""

    url: str
    scheme: str
    host: str
    port: int
    path: str  # path and query, as sent in the request line
    address: IPAddress


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 transition form carries, which is where packets really go."""
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip.teredo is not None:
        return ip.teredo[1]
    if ip in _NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def non_public_reason(ip: IPAddress) -> str | None:
    """Why `ip` is not a public internet address ("a loopback address", ...), or None when it is one."""
    if isinstance(ip, ipaddress.IPv6Address):
        inner = _embedded_ipv4(ip)
        if inner is not None:
            return non_public_reason(inner)
    for attr, words in (("is_loopback", "a loopback address (this machine)"),
                        ("is_unspecified", "an unspecified address"),
                        ("is_link_local", "a link-local address"),
                        ("is_multicast", "a multicast address"),
                        ("is_private", "a private network address"),
                        ("is_reserved", "a reserved address")):
        if getattr(ip, attr):
            return words
    if not ip.is_global:  # 100.64/10 (carrier NAT), 192.0.0/24, and whatever the ipaddress tables add
        return "not a public internet address"
    return None


@dataclass(frozen=True)
class Policy:
    """What a download may do; `from_cmd_opts` builds the one the flags ask for."""

    allow_private: bool = False
    max_bytes: int = 30 * 1024**3
    max_redirects: int = 5
    timeout_s: float = 30.0  # connect and each read: a server that stops sending fails, not hangs

    def address_refusal(self, ip: IPAddress) -> str | None:
        reason = non_public_reason(ip)
        if reason is None or self.allow_private:
            return None
        return f"{ip} is {reason}; downloads from it need --allow-private-downloads"

    def scheme_refusal(self, scheme: str, ip: IPAddress) -> str | None:
        if scheme == "https":
            return None
        if scheme == "http" and self.allow_private and non_public_reason(ip) is not None:
            return None  # a mirror on this machine or the local network, which the person allowed
        return "plain http is only allowed to this machine or the local network with --allow-private-downloads; " \
               "use https"


def ip_literal(host: str) -> IPAddress | None:
    """The address a host written as an IP is, in any spelling the C library accepts (0177.0.0.1, 2130706433,
    127.1, 0x7f.1): judged by the address it means, not by how it is written. None for a host name."""
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    if re.fullmatch(r"(0[xX][0-9a-fA-F]*|[0-9]+)(\.(0[xX][0-9a-fA-F]*|[0-9]+)){0,3}", host):
        try:
            return ipaddress.IPv4Address(socket.inet_aton(host))
        except OSError:
            return None
    return None


def resolve(host: str, port: int) -> list[IPAddress]:
    """Every address `host` resolves to (an IP literal is itself: no look-up)."""
    literal = ip_literal(host)
    if literal is not None:
        return [literal]
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise DownloadRefused(f"cannot resolve the host {host!r}: {e.strerror or e}") from None
    found: list[IPAddress] = []
    for info in infos:
        ip = ipaddress.ip_address(str(info[4][0]).split("%", 1)[0])  # drop an IPv6 zone id
        if ip not in found:
            found.append(ip)
    if not found:
        raise DownloadRefused(f"the host {host!r} resolves to no address")
    return found


def check_url(url: str, policy: Policy) -> Target:
    """Parse and check one URL (the first, or a redirect's); resolve its host once. Raises DownloadRefused."""
    url = url.strip()
    if any(ord(c) < 0x21 or c == "\x7f" for c in url):
        raise DownloadRefused("the URL contains spaces or control characters")
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError as e:
        raise DownloadRefused(f"not a valid URL: {e}") from None
    scheme = parts.scheme.lower()
    if scheme not in SCHEMES:
        shown = f"{scheme}:" if scheme else "a URL without a scheme"
        raise DownloadRefused(f"{shown} is not allowed for downloads; only https (and http to a local mirror)")
    host = parts.hostname or ""
    if not host:
        raise DownloadRefused("the URL has no host")
    if parts.username is not None or parts.password is not None:
        raise DownloadRefused("user names or passwords in the URL are not allowed")
    if "%" in host or not all(c.isalnum() or c in ".-:_" for c in host):
        raise DownloadRefused(f"the host {host!r} has characters a host name cannot have")
    port = port or (443 if scheme == "https" else 80)
    addresses = resolve(host, port)
    for ip in addresses:  # all of them: a name with one public and one private address is refused
        reason = policy.address_refusal(ip)
        if reason:
            raise DownloadRefused(f"{host}: {reason}")
    address = addresses[0]
    reason = policy.scheme_refusal(scheme, address)
    if reason:
        raise DownloadRefused(f"{url.split('?', 1)[0]}: {reason}")
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    return Target(url=url, scheme=scheme, host=host, port=port, path=path, address=address)


def tls_context() -> ssl.SSLContext:
    """Certificates are verified against the system's store, for the URL's host name (not the address)."""
    return ssl.create_default_context()


class _PinnedConnection(http.client.HTTPConnection):
    """An HTTP(S) connection to `target.address`, with Host header and TLS name from `target.host`."""

    def __init__(self, target: Target, policy: Policy):
        super().__init__(target.host, target.port, timeout=policy.timeout_s)
        self._target = target
        self._policy = policy

    def connect(self) -> None:
        sock = socket.create_connection((str(self._target.address), self._target.port), timeout=self.timeout)
        try:
            peer = ipaddress.ip_address(sock.getpeername()[0].split("%", 1)[0])
            reason = self._policy.address_refusal(peer)
            if peer != self._target.address or reason:  # never expected: the connect went somewhere else
                raise DownloadRefused(f"connected to {peer}, not the checked address {self._target.address}")
            if self._target.scheme == "https":
                sock = tls_context().wrap_socket(sock, server_hostname=self._target.host)
        except BaseException:
            sock.close()
            raise
        self.sock = sock


def open_connection(target: Target, policy: Policy) -> http.client.HTTPConnection:
    return _PinnedConnection(target, policy)


def request(target: Target, policy: Policy, headers: dict[str, str]) -> tuple[http.client.HTTPConnection, Any]:
    """Send GET for `target` on a pinned connection; (connection, response). Network errors become
    DownloadRefused with a readable reason (a timeout says so)."""
    conn = open_connection(target, policy)
    try:
        conn.request("GET", target.path, headers={"User-Agent": "sd-webui-downloader", **headers})
        return conn, conn.getresponse()
    except DownloadRefused:
        conn.close()
        raise
    except TimeoutError:
        conn.close()
        raise DownloadRefused(f"{target.host} did not answer within {policy.timeout_s:g} s") from None
    except (OSError, http.client.HTTPException) as e:
        conn.close()
        raise DownloadRefused(f"cannot connect to {target.host}: {e}") from None

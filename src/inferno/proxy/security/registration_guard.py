"""Who may register a node, and where nodes may live (no SSRF through registration).

- A node token (``Authorization: Bearer <token>``, one of ``node_tokens``) is required
  when tokens are configured; the first token that registers a node id owns it, so a
  holder of another token cannot take the id over (or deregister it).
- Static backends (``--backends``, ids ``static-...``) belong to the operator: no
  registration may claim, re-point or deregister a ``static-`` id, whatever its token.
- The node's address and ops port must match the allowlist (CIDRs, hosts, ``*.suffix``,
  each with optional ``:port`` or ``:lo-hi``; IPv6 with a port as ``[cidr]:port``).
  Hostnames are resolved and every address they resolve to must pass. Link-local,
  cloud metadata, unspecified, multicast and broadcast addresses are always refused,
  whatever the allowlist says. Other schemes (anything with ``://``) are refused; the
  proxy never follows redirects from nodes (a 3xx answer becomes a 502).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import socket
from dataclasses import dataclass

from inferno.api.node import Registration
from inferno.core.errors import AuthenticationError, ConfigError, InvalidRequest, PermissionDenied
from inferno.net import Request

IP = ipaddress.IPv4Address | ipaddress.IPv6Address
Net = ipaddress.IPv4Network | ipaddress.IPv6Network

_ALWAYS_DENIED: tuple[Net, ...] = tuple(ipaddress.ip_network(n) for n in (
    "0.0.0.0/8", "169.254.0.0/16", "100.100.100.200/32", "224.0.0.0/4", "240.0.0.0/4",
    "255.255.255.255/32", "::/128", "fe80::/10", "ff00::/8", "fd00:ec2::254/128"))
# The id prefix of static backends (from config, never from registration).
STATIC_PREFIX = "static-"
_DENIED_NAMES = frozenset({"metadata", "metadata.google.internal", "metadata.goog",
                           "instance-data", "instance-data.ec2.internal"})


@dataclass(frozen=True, slots=True)
class Rule:
    net: Net | None
    host: str | None       # exact host name, or ".suffix" for *.suffix
    ports: tuple[int, int]

    def allows_port(self, port: int) -> bool:
        return self.ports[0] <= port <= self.ports[1]


def parse_rule(entry: str) -> Rule:
    text = entry.strip().lower()
    ports = (1, 65535)
    host_part = text
    if text.startswith("["):
        host_part, _, rest = text[1:].partition("]")
        if rest:
            ports = _ports(rest.removeprefix(":"), entry)
    elif text.count(":") == 1:
        host_part, _, port_text = text.partition(":")
        ports = _ports(port_text, entry)
    try:
        return Rule(ipaddress.ip_network(host_part, strict=False), None, ports)
    except ValueError:
        pass
    if host_part.startswith("*."):
        return Rule(None, host_part[1:], ports)
    if not host_part or "/" in host_part:
        raise ConfigError(f"registration_allowlist: cannot parse {entry!r}")
    return Rule(None, host_part, ports)


def _ports(text: str, entry: str) -> tuple[int, int]:
    lo, _, hi = text.partition("-")
    try:
        a, b = int(lo), int(hi or lo)
    except ValueError as exc:
        raise ConfigError(f"registration_allowlist: bad port in {entry!r}") from exc
    if not 1 <= a <= b <= 65535:
        raise ConfigError(f"registration_allowlist: bad port range in {entry!r}")
    return a, b


class RegistrationGuard:
    def __init__(self, tokens: list[str], allowlist: list[str], *,
                 resolve_timeout: float = 1.0) -> None:
        self._tokens = [hashlib.sha256(t.encode()).digest() for t in tokens if t]
        self._rules = [parse_rule(e) for e in allowlist]
        self._owners: dict[str, bytes] = {}
        self._resolve_timeout = resolve_timeout

    @property
    def requires_token(self) -> bool:
        return bool(self._tokens)

    def authenticate(self, req: Request) -> bytes | None:
        """The fingerprint of the presented node token, or None when no tokens are configured;
        raises for a missing or wrong token (also guards the ops settings routes)."""
        if not self._tokens:
            return None
        value = req.header("authorization") or ""
        scheme, _, token = value.partition(" ")
        digest = hashlib.sha256(token.strip().encode()).digest()
        ok = False
        for known in self._tokens:  # check every one: timing does not tell which matched
            ok |= hmac.compare_digest(digest, known)
        if scheme.lower() != "bearer" or not ok:
            raise AuthenticationError("Registration needs a valid node token "
                                      "('Authorization: Bearer <node token>').")
        return digest

    async def check(self, req: Request, reg: Registration) -> None:
        fingerprint = self.authenticate(req)
        refuse_static(reg.id)
        if b"://" in req.body:
            raise InvalidRequest("Registration addresses are host:port; other schemes and "
                                 "URLs are refused.", param="address")
        await self._check_address(reg.host, reg.port, "address")
        await self._check_address(reg.host, reg.metrics_port, "metrics_port")
        if fingerprint is not None:
            owner = self._owners.setdefault(reg.id, fingerprint)
            if not hmac.compare_digest(owner, fingerprint):
                raise PermissionDenied(f"Node id '{reg.id}' is registered with another token.",
                                       param="id")

    def check_unchanged(self, req: Request, node_id: str) -> None:
        """A renewal whose body is, byte for byte, one that passed :meth:`check` lately:
        the token and the id's owner are checked again; the addresses, the same, are not."""
        fingerprint = self.authenticate(req)
        if fingerprint is not None:
            owner = self._owners.get(node_id)
            if owner is None or not hmac.compare_digest(owner, fingerprint):
                raise PermissionDenied(f"Node id '{node_id}' is registered with another token.",
                                       param="id")

    def check_delete(self, req: Request, node_id: str) -> None:
        fingerprint = self.authenticate(req)
        refuse_static(node_id)
        owner = self._owners.get(node_id)
        if fingerprint is not None and owner is not None \
                and not hmac.compare_digest(owner, fingerprint):
            raise PermissionDenied(f"Node id '{node_id}' is registered with another token.")

    async def _check_address(self, host: str, port: int, param: str) -> None:
        name = host.lower().rstrip(".")
        if name in _DENIED_NAMES:
            raise PermissionDenied(f"Registration refused: '{host}' is a metadata address.",
                                   param=param)
        try:
            ips: list[IP] = [ipaddress.ip_address(name)]
        except ValueError:
            if any(r.host is not None and _host_match(r.host, name) and r.allows_port(port)
                   for r in self._rules):
                ips = await self._resolve(name, param)
                self._deny_special(ips, host, param)
                return
            ips = await self._resolve(name, param)
        self._deny_special(ips, host, param)
        for ip in ips:
            if not any(r.net is not None and ip in r.net and r.allows_port(port)
                       for r in self._rules):
                raise PermissionDenied(f"Registration refused: {host}:{port} is not in the "
                                       "registration allowlist.", param=param)

    @staticmethod
    def _deny_special(ips: list[IP], host: str, param: str) -> None:
        for ip in ips:
            mapped = getattr(ip, "ipv4_mapped", None) or ip
            if any(mapped in net for net in _ALWAYS_DENIED if net.version == mapped.version) \
                    or mapped.is_link_local or mapped.is_multicast:
                raise PermissionDenied(f"Registration refused: '{host}' is a link-local, "
                                       "metadata or otherwise reserved address.", param=param)

    async def _resolve(self, name: str, param: str) -> list[IP]:
        loop = asyncio.get_running_loop()
        try:
            infos = await asyncio.wait_for(
                loop.getaddrinfo(name, None, type=socket.SOCK_STREAM), self._resolve_timeout)
        except (OSError, TimeoutError) as exc:
            raise InvalidRequest(f"Registration refused: cannot resolve '{name}'.",
                                 param=param) from exc
        return [ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos]


def refuse_static(node_id: str, *, static: bool = False) -> None:
    """Static backends are the operator's: registration never claims or removes one.

    ``static``: the pool holds ``node_id`` as a static backend (whatever its id).
    """
    if static or node_id.startswith(STATIC_PREFIX):
        raise PermissionDenied(f"Node id '{node_id}' is a static backend from the proxy's "
                               "configuration; registration cannot claim, change or remove "
                               f"'{STATIC_PREFIX}' ids.", param="id")


def _host_match(rule: str, name: str) -> bool:
    return name.endswith(rule) if rule.startswith(".") else name == rule

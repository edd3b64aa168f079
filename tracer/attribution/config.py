"""haproxy.cfg, read for what attribution needs (pure: text in, dataclasses out).

Rules: only the directives that change who closes a connection, how, and when are kept (bind,
server, source, mode, timeouts, options nolinger / abortonclose / http-server-close /
redispatch / httpchk, retries, maxconn, tcp-request / http-request reject, deny and
silent-drop with rst-ttl, health checks, log formats, backend routing); everything else is
skipped. `defaults` sections are inherited as HAProxy does: a proxy takes the last `defaults`
section above it, or the named one of `from NAME`; `no option X` clears an inherited option.
A line that cannot be understood is kept in `Config.warnings`, never raised: the config is a
hint, the packets are the facts. A file that is not a config at all raises ConfigError.

Tokens follow HAProxy's rules: words split on blanks, double quotes keep blanks, single quotes
too, a backslash escapes the next character, `#` outside quotes starts a comment.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field

from tracer.errors import TracerError


class ConfigError(TracerError):
    """The HAProxy configuration could not be read."""


TIMEOUT_NAMES = ("client", "server", "connect", "http-request", "queue", "http-keep-alive",
                 "tunnel", "check", "client-fin", "server-fin", "tarpit")
OPTION_NAMES = ("nolinger", "abortonclose", "http-server-close", "redispatch", "httpchk",
                "httplog", "tcplog", "httpclose", "forceclose", "http-keep-alive",
                "tcp-check", "forwardfor", "dontlognull")
_UNITS_NS = {"us": 1_000, "ms": 1_000_000, "s": 1_000_000_000, "m": 60_000_000_000,
             "h": 3_600_000_000_000, "d": 86_400_000_000_000}

# HAProxy's built-in log formats (configuration manual 8.2.2-8.2.4), as log-format strings.
TCPLOG_FORMAT = ("%ci:%cp [%t] %ft %b/%s %Tw/%Tc/%Tt %B %ts %ac/%fc/%bc/%sc/%rc %sq/%bq")
HTTPLOG_FORMAT = ("%ci:%cp [%tr] %ft %b/%s %TR/%Tw/%Tc/%Tr/%Ta %ST %B %CC %CS %tsc "
                  "%ac/%fc/%bc/%sc/%rc %sq/%bq %hr %hs %{+Q}r")


@dataclass(frozen=True)
class Endpoint:
    """An address (None: any address, `*` / `0.0.0.0` / `::`) and a port range."""

    address: str | None
    port_lo: int
    port_hi: int

    def text(self) -> str:
        port = str(self.port_lo) if self.port_lo == self.port_hi else f"{self.port_lo}-{self.port_hi}"
        addr = self.address or "*"
        return f"[{addr}]:{port}" if ":" in addr else f"{addr}:{port}"


@dataclass
class Rule:
    """A connection-ending rule: `tcp-request connection reject`, `http-request deny` ..."""

    keyword: str  # tcp-request / http-request / tcp-response / http-response
    stage: str  # connection / content / session / "" (http-*)
    action: str  # reject / silent-drop / deny / tarpit
    rst_ttl: int | None = None
    text: str = ""


@dataclass
class Server:
    name: str
    address: str | None
    port: int | None  # None: same port as the client connected to
    check: bool = False
    check_port: int | None = None
    check_inter_ns: int | None = None
    source: str | None = None
    maxconn: int | None = None
    send_proxy: int = 0  # PROXY protocol version HAProxy sends to it (`send-proxy[-v2]`)


@dataclass
class Proxy:
    """A frontend, backend or listen section with its `defaults` already applied."""

    kind: str  # frontend / backend / listen / defaults
    name: str
    mode: str = "tcp"
    binds: list[Endpoint] = field(default_factory=list)
    servers: list[Server] = field(default_factory=list)
    timeouts_ns: dict[str, int] = field(default_factory=dict)
    options: set[str] = field(default_factory=set)
    retries: int | None = None
    maxconn: int | None = None
    source: str | None = None
    rules: list[Rule] = field(default_factory=list)
    log_format: str | None = None
    default_backend: str | None = None
    use_backends: list[str] = field(default_factory=list)
    forwardfor_header: str | None = None  # `option forwardfor [header NAME]`
    unique_id_format: str | None = None
    unique_id_header: str | None = None
    line: int = 0

    @property
    def is_frontend(self) -> bool:
        return self.kind in ("frontend", "listen")

    @property
    def is_backend(self) -> bool:
        return self.kind in ("backend", "listen")

    def effective_log_format(self) -> str | None:
        if self.log_format:
            return self.log_format
        if "httplog" in self.options:
            return HTTPLOG_FORMAT
        if "tcplog" in self.options:
            return TCPLOG_FORMAT
        return None

    def has_action(self, action: str) -> bool:
        return any(r.action == action for r in self.rules)


@dataclass
class Config:
    path: str
    proxies: list[Proxy] = field(default_factory=list)
    global_maxconn: int | None = None
    warnings: list[str] = field(default_factory=list)

    @property
    def frontends(self) -> list[Proxy]:
        return [p for p in self.proxies if p.is_frontend]

    @property
    def backends(self) -> list[Proxy]:
        return [p for p in self.proxies if p.is_backend]

    @property
    def payload_signals(self) -> bool:
        """Whether HAProxy writes something into server connections that names the client
        (PROXY protocol, a forwarded-for or unique-id header): the leg join reads it."""
        return any(s.send_proxy for p in self.backends for s in p.servers) or any(
            p.forwardfor_header or p.unique_id_header for p in self.proxies)

    def backend(self, name: str) -> Proxy | None:
        return next((p for p in self.backends if p.name == name), None)

    def routes(self, frontend: Proxy) -> list[Proxy]:
        """The backends a frontend can send to (a listen section is its own backend)."""
        names = list(frontend.use_backends)
        if frontend.default_backend:
            names.append(frontend.default_backend)
        found = [b for b in (self.backend(n) for n in dict.fromkeys(names)) if b is not None]
        if frontend.kind == "listen":
            found.insert(0, frontend)
        return found


def tokenize(line: str) -> list[str]:
    words: list[str] = []
    word: list[str] = []
    in_word = False
    quote = ""
    i = 0
    while i < len(line):
        ch = line[i]
        if quote:
            if ch == "\\" and quote == '"' and i + 1 < len(line):
                word.append(line[i + 1])
                i += 2
                continue
            if ch == quote:
                quote = ""
            else:
                word.append(ch)
        elif ch == "\\" and i + 1 < len(line):
            word.append(line[i + 1])
            in_word = True
            i += 1
        elif ch in "\"'":
            quote = ch
            in_word = True
        elif ch == "#":
            break
        elif ch in " \t":
            if in_word:
                words.append("".join(word))
                word, in_word = [], False
        else:
            word.append(ch)
            in_word = True
        i += 1
    if in_word:
        words.append("".join(word))
    return words


def parse_duration_ns(text: str) -> int:
    match = re.fullmatch(r"(\d+)(us|ms|s|m|h|d)?", text.strip())
    if not match:
        raise ValueError(f"bad duration {text!r}")
    return int(match.group(1)) * _UNITS_NS[match.group(2) or "ms"]


def parse_endpoint(text: str, default_port: int | None = None) -> Endpoint | None:
    """`10.0.0.1:80`, `:80`, `*:80-81`, `[::1]:443`, `ipv6@::1:80`, `10.0.0.1`; None for
    unix sockets and other non-IP addresses."""
    text = text.strip()
    if "@" in text:
        family, _, text = text.partition("@")
        if family not in ("ipv4", "ipv6", "tcp", "tcp4", "tcp6"):
            return None
    if text.startswith("/") or text.startswith("unix"):
        return None
    if text.startswith("["):
        addr, _, rest = text[1:].partition("]")
        port_text = rest.lstrip(":")
    elif text.count(":") > 1:  # bare IPv6: the last colon group is the port
        addr, _, port_text = text.rpartition(":")
        try:
            ipaddress.ip_address(addr)
        except ValueError:
            addr, port_text = text, ""
    elif ":" in text:
        addr, _, port_text = text.partition(":")
    else:
        addr, port_text = text, ""
    addr = addr.strip()
    if addr in ("", "*", "0.0.0.0", "::"):
        address = None
    else:
        try:
            address = str(ipaddress.ip_address(addr))
        except ValueError:
            return None  # a host name: not resolved (no I/O here)
    if port_text:
        lo, _, hi = port_text.partition("-")
        try:
            port_lo = int(lo)
            port_hi = int(hi) if hi else port_lo
        except ValueError:
            return None
    elif default_port is not None:
        port_lo = port_hi = default_port
    else:
        port_lo, port_hi = 0, 65535
    return Endpoint(address, port_lo, port_hi)


_SECTIONS = ("global", "defaults", "frontend", "backend", "listen")


def parse_config(text: str, path: str = "haproxy.cfg") -> Config:
    config = Config(path=path)
    defaults: dict[str, Proxy] = {}
    last_defaults = Proxy(kind="defaults", name="")
    current: Proxy | None = None
    section = ""
    known_lines = 0
    for number, raw in enumerate(text.splitlines(), 1):
        words = tokenize(raw)
        if not words:
            continue
        keyword = words[0]
        if keyword in _SECTIONS:
            known_lines += 1
            section = keyword
            name = words[1] if len(words) > 1 and words[1] != "from" else ""
            base = last_defaults
            if "from" in words:
                ref = words[words.index("from") + 1] if words.index("from") + 1 < len(words) else ""
                base = defaults.get(ref, last_defaults)
            if keyword == "global":
                current = None
                continue
            current = _inherit(base, keyword, name, number)
            if keyword == "defaults":
                last_defaults = current
                if name:
                    defaults[name] = current
            else:
                config.proxies.append(current)
            continue
        if section == "global":
            known_lines += 1
            if keyword == "maxconn" and len(words) > 1 and words[1].isdigit():
                config.global_maxconn = int(words[1])
            continue
        if current is None:
            config.warnings.append(f"line {number}: {keyword!r} outside any section")
            continue
        try:
            if _apply(current, words):
                known_lines += 1
        except (ValueError, IndexError) as exc:
            config.warnings.append(f"line {number}: {raw.strip()!r}: {exc}")
    if not known_lines:
        raise ConfigError(f"{path}: not an HAProxy configuration (no global, defaults, "
                          "frontend, backend or listen section)")
    return config


def load_config(path: str) -> Config:
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            text = fh.read()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the HAProxy configuration "
                          f"({exc.strerror or exc})") from None
    return parse_config(text, path)


def _inherit(base: Proxy, kind: str, name: str, line: int) -> Proxy:
    return Proxy(kind=kind, name=name, mode=base.mode, timeouts_ns=dict(base.timeouts_ns),
                 options=set(base.options), retries=base.retries,
                 maxconn=base.maxconn if kind != "backend" else None,
                 source=base.source, log_format=base.log_format, line=line,
                 forwardfor_header=base.forwardfor_header,
                 unique_id_format=base.unique_id_format,
                 unique_id_header=base.unique_id_header,
                 servers=[] if kind != "defaults" else list(base.servers),
                 rules=[])


def _apply(p: Proxy, words: list[str]) -> bool:
    """Apply one directive; False when it is not one attribution needs."""
    keyword, args = words[0], words[1:]
    if keyword == "bind":
        for part in args[0].split(","):
            endpoint = parse_endpoint(part)
            if endpoint is not None:
                p.binds.append(endpoint)
        return True
    if keyword == "mode":
        p.mode = args[0]
        return True
    if keyword == "timeout":
        name = args[0]
        if name in ("clitimeout", "srvtimeout", "contimeout"):
            name = {"clitimeout": "client", "srvtimeout": "server", "contimeout": "connect"}[name]
        p.timeouts_ns[name] = parse_duration_ns(args[1])
        return True
    if keyword in ("option", "no") :
        if keyword == "no":
            if args[0] != "option":
                return False
            p.options.discard(args[1])
            if args[1] == "forwardfor":
                p.forwardfor_header = None
            return True
        p.options.add(args[0])
        if args[0] == "forwardfor":
            p.forwardfor_header = (args[args.index("header") + 1]
                                   if "header" in args[:-1] else "X-Forwarded-For")
        if args[0] == "httplog":
            p.options.discard("tcplog")
        return True
    if keyword == "retries":
        p.retries = int(args[0])
        return True
    if keyword == "maxconn":
        p.maxconn = int(args[0])
        return True
    if keyword == "source":
        endpoint = parse_endpoint(args[0], default_port=0)
        p.source = endpoint.address if endpoint else None
        return True
    if keyword in ("log-format", "log-format-sd"):
        if keyword == "log-format":
            p.log_format = " ".join(args)
        return True
    if keyword in ("tcp-request", "tcp-response", "http-request", "http-response"):
        stage = ""
        rest = args
        if keyword.startswith("tcp-"):
            stage, rest = args[0], args[1:]
        if rest and rest[0] in ("reject", "silent-drop", "deny", "tarpit"):
            rst_ttl = None
            if "rst-ttl" in rest:
                rst_ttl = int(rest[rest.index("rst-ttl") + 1])
            p.rules.append(Rule(keyword, stage, rest[0], rst_ttl, " ".join(words)))
            return True
        return False
    if keyword == "unique-id-format":
        p.unique_id_format = " ".join(args)
        return True
    if keyword == "unique-id-header":
        p.unique_id_header = args[0]
        return True
    if keyword == "server":
        p.servers.append(_server(args))
        return True
    if keyword == "default_backend":
        p.default_backend = args[0]
        return True
    if keyword == "use_backend":
        p.use_backends.append(args[0])
        return True
    return False


def _server(args: list[str]) -> Server:
    name = args[0]
    endpoint = parse_endpoint(args[1]) if len(args) > 1 else None
    port = None
    if endpoint is not None and endpoint.port_lo == endpoint.port_hi and not (
            endpoint.port_lo == 0 and endpoint.port_hi == 65535):
        port = endpoint.port_lo
    server = Server(name=name, address=endpoint.address if endpoint else None, port=port)
    rest = args[2:]
    for i, word in enumerate(rest):
        nxt = rest[i + 1] if i + 1 < len(rest) else None
        if word == "check":
            server.check = True
        elif word == "port" and nxt and nxt.isdigit():
            server.check_port = int(nxt)
        elif word == "inter" and nxt:
            server.check_inter_ns = parse_duration_ns(nxt)
        elif word == "source" and nxt:
            src = parse_endpoint(nxt, default_port=0)
            server.source = src.address if src else None
        elif word == "maxconn" and nxt and nxt.isdigit():
            server.maxconn = int(nxt)
        elif word in ("send-proxy", "send-proxy-v2", "send-proxy-v2-ssl", "send-proxy-v2-ssl-cn"):
            server.send_proxy = 1 if word == "send-proxy" else 2
    return server

"""What HAProxy writes into a server connection about its client (pure parsers).

Rules: every parser takes the captured start of a server connection's first client->server
bytes (`data`) and whether those bytes are the whole of what was sent so far (`complete`:
False when the snaplen or the prefix size cut them). A field counts only when all of it was
captured: a PROXY v1 line needs its CRLF, a v2 header its whole address block, an HTTP header
line its CRLF. A cut header gives no match, never a wrong one.

- PROXY protocol (haproxy.org proxy-protocol.txt): v1 `PROXY TCP4|TCP6 src dst sport dport\\r\\n`
  (at most 107 bytes), v2 the 12-byte signature, version/command, family, length, then the
  address block (TCP over IPv4: 12 bytes, IPv6: 36). `PROXY UNKNOWN` and v2 LOCAL (health
  checks) name no client. HAProxy sends it before anything else on the connection
  (`send-proxy`, `send-proxy-v2`).
- HTTP request headers after it: the forwarded-for header (`option forwardfor [header NAME]`,
  HAProxy appends a header line with the client address: the *last* hop of the last such
  line is HAProxy's own view unless a configured hop says otherwise), `X-Real-IP`, and the
  unique-id header (`unique-id-header NAME`). Names are case-insensitive (RFC 9110 5.1).
- A unique id built by `unique-id-format` carries the client when the format has `%ci` and
  `%cp` (HAProxy's own example `%{+X}o %ci:%cp_%fi:%fp_%Ts_%rt:%pid` does): `unique_id_parser`
  turns the format into a regular expression that reads them back, hexadecimal under `+X`.

What a server connection tells (`ClientClaim`): the client address and port (exact, from PROXY
protocol or a unique id with both), or the address only (forwarded-for, X-Real-IP), and the
unique id as a string (for the log join). Addresses are in the packet batch's (hi, lo) form.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from tracer.packet import parse_address

PROXY_V1_MAX = 107
PROXY_V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"


@dataclass(frozen=True)
class ProxyHeader:
    version: int  # 1 or 2
    src: str | None  # None: UNKNOWN / LOCAL (no client named)
    sport: int | None
    dst: str | None
    dport: int | None
    length: int  # bytes the header takes (the request follows)


def parse_proxy(data: bytes) -> ProxyHeader | None:
    """A PROXY protocol header at the start of `data`, or None (absent, cut or malformed)."""
    if data.startswith(b"PROXY "):
        end = data.find(b"\r\n", 0, PROXY_V1_MAX)
        if end < 0:
            return None
        words = data[6:end].split(b" ")
        if words and words[0] == b"UNKNOWN":
            return ProxyHeader(1, None, None, None, None, end + 2)
        if len(words) != 5 or words[0] not in (b"TCP4", b"TCP6"):
            return None
        try:
            src = ipaddress.ip_address(words[1].decode("ascii"))
            dst = ipaddress.ip_address(words[2].decode("ascii"))
            sport, dport = int(words[3]), int(words[4])
        except (ValueError, UnicodeDecodeError):
            return None
        want = 4 if words[0] == b"TCP4" else 6
        if src.version != want or dst.version != want or not (
                0 <= sport <= 65535 and 0 <= dport <= 65535):
            return None
        return ProxyHeader(1, str(src), sport, str(dst), dport, end + 2)
    if data.startswith(PROXY_V2_SIGNATURE) and len(data) >= 16:
        ver_cmd, family = data[12], data[13]
        length = int.from_bytes(data[14:16], "big")
        if ver_cmd >> 4 != 2:
            return None
        total = 16 + length
        if ver_cmd & 0x0F == 0:  # LOCAL: HAProxy's own connection (health check)
            return ProxyHeader(2, None, None, None, None, total)
        if ver_cmd & 0x0F != 1:
            return None
        if family == 0x11 and length >= 12 and len(data) >= 28:  # TCP over IPv4
            block = data[16:28]
            return ProxyHeader(2, str(ipaddress.IPv4Address(block[0:4])),
                               int.from_bytes(block[8:10], "big"),
                               str(ipaddress.IPv4Address(block[4:8])),
                               int.from_bytes(block[10:12], "big"), total)
        if family == 0x21 and length >= 36 and len(data) >= 52:  # TCP over IPv6
            block = data[16:52]
            return ProxyHeader(2, str(ipaddress.IPv6Address(block[0:16])),
                               int.from_bytes(block[32:34], "big"),
                               str(ipaddress.IPv6Address(block[16:32])),
                               int.from_bytes(block[34:36], "big"), total)
        if family == 0x00 and len(data) >= total:  # UNSPEC
            return ProxyHeader(2, None, None, None, None, total)
        return None
    return None


_REQUEST_LINE = re.compile(rb"^[A-Z][A-Z-]{1,15} \S+ HTTP/\d\.\d\r\n")


def request_headers(data: bytes) -> tuple[list[tuple[str, str]], bool] | None:
    """The header lines of an HTTP/1 request at the start of `data` that were captured whole
    (name lower-cased, value stripped), in order, and whether the whole head was (its empty
    line seen); None when `data` is no request start."""
    match = _REQUEST_LINE.match(data)
    if not match:
        return None
    out: list[tuple[str, str]] = []
    at = match.end()
    while True:
        end = data.find(b"\r\n", at)
        if end < 0 or end == at:  # cut (no CRLF) or the end of the head
            return out, end == at
        line = data[at:end]
        at = end + 2
        name, sep, value = line.partition(b":")
        if not sep or not name or name != name.strip():
            continue
        out.append((name.decode("latin-1").lower(), value.strip().decode("latin-1")))


def header_values(headers: list[tuple[str, str]], name: str) -> list[str]:
    name = name.lower()
    return [value for key, value in headers if key == name]


def forwarded_for(headers: list[tuple[str, str]], name: str = "X-Forwarded-For",
                  hop: int = -1) -> str | None:
    """The address at `hop` (-1: the last, the one the nearest proxy added) of the forwarded-for
    list, all its header lines joined in order (RFC 7239 7.1 for the list form); None when
    absent or not an address."""
    hops = [part.strip() for value in header_values(headers, name) for part in value.split(",")]
    hops = [h for h in hops if h]
    if not hops or not -len(hops) <= hop < len(hops):
        return None
    return _address(hops[hop])


def _address(text: str) -> str | None:
    text = text.strip()
    if text.startswith("[") and "]" in text:  # [v6]:port
        text = text[1:text.index("]")]
    elif text.count(":") == 1:  # v4:port
        text = text.split(":")[0]
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        return None


# unique-id-format variables a claim can be read from, and what the others may look like
_UID_HEX = {"ci": r"[0-9A-Fa-f]{8}|[0-9A-Fa-f]{32}", "cp": r"[0-9A-Fa-f]{4}",
            "fi": r"[0-9A-Fa-f]{8}|[0-9A-Fa-f]{32}", "fp": r"[0-9A-Fa-f]{4}"}
_UID_DEC = {"ci": r"[0-9A-Fa-f:.]+", "cp": r"\d+", "fi": r"[0-9A-Fa-f:.]+", "fp": r"\d+"}
_UID_TOKEN = re.compile(r"%(\{[^}]*\})?(\[[^\]]*\]|[A-Za-z]+)|\\(.)|(.)", re.S)


@dataclass(frozen=True)
class UniqueIdParser:
    pattern: re.Pattern
    hex: dict[str, bool]

    def client(self, uid: str) -> tuple[str, int | None] | None:
        """(client address, port or None) a unique id names, or None."""
        m = self.pattern.fullmatch(uid)
        if not m or m.groupdict().get("ci") is None:
            return None
        ci = m.group("ci")
        if self.hex.get("ci"):
            value = int(ci, 16)
            ci = str(ipaddress.IPv4Address(value) if len(ci) == 8 else ipaddress.IPv6Address(value))
        elif _address(ci) is None:
            return None
        port = m.groupdict().get("cp")
        if port is not None:
            port = int(port, 16 if self.hex.get("cp") else 10)
        return _address(ci), port


def unique_id_parser(fmt: str | None) -> UniqueIdParser | None:
    """A reader of the client in unique ids made by `fmt` (None: the format names no client)."""
    if not fmt:
        return None
    fmt = fmt.strip().strip('"')
    parts: list[str] = []
    hexes: dict[str, bool] = {}
    global_hex = False
    seen: set[str] = set()
    for m in _UID_TOKEN.finditer(fmt):
        opts, var, escaped, char = m.groups()
        if var is not None:
            hex_on = global_hex or bool(opts and "+X" in opts)
            if var == "o":  # `%{+X}o`: options for every later variable
                global_hex = global_hex or bool(opts and "+X" in opts)
                continue
            if var in _UID_DEC and var not in seen:
                seen.add(var)
                hexes[var] = hex_on
                table = _UID_HEX if hex_on else _UID_DEC
                parts.append(f"(?P<{var}>{table[var]})")
            else:
                parts.append(r"\S*?")
        else:
            literal = escaped if escaped is not None else char
            # HAProxy writes no separator for a space between variables of an id
            parts.append(" ?" if literal == " " else re.escape(literal))
    if "ci" not in seen:
        return None
    return UniqueIdParser(re.compile("".join(parts)), hexes)


@dataclass(frozen=True)
class ClientClaim:
    """What one server connection's first bytes say about the client it serves."""

    source: str  # proxy_v1 / proxy_v2 / unique_id / forwarded_for / real_ip
    address: tuple[int, int] | None  # (hi, lo); None: only the unique id (for the log join)
    port: int | None  # None: address only
    unique_id: str | None = None
    proxy_len: int = 0  # bytes of PROXY protocol header before the stream's own bytes


def client_claim(data: bytes, *, forwardfor_header: str | None = "X-Forwarded-For",
                 forwardfor_hop: int = -1,
                 unique_id_header: str | tuple[str, ...] | None = None,
                 unique_id: UniqueIdParser | None = None) -> ClientClaim | None:
    """The strongest claim in a server connection's first captured bytes: PROXY protocol
    (address and port), then a unique id naming address and port (the first of the
    `unique_id_header` names present), then the forwarded-for
    address, then X-Real-IP. None when nothing whole names a client."""
    proxy = parse_proxy(data)
    rest = data
    if proxy is not None:
        rest = data[proxy.length:]
    elif data.startswith(b"PROXY") or (data and PROXY_V2_SIGNATURE.startswith(data[:12])):
        return None  # a cut or malformed PROXY header: what follows is unknown
    parsed = request_headers(rest)
    # A unique id is one exact line; the address headers count only from a whole head (a
    # line HAProxy appended may be the one the snaplen cut, behind one the client sent).
    headers, whole = parsed if parsed is not None else ([], False)
    uid = None
    names = (unique_id_header,) if isinstance(unique_id_header, str) else unique_id_header or ()
    for name in names:
        values = header_values(headers, name)
        uid = values[-1] if values else None
        if uid:
            break
    if proxy is not None and proxy.src is not None:
        return ClientClaim(f"proxy_v{proxy.version}", parse_address(proxy.src), proxy.sport, uid,
                           proxy.length)
    skip = proxy.length if proxy is not None else 0
    if uid:
        if unique_id is not None:
            named = unique_id.client(uid)
            if named is not None and named[0] is not None and named[1] is not None:
                return ClientClaim("unique_id", parse_address(named[0]), named[1], uid, skip)
    only_uid = ClientClaim("unique_id", None, None, uid, skip) if uid else None
    if not whole:
        return only_uid
    if forwardfor_header:
        addr = forwarded_for(headers, forwardfor_header, forwardfor_hop)
        if addr is not None:
            return ClientClaim("forwarded_for", parse_address(addr), None, uid, skip)
    values = header_values(headers, "X-Real-IP")
    addr = _address(values[-1]) if values else None
    if addr is not None:
        return ClientClaim("real_ip", parse_address(addr), None, uid, skip)
    return only_uid

"""A small BPF-like filter over packet batches (pure, vectorized).

Grammar (a subset of pcap-filter(7), applied to decoded TCP segments):

    expr      := term (("or" | "||") term)*
    term      := factor (("and" | "&&") factor)*
    factor    := ("not" | "!") factor | "(" expr ")" | primitive
    primitive := [src | dst] host ADDR | [src | dst] net CIDR | [src | dst] port N
               | [src | dst] portrange N-M | vlan N | ip | ip6 | tcp

`host`/`net`/`port` without a direction match either side. A filter compiles once into a
function from a packet batch to a boolean mask, so applying it is a handful of array ops.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable

import numpy as np

from tracer.errors import FilterError

Mask = Callable[[np.ndarray], np.ndarray]
_TOKEN = re.compile(r"\s*(\(|\)|&&|\|\||!|[^\s()!]+)")


def compile_filter(text: str) -> Mask:
    tokens = _tokenize(text)
    parser = _Parser(tokens, text)
    mask = parser.expr()
    if parser.pos != len(tokens):
        raise FilterError(f"filter {text!r}: unexpected {tokens[parser.pos]!r}")
    return mask


def _tokenize(text: str) -> list[str]:
    tokens, pos = [], 0
    text = text.strip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m:
            raise FilterError(f"filter {text!r}: cannot read from position {pos}")
        tokens.append(m.group(1))
        pos = m.end()
    if not tokens:
        raise FilterError("filter is empty")
    return tokens


class _Parser:
    def __init__(self, tokens: list[str], text: str) -> None:
        self.tokens, self.text, self.pos = tokens, text, 0

    def peek(self) -> str | None:
        return self.tokens[self.pos].lower() if self.pos < len(self.tokens) else None

    def take(self) -> str:
        if self.pos >= len(self.tokens):
            raise FilterError(f"filter {self.text!r}: ends too early")
        self.pos += 1
        return self.tokens[self.pos - 1]

    def expr(self) -> Mask:
        left = self.term()
        while self.peek() in ("or", "||"):
            self.take()
            right = self.term()
            left = (lambda a, b: lambda p: a(p) | b(p))(left, right)
        return left

    def term(self) -> Mask:
        left = self.factor()
        while self.peek() in ("and", "&&"):
            self.take()
            right = self.factor()
            left = (lambda a, b: lambda p: a(p) & b(p))(left, right)
        return left

    def factor(self) -> Mask:
        word = self.peek()
        if word in ("not", "!"):
            self.take()
            inner = self.factor()
            return lambda p: ~inner(p)
        if word == "(":
            self.take()
            inner = self.expr()
            if self.peek() != ")":
                raise FilterError(f"filter {self.text!r}: missing ')'")
            self.take()
            return inner
        return self.primitive()

    def primitive(self) -> Mask:
        word = self.take().lower()
        if word == "tcp":
            return lambda p: np.ones(p.shape[0], bool)
        if word == "ip":
            return lambda p: p["ip_version"] == 4
        if word == "ip6":
            return lambda p: p["ip_version"] == 6
        if word == "vlan":
            vid = self._int(self.take(), 0, 4095)
            return lambda p: p["vlan"] == vid
        direction = None
        if word in ("src", "dst"):
            direction, word = word, self.take().lower()
        if word == "host":
            return _either(direction, _host_test(self.take(), self.text))
        if word == "net":
            return _either(direction, _net_test(self.take(), self.text))
        if word == "port":
            port = self._int(self.take(), 0, 65535)
            return _either(direction, _port_test(port, port))
        if word == "portrange":
            lo, _, hi = self.take().partition("-")
            return _either(direction, _port_test(self._int(lo, 0, 65535), self._int(hi, 0, 65535)))
        raise FilterError(f"filter {self.text!r}: unknown keyword {word!r}")

    def _int(self, word: str, lo: int, hi: int) -> int:
        try:
            value = int(word)
        except ValueError:
            raise FilterError(f"filter {self.text!r}: {word!r} is not a number") from None
        if not lo <= value <= hi:
            raise FilterError(f"filter {self.text!r}: {value} is out of range {lo}-{hi}")
        return value


def _either(direction: str | None, test: Callable[[np.ndarray, str], np.ndarray]) -> Mask:
    if direction == "src":
        return lambda p: test(p, "src")
    if direction == "dst":
        return lambda p: test(p, "dst")
    return lambda p: test(p, "src") | test(p, "dst")


def _network(text: str, whole: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    try:
        return ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise FilterError(f"filter {whole!r}: {text!r} is not an address or network") from None


def _host_test(text: str, whole: str):
    if "/" in text:
        raise FilterError(f"filter {whole!r}: use 'net' for {text!r}")
    return _net_test(text, whole)


def _net_test(text: str, whole: str):
    net = _network(text, whole)
    if net.version == 4:
        base = (0xFFFF << 32) | int(net.network_address)
        prefix = 96 + net.prefixlen
    else:
        base, prefix = int(net.network_address), net.prefixlen
    mask = ((1 << 128) - 1) ^ ((1 << (128 - prefix)) - 1)
    hi_mask, lo_mask = np.uint64(mask >> 64), np.uint64(mask & (2**64 - 1))
    hi_base, lo_base = np.uint64(base >> 64), np.uint64(base & (2**64 - 1))

    def test(p: np.ndarray, side: str) -> np.ndarray:
        return ((p[side + "_hi"] & hi_mask) == hi_base) & ((p[side + "_lo"] & lo_mask) == lo_base)

    return test


def _port_test(lo: int, hi: int):
    def test(p: np.ndarray, side: str) -> np.ndarray:
        port = p["sport" if side == "src" else "dport"]
        return (port >= lo) & (port <= hi)

    return test

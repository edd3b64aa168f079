"""The HAProxy lab: real HAProxy between real clients and servers in network namespaces, both
legs captured into one pcapng, and a ground-truth CSV with one row per RST packet.

Rules:
- Needs root (ip netns, dumpcap). Traffic stays inside the namespaces this script creates:
  every address lives on a veth, bridge or loopback inside them, and no interface is ever
  created in, or moved to, the caller's namespace.
- Unique names (`tracer-lab-<hex>-<role>`), so re-runs and leftovers never collide.
  Re-runnable: outputs are written to a temporary directory and moved into `--out` only when
  the whole scenario succeeded and its truth checked out.
- Everything created is removed at the end, also on errors or ^C: first the processes it
  started (by PID: SIGTERM, then SIGKILL), then the nft tables a scenario added in a namespace
  (`Scenario.firewall`: loss, forged resets, a server that drops SYNs), then the namespaces
  (which takes their veths and bridges with them), then the temporary directory. Every wait
  has a deadline; dumpcap runs with `-a duration:N`, the backends with `--duration`, the
  client with `--deadline`.

Topologies (`NETS`; one dumpcap in the HAProxy namespace captures both legs):

  bridged (IPv4; `bridged6` the same over IPv6 ULA addresses fd00:232:1::/64, fd00:232:2::/64)
    cli ns: cli0 10.232.1.10, .20 <-> fe0 10.232.1.1 [hap ns: HAProxy] br1 10.232.2.1
                                                           |-- p1 <-> srv0 10.232.2.11 :s1 ns
                                                           `-- p2 <-> srv0 10.232.2.12 :s2 ns
  routed (a router namespace on both legs: its nftables can drop and forge; capture fe0, be0)
    cli ns: cli0 10.232.3.10, .20, .30 -- rc0 [rtr ns] rf0 10.232.1.254 -- fe0 10.232.1.1 [hap]
                                                 rb0 10.232.4.254 -- be0 10.232.4.1 [hap]
                                                 rbr 10.232.2.254 (bridge) -- s1 .11, s2 .12
  loopback (one fresh namespace, everything on its `lo`: client 127.0.3.10, frontend
    127.0.1.1, HAProxy's backend source 127.0.2.1, servers 127.0.2.11 and .12; capture lo)

Lessons of tests/netns.py kept: `gso_max_segs 1` on the veths and bridges (MTU-sized
segments, as a NIC puts them on a wire), receive packet steering to CPU 0 (no reordering
between a sender's two CPUs), IPv6 off except where a scenario runs over it (no chatter).

Theory of the ground truth: each connection carries its id and intent in the request. A
frontend flow is tied to its id by the client's address and port (recorded by the client). A
backend flow is tied by, in order: its server port (health checks), the backend's own record
of each request it read on that flow (several ids when HAProxy keeps a server connection
alive), the backend address in HAProxy's log line, and time (sequential runs: the latest
connection started before the flow's first packet; scheduled runs: the only connection of an
intent that opens unrecorded server flows, refused or dropped SYNs, active at that time).
Each RST's root cause follows from the intent, the leg and the sender (`_classify`); the
sender is known by its address, except that on the routed topology an RST that claims a
client's or server's address but did not cross the router (IP TTL 64 instead of 63) was
forged by the router (`network`). HAProxy's termination state must match what the intent
predicts (`EXPECTED_STATE`). Any disagreement is a lab bug: the run fails and says why.

Usage: python captures/lab/lab.py SCENARIO [SCENARIO...] --out DIR   (SCENARIO or `all`)
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
NS_PREFIX = "tracer-lab-"
HTTP_PORT, TCP_PORT = 8000, 9000
NOLINGER_PORT, SMALL_PORT, KEEPALIVE_PORT, TCP_LIMIT_PORT = 8001, 8002, 8003, 9001
TCP_CRASH_PORT, DEAF_PORT = 9002, 8083  # server-crash: tcp mode to s2; s2's deaf listener
SERVER_HTTP, SERVER_TCP = 8080, 9090
SERVER_PROXY_HTTP, SERVER_PROXY_TCP = 8084, 9094  # the servers' PROXY protocol listeners
PLAIN_PORT = 8004  # proxy-protocol: the http frontend whose servers get no PROXY header
CHECK_PORTS = (8070, 9070)  # the servers' health-check ports (httpchk, plain connect)
MBOX_PORTS = (45000, 45999)  # client source ports the routed middlebox resets
SNAPLEN = 128
TCP_OK_BYTES = 2000  # backend.py's answer size: a tcp-mode client closes once it has it
READY_S = 10.0
STOP_GRACE_S = 5.0
TRUTH_FIELDS = ["frame", "time_epoch", "src", "sport", "dst", "dport", "leg", "sender_ip",
                "sender_role", "root_cause", "routine", "conn_id", "intent", "termination_state",
                "haproxy_log"]


class LabError(RuntimeError):
    """A namespace command failed, a process did not get ready, or the truth is inconsistent."""


@dataclass(frozen=True)
class Net:
    """A topology's addresses. `clients`: normal, rejected, silent-dropped source addresses."""

    kind: str  # bridged | routed | loopback
    front: str
    back: str
    clients: tuple[str, str, str]
    servers: dict[str, str]
    ipv6: bool = False
    capture: tuple[str, ...] = ("fe0", "br1")
    remote_ttl: int | None = None  # IP TTL of client/server packets where HAProxy captures

    @property
    def plen(self) -> int:
        return 64 if self.ipv6 else 24


NETS = {
    "bridged": Net("bridged", "10.232.1.1", "10.232.2.1",
                   ("10.232.1.10", "10.232.1.20", "10.232.1.20"),
                   {"s1": "10.232.2.11", "s2": "10.232.2.12"}),
    "bridged6": Net("bridged", "fd00:232:1::1", "fd00:232:2::1",
                    ("fd00:232:1::10", "fd00:232:1::20", "fd00:232:1::20"),
                    {"s1": "fd00:232:2::11", "s2": "fd00:232:2::12"}, ipv6=True),
    "routed": Net("routed", "10.232.1.1", "10.232.4.1",
                  ("10.232.3.10", "10.232.3.20", "10.232.3.30"),
                  {"s1": "10.232.2.11", "s2": "10.232.2.12"}, capture=("fe0", "be0"),
                  remote_ttl=63),
    "loopback": Net("loopback", "127.0.1.1", "127.0.2.1",
                    ("127.0.3.10", "127.0.3.20", "127.0.3.20"),
                    {"s1": "127.0.2.11", "s2": "127.0.2.12"}, capture=("lo",)),
}

# ------------------------------------------------------------------ intents

# intent -> (mode, route, server behaviour, client action)
INTENTS: dict[str, tuple[str, str, str, str]] = {
    "http-ok": ("http", "c", "ok", "complete"),
    "http-slow": ("http", "c", "slow", "complete"),
    "tcp-ok": ("tcp", "", "ok", "complete"),
    "client-rst-request": ("http", "c", "ok", "rst-request"),
    "client-rst-waiting": ("http", "c", "wait", "rst-wait"),
    "client-rst-midresponse": ("http", "c", "big", "rst-mid"),
    "tcp-client-rst-waiting": ("tcp", "", "wait", "rst-wait"),
    "server-rst-before": ("http", "c", "rst-before", "complete"),
    "server-rst-mid": ("http", "c", "rst-mid", "complete"),
    "tcp-server-rst-before": ("tcp", "", "rst-before", "complete"),
    "tcp-server-rst-mid": ("tcp", "", "rst-mid", "complete"),
    "refused-redispatch": ("http", "r", "ok", "complete"),
    "refused-only": ("http", "d", "ok", "complete"),
    "server-stall": ("http", "c", "stall", "complete"),
    "tcp-server-stall": ("tcp", "", "stall", "complete"),
    "rejected": ("http", "c", "ok", "rejected"),
    "tcp-rejected": ("tcp", "", "ok", "rejected"),
    "client-idle-no-request": ("http", "c", "ok", "idle"),
    "tcp-client-idle": ("tcp", "", "ok", "complete"),
    "http-denied": ("http", "x", "ok", "complete"),
    "http-rejected": ("http", "j", "ok", "complete"),
    "blackhole-redispatch": ("http", "r", "ok", "complete"),
    "blackhole-only": ("http", "d", "ok", "complete"),
    "silent-dropped": ("http", "c", "ok", "rejected"),
    "tcp-silent-dropped": ("tcp", "", "ok", "rejected"),
    "silent-dropped-send": ("http", "c", "ok", "complete"),  # sends its request at once
    # timeout http-request: a head without its end, or trickled; "-nl": the nolinger frontend
    "partial-request": ("http", "c", "ok", "partial"),
    "partial-request-nl": ("http", "c", "ok", "partial"),
    "slowloris": ("http", "c", "ok", "slowloris"),
    "slowloris-nl": ("http", "c", "ok", "slowloris"),
    "http-ok-nl": ("http", "c", "ok", "complete"),
    # overload: `maxconn 1` servers behind /q/ (timeout queue 500ms) and /w/ (10s), a
    # frontend with `maxconn 3`
    "queue-holder": ("http", "q", "hold", "complete"),
    "queue-timeout": ("http", "q", "ok", "complete"),
    "queued-ok": ("http", "w", "slow", "complete"),
    "queued-client-abort": ("http", "w", "slow", "rst-wait"),
    "fe-burst": ("http", "c", "slow", "complete"),
    # keep-alive: several requests per client connection, to servers kept alive or closed
    "ka-ok": ("http", "c", "ok", "keepalive"),
    "ka-leave": ("http", "c", "ok", "keepalive"),
    "ka-close-ok": ("http", "c", "ok", "keepalive"),
    # half-closing clients and clients over a limit
    "http-halfclose": ("http", "c", "ok", "halfclose"),
    "tcp-halfclose": ("tcp", "", "ok", "halfclose"),
    "header-too-big": ("http", "c", "ok", "complete"),
    "body-too-big": ("http", "b", "ok", "complete"),
    "body-ok": ("http", "b", "ok", "complete"),
    "tcp-too-long": ("tcp", "", "ok", "complete"),
    "tcp-ok-limited": ("tcp", "", "ok", "complete"),
    # the network: a download across a lossy leg; a middlebox forging resets
    "http-bulk": ("http", "c", "bulk", "complete"),
    "mbox-back": ("http", "m", "ok", "complete"),
    "mbox-front": ("http", "c", "big", "complete"),
    # server-crash: s2's process is SIGKILLed while it holds these, then restarted. Routes:
    # /k/ -> be_crash (s2 only), /u/ -> be_deaf (s2's deaf port: the request stays unread),
    # 8003 -> be_pool (s2, connections kept idle in HAProxy's pool), 9002 -> s2 in tcp mode
    "crash-pooled": ("http", "c", "ok", "keepalive"),
    "crash-midresponse": ("http", "k", "long", "complete"),
    "crash-unread": ("http", "u", "ok", "complete"),
    "crash-waiting": ("http", "k", "stall", "complete"),
    "tcp-crash": ("tcp", "", "stall", "complete"),
    "crash-refused": ("http", "k", "ok", "complete"),
    "crash-after-ok": ("http", "k", "ok", "complete"),
    # abortonclose: the client gives up (RST or FIN) while queued or while the server is slow
    "aoc-rst-queued": ("http", "q", "ok", "rst-wait"),
    "aoc-fin-queued": ("http", "q", "ok", "fin-wait"),
    "aoc-rst-waiting": ("http", "c", "wait", "rst-wait"),
    "aoc-fin-waiting": ("http", "c", "wait", "fin-wait"),
    "aoc-halfclose": ("http", "c", "wait", "halfclose"),
    # proxy-protocol: through the frontend whose servers get no PROXY header (the forwarded-for
    # and unique-id headers name the client)
    "http-ok-plain": ("http", "c", "ok", "complete"),
    "server-rst-plain": ("http", "c", "rst-before", "complete"),
}
# Per-intent extras for the client spec (ports other than 8000/9000, sizes, timeouts).
INTENT_EXTRA: dict[str, dict] = {
    "tcp-ok": {"read_limit": TCP_OK_BYTES},
    "tcp-ok-limited": {"read_limit": TCP_OK_BYTES, "port": TCP_LIMIT_PORT},
    "partial-request-nl": {"port": NOLINGER_PORT},
    "slowloris-nl": {"port": NOLINGER_PORT},
    "http-ok-nl": {"port": NOLINGER_PORT},
    "fe-burst": {"port": SMALL_PORT},
    "ka-ok": {"port": KEEPALIVE_PORT, "requests": 3},
    "ka-leave": {"port": KEEPALIVE_PORT, "requests": 2, "leave": True},
    "ka-close-ok": {"requests": 3},
    "tcp-halfclose": {"read_limit": 0},
    "header-too-big": {"pad": 20_000},
    "body-too-big": {"body": 50_000},
    "body-ok": {"body": 500},
    "tcp-too-long": {"pad": 3000, "port": TCP_LIMIT_PORT},
    "mbox-front": {"port_range": list(MBOX_PORTS), "read_timeout": 1.5},
    "silent-dropped": {"read_timeout": 3.0},
    "tcp-silent-dropped": {"read_timeout": 3.0},
    "silent-dropped-send": {"read_timeout": 3.0},
    "crash-pooled": {"port": KEEPALIVE_PORT, "requests": 2},
    "tcp-crash": {"port": TCP_CRASH_PORT},
    "http-ok-plain": {"port": PLAIN_PORT},
    "server-rst-plain": {"port": PLAIN_PORT},
}
NOLINGER_INTENTS = {"partial-request-nl", "slowloris-nl", "http-ok-nl"}
# Intents whose server-side flows the backend may never record (refused or dropped SYNs): in
# a scheduled run, at most one of them is active at a time, so time ties their flows.
EXCLUSIVE = {"refused-redispatch", "refused-only", "blackhole-redispatch", "blackhole-only",
             "crash-refused"}

# Whose behaviour an intent's non-routine RSTs come from. Complete exchanges have only
# routine RSTs (plus the refusal itself in a redispatched request).
OWNER = {
    "client-rst-request": "client", "client-rst-waiting": "client",
    "client-rst-midresponse": "client", "tcp-client-rst-waiting": "client",
    "server-rst-before": "server", "server-rst-mid": "server", "tcp-server-rst-before": "server",
    "tcp-server-rst-mid": "server", "refused-redispatch": "server", "refused-only": "server",
    "server-stall": "server", "tcp-server-stall": "server",
    "rejected": "haproxy", "tcp-rejected": "haproxy",
    "client-idle-no-request": "client", "tcp-client-idle": "client",
    "http-denied": "haproxy", "http-rejected": "haproxy",
    "blackhole-redispatch": "haproxy", "blackhole-only": "haproxy",
    "silent-dropped": "haproxy", "tcp-silent-dropped": "haproxy",
    "silent-dropped-send": "haproxy",
    "partial-request": "client", "partial-request-nl": "client", "slowloris": "client",
    "slowloris-nl": "client",
    "queue-timeout": "haproxy", "queued-client-abort": "client",
    "header-too-big": "haproxy", "body-too-big": "haproxy", "tcp-too-long": "haproxy",
    "mbox-back": "network", "mbox-front": "network",
    "health-check-down": "server",
    # a crashed server: its kernel's FINs and RSTs, its refusals while down, and HAProxy's
    # closes of the connections it left (pooled ones included: they ended with the crash)
    "crash-pooled": "server", "crash-midresponse": "server", "crash-unread": "server",
    "crash-waiting": "server", "tcp-crash": "server", "crash-refused": "server",
    "aoc-rst-queued": "client", "aoc-fin-queued": "client", "aoc-rst-waiting": "client",
    "aoc-fin-waiting": "client",
    # a half-close is no abort: the client still reads (and gets HAProxy's 400); it is
    # HAProxy's configured `abortonclose` that takes the FIN for one
    "aoc-halfclose": "haproxy",
    "server-rst-plain": "server",
}
COMPLETE = {"http-ok", "http-slow", "tcp-ok", "refused-redispatch", "blackhole-redispatch",
            "http-ok-nl", "queue-holder", "queued-ok", "fe-burst", "ka-ok", "ka-leave",
            "ka-close-ok", "http-halfclose", "tcp-halfclose", "body-ok", "tcp-ok-limited",
            "http-bulk", "health-check", "crash-after-ok", "http-ok-plain"}
for _intent in COMPLETE:
    OWNER.setdefault(_intent, "haproxy")

# HAProxy's 2-letter termination state each intent must produce (regex); None: no log line.
EXPECTED_STATE: dict[str, str | None] = {
    "http-ok": "--", "http-slow": "--", "tcp-ok": "--",
    "client-rst-request": "C[RH]", "client-rst-waiting": "C[HD]",
    "client-rst-midresponse": "[CS]D", "tcp-client-rst-waiting": "C[DH]",
    "server-rst-before": "SH", "server-rst-mid": "SD", "tcp-server-rst-before": "S[DH]",
    "tcp-server-rst-mid": "SD", "refused-redispatch": "--", "refused-only": "SC",
    "server-stall": "sH", "tcp-server-stall": "s[DH]",
    "rejected": None, "tcp-rejected": None,
    "client-idle-no-request": "cR", "tcp-client-idle": "cD",
    "http-denied": "PR", "http-rejected": "PR",
    "blackhole-redispatch": "--", "blackhole-only": "sC",
    "silent-dropped": None, "tcp-silent-dropped": None, "silent-dropped-send": None,
    "partial-request": "cR", "partial-request-nl": "cR", "slowloris": "cR",
    "slowloris-nl": "cR", "http-ok-nl": "--",
    "queue-holder": "--", "queue-timeout": "sQ", "queued-ok": "--",
    "queued-client-abort": "C[QD]", "fe-burst": "--",
    "ka-ok": "--", "ka-leave": "--", "ka-close-ok": "--",
    "http-halfclose": "--", "tcp-halfclose": "--",
    "header-too-big": "PR", "body-too-big": "PR", "body-ok": "--",
    "tcp-too-long": "PR", "tcp-ok-limited": "--",
    "http-bulk": "--", "mbox-back": "SH", "mbox-front": "CD",
    "crash-pooled": "--", "crash-midresponse": "SD", "crash-unread": "SH",
    "crash-waiting": "SH", "tcp-crash": "--", "crash-refused": "SC", "crash-after-ok": "--",
    "aoc-rst-queued": "CQ", "aoc-fin-queued": "CQ", "aoc-rst-waiting": "C[DH]",
    "aoc-fin-waiting": "CH", "aoc-halfclose": "C[HC]",
    "http-ok-plain": "--", "server-rst-plain": "SH",
}

# ------------------------------------------------------------------ scenarios

NFT_TABLE = "tracer_lab"


def _nft(chain: str, hook: str, rules: Sequence[str]) -> str:
    body = "\n".join(f"        {rule}" for rule in rules)
    return (f"table inet {NFT_TABLE} {{\n    chain {chain} {{\n"
            f"        type filter hook {hook} priority 0; policy accept;\n{body}\n    }}\n}}\n")


# nft rules a scenario adds in one namespace (and removes). Rule comments name what their
# counters count: "loss" packets dropped, "forge" resets forged, "blackhole" SYNs dropped.
BLACKHOLE = ("s2", _nft("input", "input", ['tcp dport 8082 counter drop comment "blackhole"']))


def _loss_rules(percent: int, iface: str = "rb0") -> list[str]:
    """Random loss on one leg (the router's `rb0`: backend; `rf0`: frontend), both directions.
    SYN, FIN and RST are spared: only data and ACKs are lost, so every connection still ends
    as its intent says and the loss shows as retransmissions, not as different outcomes."""
    spare = "tcp flags & (syn | fin | rst) == 0"
    return [f'{way} "{iface}" {spare} numgen random mod 100 < {percent} counter drop '
            'comment "loss"' for way in ("iifname", "oifname")]


# The middlebox (routed topology): `reject with tcp reset` drops the matched packet and sends
# its sender an RST that claims to come from the packet's destination.
#  - backend: HAProxy's request for a path /m/... (its first bytes "GET /m" right after a
#    32-byte TCP header) -> HAProxy gets an RST "from the server";
#  - frontend: HAProxy's first data segment to a client port in MBOX_PORTS -> HAProxy gets
#    an RST "from the client" mid-response.
FORGE_RULES = [
    'iifname "rb0" tcp dport 8080 tcp doff 8 @th,256,48 0x474554202f6d '
    'counter reject with tcp reset comment "forge"',
    f'iifname "rf0" tcp dport {MBOX_PORTS[0]}-{MBOX_PORTS[1]} tcp flags & (syn | fin | rst) == 0 '
    'ip length > 60 counter reject with tcp reset comment "forge"',
]


@dataclass(frozen=True)
class Scenario:
    counts: dict[str, int] | None = None  # a sequential plan (shuffled, seeded)
    schedule: Callable[[random.Random], list[tuple[float, str]]] | None = None  # or this
    net: str = "bridged"
    nolinger: bool = False  # `option nolinger` in the config's defaults (both legs)
    firewall: tuple[tuple[str, str], ...] = ()  # (role, nft ruleset)
    backend_args: dict[str, list[str]] = field(default_factory=dict)  # per server role
    routes: dict[str, str] = field(default_factory=dict)  # intent -> route, if not INTENTS'
    ports: dict[str, int] = field(default_factory=dict)  # intent -> frontend port, likewise
    checks: bool = False  # servers listen on CHECK_PORTS (the config has `check`)
    ttl_column: bool = True  # the truth has the RSTs' `ip_ttl`
    settle_s: float = 2.0  # after the client: the last closes (and log lines) on either leg
    # (server, at, down): SIGKILL that server's process `at` s after the client starts, start
    # it again `down` s later
    crashes: tuple[tuple[str, float, float], ...] = ()
    snaplen: int = SNAPLEN  # dumpcap -s: proxy-protocol's request heads need more
    proxy_listeners: bool = False  # servers also listen behind PROXY protocol headers


def _overload_waves(start: float) -> list[tuple[float, str]]:
    """Three waves, 3 s apart. Queue timeout: a request holds the only slot of s1 in be_q
    (answer after 2 s), two more wait past `timeout queue 500ms`. Queue wait: three requests
    to s2 in be_w (`maxconn 1`, 0.3 s each) are served one after another, a fourth aborts
    while queued. Frontend burst: 10 connections at once to a frontend with `maxconn 3`."""
    t = start
    items = [(t, "queue-holder"), (t + 0.3, "queue-timeout"), (t + 0.35, "queue-timeout"),
             (t + 1.0, "http-ok")]
    t += 3.0
    items += [(t, "queued-ok"), (t + 0.05, "queued-ok"), (t + 0.1, "queued-client-abort"),
              (t + 0.15, "queued-ok"), (t + 0.5, "http-ok")]
    t += 3.0
    items += [(t + 0.01 * number, "fe-burst") for number in range(10)]
    return items


def _overload_schedule(rng: random.Random) -> list[tuple[float, str]]:
    return [item for cycle in range(4) for item in _overload_waves(0.5 + 9.0 * cycle)]


CRASH_CYCLE_S, CRASH_AT_S, CRASH_DOWN_S = 11.0, 3.0, 5.7


def _crash_schedule(rng: random.Random) -> list[tuple[float, str]]:
    """Three cycles of 11 s. In each, s2 holds (at CRASH_AT_S) two idle pooled connections,
    two responses it is still sending, two requests it never read, one it read and sits on,
    and a tcp-mode connection; after the kill, two requests find its ports closed (2.6 s
    apart: their refused SYNs are tied by time); after its restart it serves again. s1
    serves the normal traffic throughout."""
    items = []
    for cycle in range(3):
        c = 0.5 + CRASH_CYCLE_S * cycle
        items += [(c, "crash-pooled"), (c + 0.2, "crash-pooled"), (c + 0.5, "http-ok"),
                  (c + 1.0, "crash-midresponse"), (c + 1.1, "crash-unread"),
                  (c + 1.2, "crash-midresponse"), (c + 1.3, "crash-unread"),
                  (c + 1.4, "crash-waiting"), (c + 1.6, "tcp-crash"), (c + 2.0, "http-ok"),
                  (c + 2.2, "tcp-ok"),
                  (c + CRASH_AT_S + 0.5, "crash-refused"), (c + 4.0, "http-ok"),
                  (c + 4.5, "tcp-ok"), (c + CRASH_AT_S + 3.1, "crash-refused"),
                  (c + 9.6, "crash-after-ok"), (c + 10.0, "http-ok")]
    return items


def _abortonclose_schedule(rng: random.Random) -> list[tuple[float, str]]:
    """Six waves, 3 s apart: a request holds be_q's only slot (s1, `maxconn 1`) for 2 s;
    behind it two requests queue and their clients give up (RST, FIN) after 0.25 s, a third
    waits its turn; clients of a slow server (1.5 s) give up by RST, by FIN, or half-close;
    normal traffic in between."""
    items = []
    for wave in range(6):
        w = 0.5 + 3.0 * wave
        items += [(w, "queue-holder"), (w + 0.3, "aoc-rst-queued"), (w + 0.4, "queued-ok"),
                  (w + 0.5, "aoc-fin-queued"), (w + 0.7, "aoc-rst-waiting"),
                  (w + 1.0, "aoc-fin-waiting"), (w + 1.3, "aoc-halfclose"),
                  (w + 1.6, "http-ok"), (w + 2.0, "http-slow"), (w + 2.3, "tcp-ok")]
    return items


def _proxy_schedule(rng: random.Random) -> list[tuple[float, str]]:
    """Eight waves, 2 s apart, of 14 connections started 5 ms apart (HAProxy holds several
    client streams at every server connect: timing alone is ambiguous), in a shuffled order:
    http and tcp streams to servers that get PROXY protocol v1 or v2 headers, http streams to
    servers that get only the forwarded-for and unique-id headers, and aborts on both legs."""
    wave = ["http-ok", "http-ok", "http-slow", "tcp-ok", "tcp-ok", "client-rst-waiting",
            "server-rst-before", "tcp-client-rst-waiting", "http-ok-plain", "http-ok-plain",
            "http-ok-plain", "server-rst-plain", "http-slow", "tcp-server-rst-before"]
    items = []
    for number in range(8):
        order = list(wave)
        rng.shuffle(order)
        items += [(0.5 + 2.0 * number + 0.005 * k, intent) for k, intent in enumerate(order)]
    return items


MIXED_COUNTS = {
    "http-ok": 80, "http-slow": 10, "tcp-ok": 30, "client-rst-request": 10,
    "client-rst-waiting": 10, "client-rst-midresponse": 8, "tcp-client-rst-waiting": 8,
    "server-rst-before": 10, "server-rst-mid": 10, "tcp-server-rst-before": 6,
    "tcp-server-rst-mid": 6, "refused-redispatch": 5, "refused-only": 3,
    "blackhole-redispatch": 4, "blackhole-only": 2, "server-stall": 6, "tcp-server-stall": 4,
    "rejected": 8, "tcp-rejected": 4, "client-idle-no-request": 6, "tcp-client-idle": 5,
    "http-denied": 6, "http-rejected": 6, "silent-dropped": 4, "tcp-silent-dropped": 3,
    "partial-request": 5, "partial-request-nl": 4, "slowloris": 4, "slowloris-nl": 3,
    "http-ok-nl": 10, "ka-ok": 10, "ka-leave": 5, "ka-close-ok": 8, "http-halfclose": 6,
    "tcp-halfclose": 5, "header-too-big": 5, "body-too-big": 5, "body-ok": 5,
    "tcp-too-long": 4, "tcp-ok-limited": 4, "http-bulk": 10, "mbox-back": 6, "mbox-front": 6,
}
MIXED_GAP_S = 0.1


def _mixed_schedule(rng: random.Random) -> list[tuple[float, str]]:
    """Every intent interleaved: one connection every 0.1 s (they overlap: many last longer),
    the EXCLUSIVE ones at least 2.6 s apart, overload waves every 15 s."""
    intents = [intent for intent, n in MIXED_COUNTS.items() for _ in range(n)]
    rng.shuffle(intents)
    exclusive = [intent for intent in intents if intent in EXCLUSIVE]
    rest = [intent for intent in intents if intent not in EXCLUSIVE]
    items = [(0.5 + MIXED_GAP_S * number, intent) for number, intent in enumerate(rest)]
    span = items[-1][0]
    step = max(2.6, span / len(exclusive))
    items += [(0.55 + step * number, intent) for number, intent in enumerate(exclusive)]
    for start in range(4, int(span) - 6, 15):
        items += _overload_waves(float(start))
    return items


SCENARIOS: dict[str, Scenario] = {
    "client-abort": Scenario({"http-ok": 8, "tcp-ok": 4, "client-rst-request": 6,
                              "client-rst-waiting": 6, "client-rst-midresponse": 5,
                              "tcp-client-rst-waiting": 5}, ttl_column=False),
    "server-reset": Scenario({"http-ok": 8, "tcp-ok": 4, "server-rst-before": 6,
                              "server-rst-mid": 6, "tcp-server-rst-before": 4,
                              "tcp-server-rst-mid": 4}, ttl_column=False),
    "server-refused": Scenario({"http-ok": 8, "refused-redispatch": 12, "refused-only": 6},
                               ttl_column=False),
    "timeout-server": Scenario({"http-ok": 8, "http-slow": 4, "tcp-ok": 3, "server-stall": 8,
                                "tcp-server-stall": 4}, ttl_column=False),
    "tcp-reject": Scenario({"http-ok": 10, "tcp-ok": 5, "rejected": 10, "tcp-rejected": 6},
                           ttl_column=False),
    "timeout-client": Scenario({"http-ok": 8, "tcp-ok": 4, "client-idle-no-request": 6,
                                "tcp-client-idle": 6}, ttl_column=False),
    "nolinger": Scenario({"http-ok": 8, "tcp-ok": 4, "client-idle-no-request": 5,
                          "tcp-client-idle": 5, "client-rst-waiting": 3}, nolinger=True,
                         ttl_column=False),
    "http-deny": Scenario({"http-ok": 8, "tcp-ok": 3, "http-denied": 6, "http-rejected": 6},
                          ttl_column=False),
    "timeout-connect": Scenario({"http-ok": 8, "tcp-ok": 3, "blackhole-redispatch": 8,
                                 "blackhole-only": 4}, firewall=(BLACKHOLE,),
                                ttl_column=False),
    "silent-drop": Scenario({"http-ok": 8, "tcp-ok": 4, "silent-dropped": 6,
                             "tcp-silent-dropped": 4}),
    "timeout-http-request": Scenario({"http-ok": 6, "http-ok-nl": 6, "tcp-ok": 3,
                                      "partial-request": 6, "partial-request-nl": 6,
                                      "slowloris": 4, "slowloris-nl": 4}),
    "overload": Scenario(schedule=_overload_schedule),
    "health-check": Scenario({"http-ok": 20, "http-slow": 6, "tcp-ok": 10,
                              "server-rst-before": 4, "client-rst-waiting": 4},
                             checks=True,
                             backend_args={"s2": ["--check-down-at", "5",
                                                  "--check-down-for", "6"]}),
    "keepalive": Scenario({"ka-ok": 10, "ka-leave": 5, "ka-close-ok": 8, "http-ok": 5,
                           "tcp-ok": 2}, backend_args={"s1": ["--idle", "30"],
                                                       "s2": ["--idle", "30"]},
                          settle_s=7.0),
    "halfclose-limits": Scenario({"http-ok": 6, "tcp-ok": 3, "http-halfclose": 6,
                                  "tcp-halfclose": 5, "header-too-big": 5, "body-too-big": 5,
                                  "body-ok": 4, "tcp-too-long": 5, "tcp-ok-limited": 3}),
    "loss": Scenario({"http-ok": 10, "http-bulk": 12, "tcp-ok": 4, "client-rst-midresponse": 5,
                      "server-rst-mid": 5, "client-rst-waiting": 4}, net="routed",
                     firewall=(("rtr", _nft("forward", "forward", _loss_rules(3))),)),
    "middlebox": Scenario({"http-ok": 10, "tcp-ok": 4, "mbox-back": 6, "mbox-front": 6,
                           "server-rst-before": 3}, net="routed",
                          firewall=(("rtr", _nft("forward", "forward", FORGE_RULES)),),
                          settle_s=7.0),
    "loopback": Scenario({"http-ok": 8, "tcp-ok": 4, "client-rst-waiting": 4,
                          "client-rst-midresponse": 3, "server-rst-before": 4,
                          "server-rst-mid": 3, "refused-redispatch": 4, "rejected": 4},
                         net="loopback"),
    "ipv6": Scenario({"http-ok": 8, "tcp-ok": 4, "client-rst-waiting": 4,
                      "client-rst-midresponse": 3, "server-rst-before": 4, "server-rst-mid": 3,
                      "refused-redispatch": 4, "rejected": 4}, net="bridged6"),
    "mixed": Scenario(schedule=_mixed_schedule, net="routed", checks=True,
                      firewall=(BLACKHOLE, ("rtr", _nft("forward", "forward",
                                                        FORGE_RULES + _loss_rules(1)))),
                      backend_args={"s2": ["--check-down-at", "20", "--check-down-for", "8"]},
                      routes={"blackhole-redispatch": "h", "blackhole-only": "k"},
                      ports={"tcp-client-idle": 9003},
                      settle_s=3.0),
    "server-crash": Scenario(schedule=_crash_schedule,
                             crashes=tuple(("s2", 0.5 + CRASH_CYCLE_S * cycle + CRASH_AT_S,
                                            CRASH_DOWN_S) for cycle in range(3)),
                             backend_args={"s2": ["--idle", "30", "--deaf",
                                                  f"10.232.2.12:{DEAF_PORT}"]}),
    "abortonclose": Scenario(schedule=_abortonclose_schedule, routes={"queued-ok": "q"}),
    "loss-frontend": Scenario({"http-ok": 10, "http-bulk": 12, "tcp-ok": 4,
                               "client-rst-midresponse": 5, "server-rst-mid": 5,
                               "client-rst-waiting": 4}, net="routed",
                              firewall=(("rtr", _nft("forward", "forward",
                                                     _loss_rules(3, "rf0"))),)),
    "silent-drop-netadmin": Scenario({"http-ok": 8, "tcp-ok": 4, "silent-dropped": 5,
                                      "tcp-silent-dropped": 4, "silent-dropped-send": 5}),
    "proxy-protocol": Scenario(schedule=_proxy_schedule, snaplen=512, proxy_listeners=True),
}
# `mixed` is the README's demo: its capture is also copied to captures/demo-haproxy.pcapng.
DEMO = {"mixed": HERE.parent / "demo-haproxy.pcapng"}
SHORT_SCENARIO = {"client-abort": {"http-ok": 3, "tcp-ok": 2, "client-rst-waiting": 3,
                                   "tcp-client-rst-waiting": 2},
                  "server-reset": {"http-ok": 2, "server-rst-before": 2, "server-rst-mid": 2,
                                   "tcp-server-rst-mid": 2},
                  "middlebox": {"http-ok": 2, "mbox-back": 2, "mbox-front": 2}}


def _spec(number: int, intent: str, net: Net, scenario: Scenario) -> dict:
    mode, route, behaviour, action = INTENTS[intent]
    extra = dict(INTENT_EXTRA.get(intent, {}))
    src = net.clients[0]
    if intent in ("rejected", "tcp-rejected"):
        src = net.clients[1]
    elif intent in ("silent-dropped", "tcp-silent-dropped", "silent-dropped-send"):
        src = net.clients[2]
    spec = {"id": f"{number:03d}", "intent": intent, "mode": mode,
            "route": scenario.routes.get(intent, route), "behaviour": behaviour,
            "action": action, "src": src, "dst": net.front,
            "port": HTTP_PORT if mode == "http" else TCP_PORT, "read_limit": 0}
    spec.update(extra)
    if intent in scenario.ports:
        spec["port"] = scenario.ports[intent]
    return spec


def make_plan(scenario: Scenario, seed: int, counts: dict[str, int] | None = None) -> list[dict]:
    net = NETS[scenario.net]
    rng = random.Random(seed)  # a fixed mix: re-runs tell the same story
    if scenario.schedule is None or counts is not None:
        intents = [intent for intent, n in (counts or scenario.counts).items() for _ in range(n)]
        rng.shuffle(intents)
        return [_spec(number, intent, net, scenario) for number, intent in enumerate(intents, 1)]
    items = sorted(scenario.schedule(rng))
    plan = []
    for number, (at, intent) in enumerate(items, 1):
        spec = _spec(number, intent, net, scenario)
        spec["at"] = round(at, 3)
        plan.append(spec)
    return plan


# ------------------------------------------------------------------ namespaces and processes

def _check(argv: Sequence[str], timeout: float = 30, stdin: str | None = None) -> str:
    proc = subprocess.run(list(argv), input=stdin, capture_output=True, text=True,
                          timeout=timeout, check=False)
    if proc.returncode != 0:
        raise LabError(f"{' '.join(argv)}: {proc.stderr.strip() or proc.returncode}")
    return proc.stdout


ROLES = {"bridged": ("cli", "hap", "s1", "s2"), "routed": ("cli", "rtr", "hap", "s1", "s2"),
         "loopback": ("lo",)}


@dataclass
class Lab:
    base: str
    workdir: Path
    net: Net = NETS["bridged"]
    _created: list[str] = field(default_factory=list)
    _procs: list[subprocess.Popen] = field(default_factory=list)
    _firewalled: list[str] = field(default_factory=list)

    def ns(self, role: str) -> str:
        # On the loopback topology every role lives in the one namespace.
        return f"{self.base}-{'lo' if self.net.kind == 'loopback' else role}"

    def build(self) -> None:
        ipv6_off = 0 if self.net.ipv6 else 1
        for role in ROLES[self.net.kind]:
            name = self.ns(role)
            _check(["ip", "netns", "add", name])  # fails on an existing name: never adopt one
            self._created.append(name)
            self.sh(role, f"sysctl -qw net.ipv6.conf.all.disable_ipv6={ipv6_off} "
                          f"net.ipv6.conf.default.disable_ipv6={ipv6_off}; ip link set lo up")
        # Ephemeral ports above MBOX_PORTS: only a client that asks for one gets a port the
        # middlebox resets (the kernel's ephemeral range is per namespace).
        self.sh("cli", f"sysctl -qw net.ipv4.ip_local_port_range='{MBOX_PORTS[1] + 1} 65000'")
        if self.net.kind == "bridged":
            self._build_bridged()
        elif self.net.kind == "routed":
            self._build_routed()

    def _veth(self, role: str, name: str, peer_role: str, peer: str) -> None:
        _check(["ip", "-n", self.ns(role), "link", "add", name, "type", "veth", "peer",
                "name", peer, "netns", self.ns(peer_role)])

    def _addr(self, role: str, iface: str, addr: str, plen: int | None = None) -> None:
        nodad = " nodad" if ":" in addr else ""
        self.sh(role, f"ip addr add {addr}/{plen or self.net.plen} dev {iface}{nodad}")

    def _up(self, links: dict[str, list[str]]) -> None:
        for role, ifaces in links.items():
            for iface in ifaces:
                rps = ("" if iface.startswith(("br", "rbr")) else
                       f"; for q in /sys/class/net/{iface}/queues/rx-*; "
                       "do echo 1 > $q/rps_cpus; done")
                self.sh(role, f"ip link set {iface} gso_max_segs 1 up{rps}")

    def _build_bridged(self) -> None:
        net = self.net
        self._veth("hap", "fe0", "cli", "cli0")
        _check(["ip", "-n", self.ns("hap"), "link", "add", "br1", "type", "bridge"])
        for number, server in ((1, "s1"), (2, "s2")):
            self._veth("hap", f"p{number}", server, "srv0")
            _check(["ip", "-n", self.ns("hap"), "link", "set", f"p{number}", "master", "br1"])
        for addr in sorted(set(net.clients)):
            self._addr("cli", "cli0", addr)
        self._addr("hap", "fe0", net.front)
        self._addr("hap", "br1", net.back)
        for server, addr in net.servers.items():
            self._addr(server, "srv0", addr)
        self._up({"cli": ["cli0"], "hap": ["fe0", "p1", "p2", "br1"], "s1": ["srv0"],
                  "s2": ["srv0"]})

    def _build_routed(self) -> None:
        net = self.net
        self._veth("rtr", "rc0", "cli", "cli0")
        self._veth("rtr", "rf0", "hap", "fe0")
        self._veth("rtr", "rb0", "hap", "be0")
        _check(["ip", "-n", self.ns("rtr"), "link", "add", "rbr", "type", "bridge"])
        for number, server in ((1, "s1"), (2, "s2")):
            self._veth("rtr", f"q{number}", server, "srv0")
            _check(["ip", "-n", self.ns("rtr"), "link", "set", f"q{number}", "master", "rbr"])
        for addr in sorted(set(net.clients)):
            self._addr("cli", "cli0", addr)
        self._addr("rtr", "rc0", "10.232.3.254")
        self._addr("rtr", "rf0", "10.232.1.254")
        self._addr("rtr", "rb0", "10.232.4.254")
        self._addr("rtr", "rbr", "10.232.2.254")
        self._addr("hap", "fe0", net.front)
        self._addr("hap", "be0", net.back)
        for server, addr in net.servers.items():
            self._addr(server, "srv0", addr)
        self._up({"cli": ["cli0"], "rtr": ["rc0", "rf0", "rb0", "q1", "q2", "rbr"],
                  "hap": ["fe0", "be0"], "s1": ["srv0"], "s2": ["srv0"]})
        self.sh("rtr", "sysctl -qw net.ipv4.ip_forward=1")
        self.sh("cli", "ip route add default via 10.232.3.254")
        self.sh("hap", "ip route add 10.232.3.0/24 via 10.232.1.254 && "
                       "ip route add 10.232.2.0/24 via 10.232.4.254")
        for server in ("s1", "s2"):
            self.sh(server, "ip route add default via 10.232.2.254")

    def firewall(self, role: str, ruleset: str) -> None:
        self._firewalled.append(role)
        _check(["ip", "netns", "exec", self.ns(role), "nft", "-f", "-"], stdin=ruleset)

    def nft_counters(self) -> dict[str, int]:
        """Packets counted by the scenario's nft rules, summed per rule comment."""
        counts: dict[str, int] = {}
        for role in self._firewalled:
            text = self.sh(role, f"nft list table inet {NFT_TABLE}")
            for packets, comment in re.findall(r'counter packets (\d+) .*?comment "(\w+)"',
                                               text):
                counts[comment] = counts.get(comment, 0) + int(packets)
        return counts

    def sh(self, role: str, script: str) -> str:
        return _check(["ip", "netns", "exec", self.ns(role), "sh", "-c", script])

    def spawn(self, role: str, argv: Sequence[str], log: Path) -> subprocess.Popen:
        # `ip netns exec` execs the command: the PID is the command's own.
        with open(log, "wb") as out:
            proc = subprocess.Popen(["ip", "netns", "exec", self.ns(role), *argv],
                                    stdin=subprocess.DEVNULL, stdout=out,
                                    stderr=subprocess.STDOUT)
        self._procs.append(proc)
        return proc

    def wait_for(self, proc: subprocess.Popen, log: Path, pattern: str, what: str) -> None:
        deadline = time.monotonic() + READY_S
        while time.monotonic() < deadline:
            text = log.read_text(errors="replace")
            if re.search(pattern, text):
                return
            if proc.poll() is not None:
                raise LabError(f"{what} exited ({proc.returncode}): {text.strip()[-500:]}")
            time.sleep(0.05)
        raise LabError(f"{what} not ready after {READY_S} s: "
                       f"{log.read_text(errors='replace').strip()[-500:]}")

    def wait_listening(self, role: str, port: int, what: str) -> None:
        deadline = time.monotonic() + READY_S
        while time.monotonic() < deadline:
            if f":{port} " in self.sh(role, "ss -Hltn"):
                return
            time.sleep(0.05)
        raise LabError(f"{what} not listening on {port} after {READY_S} s")

    def stop(self, proc: subprocess.Popen) -> int:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=STOP_GRACE_S)
        if proc in self._procs:
            self._procs.remove(proc)
        return proc.returncode

    def teardown(self) -> None:
        try:
            for proc in list(self._procs):
                self.stop(proc)
        finally:
            errors = []
            for role in self._firewalled:  # also goes with the namespace; removed explicitly
                if os.path.exists(f"/run/netns/{self.ns(role)}"):
                    subprocess.run(["ip", "netns", "exec", self.ns(role), "nft", "delete",
                                    "table", "inet", NFT_TABLE], capture_output=True,
                                   timeout=30, check=False)
            for name in self._created:
                if os.path.exists(f"/run/netns/{name}"):
                    done = subprocess.run(["ip", "netns", "del", name], capture_output=True,
                                          text=True, timeout=30, check=False)
                    if done.returncode != 0:
                        errors.append(f"{name}: {done.stderr.strip()}")
            shutil.rmtree(self.workdir, ignore_errors=True)
            if errors:
                raise LabError("could not delete namespaces: " + "; ".join(errors))


def our_namespaces() -> list[str]:
    out = _check(["ip", "netns", "list"])
    return [line.split()[0] for line in out.splitlines()
            if line.strip() and line.split()[0].startswith(NS_PREFIX)]


# ------------------------------------------------------------------ one scenario

def capture_path(name: str, out_dir: Path) -> Path:
    """Where a scenario's pcapng goes: the demo's into captures/, the others into out_dir."""
    if name in DEMO and out_dir.resolve() == (HERE / "out").resolve():
        return DEMO[name]
    return out_dir / f"{name}.pcapng"


def run_scenario(name: str, out_dir: Path, counts: dict[str, int] | None = None,
                 seed: int = 4) -> dict:
    """Run one scenario end to end; write <name>.pcapng/.truth.csv/.haproxy.log into out_dir."""
    if os.geteuid() != 0:
        raise LabError("the lab needs root (ip netns, dumpcap)")
    scenario = SCENARIOS[name]
    net = NETS[scenario.net]
    config = HERE / f"haproxy-{name}.cfg"
    if not config.exists():
        raise LabError(f"no HAProxy config {config}")
    plan = make_plan(scenario, seed, counts)
    scheduled = all("at" in spec for spec in plan)
    suffix = secrets.token_hex(3)
    workdir = Path(tempfile.mkdtemp(prefix=f"{NS_PREFIX}{suffix}-"))
    lab = Lab(base=f"{NS_PREFIX}{suffix}", workdir=workdir, net=net)
    try:
        lab.build()
        for role, ruleset in scenario.firewall:
            lab.firewall(role, ruleset)
        py = sys.executable
        backends = []

        def start_backend(server: str, addr: str) -> subprocess.Popen:
            # A restarted server (server-crash) logs into a file of its own.
            log = workdir / f"backend-{server}-{len(backends)}.log"
            argv = [py, str(HERE / "backend.py"), "--http", f"{addr}:{SERVER_HTTP}",
                    "--tcp", f"{addr}:{SERVER_TCP}", "--duration", "300"]
            if scenario.checks:
                argv += [arg for port in CHECK_PORTS for arg in ("--check", f"{addr}:{port}")]
            if scenario.proxy_listeners:
                argv += ["--proxy-http", f"{addr}:{SERVER_PROXY_HTTP}",
                         "--proxy-tcp", f"{addr}:{SERVER_PROXY_TCP}"]
            proc = lab.spawn(server, argv + scenario.backend_args.get(server, []), log)
            lab.wait_for(proc, log, r"READY", f"backend {server}")
            backends.append((server, proc, log))
            return proc

        for server, addr in net.servers.items():
            start_backend(server, addr)
        capture = workdir / "capture.pcapng"
        dumpcap_log = workdir / "dumpcap.log"
        ifaces = [arg for iface in net.capture for arg in ("-i", iface, "-f", "tcp")]
        dumpcap = lab.spawn("hap", ["dumpcap", "-q", "-s", str(scenario.snaplen), *ifaces,
                                    "-a", "duration:280", "-w", str(capture)], dumpcap_log)
        lab.wait_for(dumpcap, dumpcap_log, r"File:", "dumpcap")
        time.sleep(0.3)
        haproxy_log = workdir / "haproxy.log"
        haproxy = lab.spawn("hap", ["haproxy", "-db", "-f", str(config)], haproxy_log)
        lab.wait_listening("hap", HTTP_PORT, "haproxy")
        lab.wait_listening("hap", TCP_PORT, "haproxy")
        if scenario.checks:
            time.sleep(1.0)  # the first health checks: servers UP before traffic
        plan_path = workdir / "plan.json"
        plan_path.write_text(json.dumps(plan))
        client_log = workdir / "client.log"
        deadline = 200 if not scheduled else max(spec["at"] for spec in plan) + 40
        client = lab.spawn("cli", [py, str(HERE / "client.py"), str(plan_path),
                                   "--deadline", str(deadline)], client_log)
        crashes = _crash_servers(lab, scenario, backends, start_backend, time.monotonic())
        try:
            client.wait(timeout=deadline + 30)
        except subprocess.TimeoutExpired as exc:
            raise LabError("client driver overran its deadline") from exc
        if client.returncode != 0:
            raise LabError(f"client failed: {client_log.read_text()[-800:]}")
        time.sleep(scenario.settle_s)  # the last closes on either leg
        lab.stop(dumpcap)
        lab.stop(haproxy)  # after dumpcap: its shutdown is not part of the scenario
        for _, proc, _ in backends:
            lab.stop(proc)
        counters = lab.nft_counters()
        clients = _json_lines(client_log)
        servers = [dict(rec, server=server) for server, _, log in backends
                   for rec in _json_lines(log)]
        log_lines = [line for line in haproxy_log.read_text(errors="replace").splitlines()
                     if line.strip()]
        rows, summary = build_truth(capture, plan, clients, servers, log_lines, net,
                                    nolinger=scenario.nolinger, scheduled=scheduled)
        forged = sum(row["sender_role"] == "network" for row in rows)
        if forged != counters.get("forge", 0):
            raise LabError(f"lab bug: {forged} RSTs with role network, the middlebox forged "
                           f"{counters.get('forge', 0)}")
        summary["nft_counters"] = counters
        if crashes:
            summary["crashes"] = crashes
        out_dir.mkdir(parents=True, exist_ok=True)
        staged = workdir / "staged"
        staged.mkdir()
        shutil.copy(capture, staged / "capture.pcapng")
        (staged / f"{name}.haproxy.log").write_text("\n".join(log_lines) + "\n")
        with open(staged / f"{name}.truth.csv", "w", newline="") as handle:
            writer = csv.DictWriter(handle, TRUTH_FIELDS + (["ip_ttl"] if scenario.ttl_column
                                                            else []), extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)
        for path in staged.iterdir():
            path.chmod(0o644)
            target = (capture_path(name, out_dir) if path.name == "capture.pcapng"
                      else out_dir / path.name)
            shutil.move(str(path), target)
        summary["scenario"] = name
        summary["capture"] = str(capture_path(name, out_dir))
        return summary
    finally:
        lab.teardown()


def _crash_servers(lab: Lab, scenario: Scenario, backends: list, start_backend: Callable,
                   started: float) -> list[dict]:
    """Kill each crashing server's process by its PID with SIGKILL at its time (the kernel
    closes what it held: FIN, or RST where bytes were unread; its ports refuse until the
    restart), then start it again. Returns what was done, with epoch times."""
    done = []
    for server, at, down in sorted(scenario.crashes, key=lambda crash: crash[1]):
        time.sleep(max(started + at - time.monotonic(), 0))
        live = [proc for name, proc, _ in backends if name == server and proc.poll() is None]
        if len(live) != 1:
            raise LabError(f"crash of {server}: {len(live)} live processes, expected 1")
        proc = live[0]
        cmdline = Path(f"/proc/{proc.pid}/cmdline").read_bytes()
        if b"backend.py" not in cmdline:  # `ip netns exec` execs: the PID is the backend's
            raise LabError(f"crash of {server}: PID {proc.pid} is not the backend: {cmdline!r}")
        killed = time.time()
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=STOP_GRACE_S)
        time.sleep(max(started + at + down - time.monotonic(), 0))
        start_backend(server, lab.net.servers[server])
        done.append({"server": server, "pid": proc.pid, "killed": round(killed, 6),
                     "restarted": round(time.time(), 6)})
    return done


def _json_lines(path: Path) -> list[dict]:
    records = []
    for line in path.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            records.append(json.loads(line))
    if any("error" in rec for rec in records):
        raise LabError(f"{path.name}: {[rec for rec in records if 'error' in rec]}")
    return records


# ------------------------------------------------------------------ ground truth

def tshark_tcp(capture: Path) -> list[dict]:
    """Every TCP segment (not quoted in ICMP) with the fields the truth needs."""
    fields = ["frame.number", "frame.time_epoch", "ip.src", "ipv6.src", "tcp.srcport",
              "ip.dst", "ipv6.dst", "tcp.dstport", "tcp.stream", "tcp.flags.reset",
              "tcp.flags.syn", "tcp.flags.ack", "tcp.flags.fin", "ip.ttl", "ipv6.hlim",
              "tcp.analysis.retransmission"]
    argv = ["tshark", "-n", "-r", str(capture), "-Y", "tcp && !icmp && !icmpv6", "-T", "fields",
            "-E", "separator=\t"]
    for name in fields:
        argv += ["-e", name]
    out = _check(argv, timeout=300)
    frames = []
    for line in out.splitlines():
        frame = dict(zip(fields, line.split("\t"), strict=True))
        frames.append({"frame": int(frame["frame.number"]),
                       "time": float(frame["frame.time_epoch"]),
                       "src": frame["ip.src"] or frame["ipv6.src"],
                       "sport": int(frame["tcp.srcport"]),
                       "dst": frame["ip.dst"] or frame["ipv6.dst"],
                       "dport": int(frame["tcp.dstport"]),
                       "stream": int(frame["tcp.stream"]),
                       "rst": frame["tcp.flags.reset"] in ("1", "True"),
                       "syn": frame["tcp.flags.syn"] in ("1", "True"),
                       "ack": frame["tcp.flags.ack"] in ("1", "True"),
                       "fin": frame["tcp.flags.fin"] in ("1", "True"),
                       "ttl": int(frame["ip.ttl"] or frame["ipv6.hlim"]),
                       "resent": bool(frame["tcp.analysis.retransmission"])})
    return frames


def _role(ip: str, ttl: int, net: Net) -> str:
    if ip in (net.front, net.back):
        return "haproxy"
    if net.remote_ttl is not None and ttl != net.remote_ttl:
        return "network"  # claims a client's or server's address, but did not cross the router
    if ip in net.clients:
        return "client"
    if ip in net.servers.values():
        return "server"
    return "network"


LOG_SUFFIX = re.compile(r"lab:ts=(\S\S) bsrc=(\S*) rc=(\S+)$")


def parse_log(lines: list[str]) -> dict[str, list[dict]]:
    """HAProxy's stream log lines by client ip:port (several per keep-alive connection)."""
    by_client: dict[str, list[dict]] = {}
    for line in lines:
        match = LOG_SUFFIX.search(line)
        if not match:
            continue
        by_client.setdefault(line.split()[0], []).append(
            {"state": match.group(1), "bsrc": match.group(2), "retries": match.group(3),
             "line": line})
    return by_client


def _classify(intent: str, leg: str, sender: str,
              nolinger: bool = False) -> tuple[str, bool] | None:
    """(root cause, routine) of an RST, or None when the intent cannot explain it.

    Routine: HAProxy's by-design RST after a complete exchange (or a health check), on the
    server side (HAProxy closes first and resets to avoid TIME_WAIT) or, under `option
    nolinger`, on either side.
    """
    owner = OWNER[intent]
    if intent in COMPLETE:
        if sender == "haproxy" and (leg == "backend" or nolinger):
            return "haproxy", True
        if intent == "refused-redispatch" and leg == "backend" and sender == "server":
            return "server", False  # the closed port's refusal
        return None
    allowed = {"client": {"client", "haproxy"}, "server": {"server", "haproxy"},
               "haproxy": {"haproxy"}, "network": {"network", "haproxy"}}[owner]
    if sender not in allowed:
        return None
    return owner, False


CHECK_CONN = {"hc": "health-check", "hc-down": "health-check-down"}


def _endpoint(frame: dict, ip: str) -> tuple[str, str]:
    """(this ip's end "ip:port", the other end "ip:port") of a frame's flow."""
    here = (frame["src"], frame["sport"]) if frame["src"] == ip else (frame["dst"], frame["dport"])
    there = (frame["dst"], frame["dport"]) if frame["src"] == ip else (frame["src"], frame["sport"])
    return f"{here[0]}:{here[1]}", f"{there[0]}:{there[1]}"


def _map_backend(stream_first: dict[int, dict], spans: dict[int, tuple[float, float]],
                 net: Net, clients: list[dict],
                 servers: list[dict], logs: dict[str, list[dict]], scheduled: bool,
                 problems: list[str], refused: dict[int, bool]) -> dict[int, list[tuple[float, str]]]:
    """Backend flow -> [(time, connection id)] of the requests it carried. `refused`: flows
    whose SYN the server answered with an RST (only used at a check port's open/close instant)."""
    by_src = {rec["src"]: rec for rec in clients}
    starts = sorted((rec["start"], rec["id"]) for rec in clients)
    requests: dict[str, list[tuple[float, str]]] = {}
    for rec in servers:
        if rec.get("req"):
            requests.setdefault(rec["peer"], []).append((rec["t"], rec["id"]))
    # HAProxy closes server connections with RSTs (no TIME_WAIT), so its source ports come
    # round again within a run: a record names a flow only together with its time.
    logged: dict[str, list[dict]] = {}
    for src, entries in logs.items():
        for entry in entries:
            if src in by_src:
                logged.setdefault(entry["bsrc"], []).append(by_src[src])
    # A server's check ports were surely closed from the end of its "down" change to the
    # start of its "up" change; within a change (under a millisecond) a SYN may find either.
    down: dict[str, list[list[float]]] = {}
    for rec in servers:
        if rec.get("check") == "down":
            down.setdefault(net.servers[rec["server"]], []).append(
                [rec["t0"], rec["t"], float("inf"), float("inf")])
        elif rec.get("check") == "up":
            down[net.servers[rec["server"]]][-1][2:] = [rec["t0"], rec["t"]]
    mapped: dict[int, list[tuple[float, str]]] = {}
    for stream, first in stream_first.items():
        if net.front in (first["src"], first["dst"]):
            continue
        t = first["time"]
        haproxy_end, server_end = _endpoint(first, net.back)
        server_ip, _, server_port = server_end.rpartition(":")
        if int(server_port) in CHECK_PORTS:
            is_down = False
            for closing, closed, opening, opened in down.get(server_ip, []):
                if closed <= t <= opening:
                    is_down = True
                elif closing <= t < closed or opening < t <= opened:  # the change's own instant
                    is_down = refused.get(stream, False)
            mapped[stream] = [(t, "hc-down" if is_down else "hc")]
            continue
        first_t, last_t = spans[stream]
        recorded = sorted(item for item in requests.get(haproxy_end, [])
                          if first_t - 0.01 <= item[0] <= last_t + 0.01)
        by_log = [rec["id"] for rec in logged.get(haproxy_end, [])
                  if rec["start"] - 0.01 <= t <= rec["end"] + 0.01]
        if not scheduled:
            earlier = [conn for start, conn in starts if start <= t + 0.001]
            if not earlier:
                problems.append(f"backend stream {stream} starts before any connection")
                continue
            if recorded and recorded[0][1] != earlier[-1]:
                problems.append(f"backend stream {stream}: server says id {recorded[0][1]}, "
                                f"timing says {earlier[-1]}")
            mapped[stream] = recorded or [(t, earlier[-1])]
        elif recorded:
            mapped[stream] = recorded
        elif len(by_log) == 1:
            mapped[stream] = [(t, by_log[0])]
        else:
            active = [rec["id"] for rec in clients if rec["intent"] in EXCLUSIVE
                      and rec["start"] - 0.001 <= t <= rec["end"] + 0.5]
            if len(active) != 1:
                problems.append(f"backend stream {stream} ({haproxy_end} -> {server_end}): "
                                f"no record ties it, {len(active)} candidates by time")
                continue
            mapped[stream] = [(t, active[0])]
    return mapped


def build_truth(capture: Path, plan: list[dict], clients: list[dict], servers: list[dict],
                log_lines: list[str], net: Net = NETS["bridged"], nolinger: bool = False,
                scheduled: bool = False) -> tuple[list[dict], dict]:
    problems: list[str] = []
    if len(clients) != len(plan):
        problems.append(f"client ran {len(clients)} of {len(plan)} connections")
    by_id = {rec["id"]: rec for rec in clients}
    for conn, intent in CHECK_CONN.items():
        by_id[conn] = {"id": conn, "intent": intent, "src": None}
    by_src = {rec["src"]: rec for rec in clients}
    logs = parse_log(log_lines)
    frames = tshark_tcp(capture)

    def leg_of(frame: dict) -> str:
        return "frontend" if net.front in (frame["src"], frame["dst"]) else "backend"

    stream_first: dict[int, dict] = {}
    for frame in frames:
        stream_first.setdefault(frame["stream"], frame)
    refused: dict[int, bool] = {}
    for frame in frames:
        if frame["stream"] not in refused and not frame["syn"]:
            refused[frame["stream"]] = frame["rst"] and frame["src"] in net.servers.values()
    spans: dict[int, tuple[float, float]] = {}
    for frame in frames:
        start = spans.get(frame["stream"], (frame["time"], frame["time"]))[0]
        spans[frame["stream"]] = (start, frame["time"])
    stream_ids = _map_backend(stream_first, spans, net, clients, servers, logs, scheduled,
                              problems, refused)
    for stream, first in stream_first.items():
        if leg_of(first) == "frontend":
            _, client_end = _endpoint(first, net.front)
            rec = by_src.get(client_end)
            if rec is None:
                problems.append(f"frontend stream {stream} ({client_end}) has no client record")
                continue
            stream_ids[stream] = [(first["time"], rec["id"])]

    # A PROXY protocol header must name the client that made the request it precedes.
    for rec in servers:
        if rec.get("req") and "proxied" in rec:
            client = by_id.get(rec["id"])
            if client is None or client.get("src") != rec["proxied"]:
                problems.append(f"server {rec['server']} got a PROXY header naming "
                                f"{rec['proxied']} with request {rec['id']} of "
                                f"{client.get('src') if client else 'no client'}")

    # The log must say what each intent predicts; its bsrc must be one of the id's streams.
    for rec in clients:
        intent = rec["intent"]
        entries = logs.get(rec["src"], [])
        expected = EXPECTED_STATE[intent]
        if expected is None:
            if entries:
                problems.append(f"{rec['id']} {intent}: logged although rejected: "
                                f"{entries[0]['line']}")
            continue
        if not entries:
            problems.append(f"{rec['id']} {intent}: no HAProxy log line")
            continue
        for entry in entries:
            if not re.fullmatch(expected, entry["state"]):
                problems.append(f"{rec['id']} {intent}: termination state {entry['state']}, "
                                f"expected {expected}: {entry['line']}")
            ip, _, port = entry["bsrc"].rpartition(":")
            if ip == net.back and port not in ("", "0", "-"):
                streams = [s for s, first in stream_first.items()
                           if rec["id"] in {conn for _, conn in stream_ids.get(s, [])}
                           and int(port) in (first["sport"], first["dport"])]
                if not streams:
                    problems.append(f"{rec['id']}: log bsrc {entry['bsrc']} is not among the "
                                    f"backend flows tied to it")

    rows = []
    for frame in frames:
        if not frame["rst"]:
            continue
        leg = leg_of(frame)
        sender = _role(frame["src"], frame["ttl"], net)
        ids = stream_ids.get(frame["stream"])
        if not ids:
            problems.append(f"RST frame {frame['frame']} belongs to no connection")
            continue
        # The request the flow carried last before this RST (keep-alive flows carry several).
        conn = ([conn for t, conn in ids if t <= frame["time"] + 0.001] or [ids[0][1]])[-1]
        rec = by_id[conn]
        verdict = _classify(rec["intent"], leg, sender,
                            nolinger or rec["intent"] in NOLINGER_INTENTS)
        if verdict is None:
            problems.append(f"RST frame {frame['frame']} ({leg}, from {sender}, TTL "
                            f"{frame['ttl']}) is not explained by intent {rec['intent']} "
                            f"of {conn}")
            continue
        entries = logs.get(rec["src"], []) if rec["src"] else []
        entry = entries[-1] if entries else None
        rows.append({"frame": frame["frame"], "time_epoch": f"{frame['time']:.9f}",
                     "src": frame["src"], "sport": frame["sport"], "dst": frame["dst"],
                     "dport": frame["dport"], "leg": leg, "sender_ip": frame["src"],
                     "sender_role": sender, "root_cause": verdict[0],
                     "routine": str(verdict[1]).lower(), "conn_id": conn,
                     "intent": rec["intent"],
                     "termination_state": entry["state"] if entry else "not-logged",
                     "haproxy_log": entry["line"] if entry else "",
                     "ip_ttl": frame["ttl"]})
    if problems:
        raise LabError("lab bug, truth and log disagree:\n  " + "\n  ".join(problems[:40]))
    return rows, _summary(rows, frames, clients, by_id, stream_ids, logs, leg_of, net)


def _summary(rows: list[dict], frames: list[dict], clients: list[dict], by_id: dict,
             stream_ids: dict, logs: dict, leg_of: Callable, net: Net) -> dict:
    by_cause: dict[str, int] = {}
    for row in rows:
        key = f"{row['leg']}/{row['sender_role']}->{row['root_cause']}" + (
            "/routine" if row["routine"] == "true" else "")
        by_cause[key] = by_cause.get(key, 0) + 1
    # How each leg of each intent ended: who sent the first FIN or RST (for the README).
    first_close: dict[int, str] = {}
    syns: dict[int, int] = {}
    for frame in frames:
        if frame["syn"] and not frame["ack"]:
            syns[frame["stream"]] = syns.get(frame["stream"], 0) + 1
        if (frame["fin"] or frame["rst"]) and frame["stream"] not in first_close:
            first_close[frame["stream"]] = (f"{leg_of(frame)}:"
                                            f"{_role(frame['src'], frame['ttl'], net)}:"
                                            f"{'RST' if frame['rst'] else 'FIN'}")
    closes: dict[str, dict[str, int]] = {}
    for stream, how in first_close.items():
        if stream in stream_ids:
            intent = by_id[stream_ids[stream][0][1]]["intent"]
            per_intent = closes.setdefault(intent, {})
            per_intent[how] = per_intent.get(how, 0) + 1
    intents: dict[str, int] = {}
    for rec in clients:
        intents[rec["intent"]] = intents.get(rec["intent"], 0) + 1
    states: dict[str, int] = {}
    for rec in clients:
        for entry in logs.get(rec["src"], []):
            key = f"{rec['intent']}:{entry['state']}"
            states[key] = states.get(key, 0) + 1
    return {"connections": len(clients), "intents": intents, "frames": len(frames),
            "streams": len({frame["stream"] for frame in frames}),
            "health_check_streams": sum(ids[0][1] in CHECK_CONN for ids in stream_ids.values()),
            "rsts": len(rows), "rsts_by": dict(sorted(by_cause.items())),
            "log_lines": sum(len(entries) for entries in logs.values()),
            "first_close": closes,
            "retransmissions": sum(frame["resent"] for frame in frames),
            "streams_with_resent_syn": sum(n > 1 for n in syns.values()),
            "rst_ttls": sorted({f"{row['leg']}/{row['sender_role']}:{row['ip_ttl']}"
                                for row in rows}),
            "states": dict(sorted(states.items())),
            "outcomes": sorted({f"{rec['intent']}:{rec['outcome'].split(':')[0]}"
                                for rec in clients})}


def main() -> None:
    parser = argparse.ArgumentParser(description="Run HAProxy lab scenarios.")
    parser.add_argument("scenarios", nargs="+", help=f"{' '.join(SCENARIOS)} or all")
    parser.add_argument("--out", type=Path, default=HERE / "out")
    parser.add_argument("--seed", type=int, default=4)
    args = parser.parse_args()
    # SIGTERM unwinds like ^C, so the `finally` blocks remove what the lab created.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    names = list(SCENARIOS) if args.scenarios == ["all"] else args.scenarios
    for name in names:
        if name not in SCENARIOS:
            parser.error(f"unknown scenario {name!r}")
    for name in names:
        try:
            summary = run_scenario(name, args.out, seed=args.seed)
        except LabError as exc:
            print(f"{name}: {exc}", file=sys.stderr)
            sys.exit(1)
        print(json.dumps(summary, indent=1), flush=True)


if __name__ == "__main__":
    main()

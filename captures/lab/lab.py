"""The HAProxy lab: real HAProxy between real clients and servers in network namespaces, both
legs captured into one pcapng, and a ground-truth CSV with one row per RST packet.

Rules:
- Needs root (ip netns, dumpcap). Traffic stays inside the namespaces this script creates:
  every address lives on a veth or bridge inside them, and no interface is ever created in, or
  moved to, the caller's namespace.
- Unique names (`tracer-lab-<hex>-cli|-hap|-s1|-s2`), so re-runs and leftovers never collide.
  Re-runnable: outputs are written to a temporary directory and moved into `--out` only when
  the whole scenario succeeded and its truth checked out.
- Everything created is removed at the end, also on errors or ^C: first the processes it
  started (by PID: SIGTERM, then SIGKILL), then the nft table a scenario added in a namespace
  (`FIREWALL`: a server that drops SYNs), then the namespaces (which takes their veths and
  bridge with them), then the temporary directory. Every wait has a deadline; dumpcap runs
  with `-a duration:N`, the backends with `--duration`, the client with `--deadline`.

Topology (one dumpcap in the HAProxy namespace captures both legs: fe0 and br1):

    cli ns: cli0 10.232.1.10, 10.232.1.20 <-> fe0 10.232.1.1 [hap ns: HAProxy] br1 10.232.2.1
                                                                    |-- p1 <-> srv0 10.232.2.11 :s1 ns
                                                                    `-- p2 <-> srv0 10.232.2.12 :s2 ns

Lessons of tests/netns.py kept: `gso_max_segs 1` on the veths and the bridge (MTU-sized
segments, as a NIC puts them on a wire), receive packet steering to CPU 0 (no reordering
between a sender's two CPUs), IPv6 off (no chatter).

Theory of the ground truth: the client driver runs one connection at a time; each carries its
id and intent in the request. A frontend flow is tied to its id by the client's source port
(recorded by the client), a backend flow by time (the latest connection started before the
flow's first packet), cross-checked with the backend's own record of HAProxy's source port
and with the `bsrc` in HAProxy's log line. Each RST's root cause follows from the intent, the
leg and the sender (`_classify`); HAProxy's termination state must match what the intent
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
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
NS_PREFIX = "tracer-lab-"
FRONT_ADDR, BACK_ADDR = "10.232.1.1", "10.232.2.1"
CLIENT_ADDR, REJECTED_ADDR = "10.232.1.10", "10.232.1.20"
SERVER_ADDRS = {"s1": "10.232.2.11", "s2": "10.232.2.12"}
HTTP_PORT, TCP_PORT = 8000, 9000
SNAPLEN = 128
TCP_OK_BYTES = 2000  # backend.py's answer size: a tcp-mode client closes once it has it
READY_S = 10.0
STOP_GRACE_S = 5.0
TRUTH_FIELDS = ["frame", "time_epoch", "src", "sport", "dst", "dport", "leg", "sender_ip",
                "sender_role", "root_cause", "routine", "conn_id", "intent", "termination_state",
                "haproxy_log"]


class LabError(RuntimeError):
    """A namespace command failed, a process did not get ready, or the truth is inconsistent."""


# ------------------------------------------------------------------ scenarios

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
}

# Whose behaviour an intent's non-routine RSTs come from. Complete exchanges ("ok" intents,
# and a redispatched request that ends well) have only routine RSTs, plus the refusal itself.
OWNER = {
    "http-ok": "haproxy", "http-slow": "haproxy", "tcp-ok": "haproxy",
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
}
COMPLETE = {"http-ok", "http-slow", "tcp-ok", "refused-redispatch", "blackhole-redispatch"}

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
    "silent-dropped": None, "tcp-silent-dropped": None,
}

SCENARIOS: dict[str, dict[str, int]] = {
    "client-abort": {"http-ok": 8, "tcp-ok": 4, "client-rst-request": 6,
                     "client-rst-waiting": 6, "client-rst-midresponse": 5,
                     "tcp-client-rst-waiting": 5},
    "server-reset": {"http-ok": 8, "tcp-ok": 4, "server-rst-before": 6, "server-rst-mid": 6,
                     "tcp-server-rst-before": 4, "tcp-server-rst-mid": 4},
    "server-refused": {"http-ok": 8, "refused-redispatch": 12, "refused-only": 6},
    "timeout-server": {"http-ok": 8, "http-slow": 4, "tcp-ok": 3, "server-stall": 8,
                       "tcp-server-stall": 4},
    "tcp-reject": {"http-ok": 10, "tcp-ok": 5, "rejected": 10, "tcp-rejected": 6},
    "timeout-client": {"http-ok": 8, "tcp-ok": 4, "client-idle-no-request": 6,
                       "tcp-client-idle": 6},
    "nolinger": {"http-ok": 8, "tcp-ok": 4, "client-idle-no-request": 5, "tcp-client-idle": 5,
                 "client-rst-waiting": 3},
    "http-deny": {"http-ok": 8, "tcp-ok": 3, "http-denied": 6, "http-rejected": 6},
    "timeout-connect": {"http-ok": 8, "tcp-ok": 3, "blackhole-redispatch": 8,
                        "blackhole-only": 4},
    "silent-drop": {"http-ok": 8, "tcp-ok": 4, "silent-dropped": 6, "tcp-silent-dropped": 4},
}
NOLINGER_SCENARIOS = {"nolinger"}  # their configs have `option nolinger`
# Scenarios whose truth has an extra column: the IP TTL of each RST (silent-drop's fallback).
TTL_SCENARIOS = {"silent-drop"}
# An nft rule the lab adds in one namespace for a scenario (and removes): (role, input rule).
NFT_TABLE = "tracer_lab"
FIREWALL = {"timeout-connect": ("s2", "tcp dport 8082 drop")}  # a server that drops SYNs
SHORT_SCENARIO = {"client-abort": {"http-ok": 3, "tcp-ok": 2, "client-rst-waiting": 3,
                                   "tcp-client-rst-waiting": 2},
                  "server-reset": {"http-ok": 2, "server-rst-before": 2, "server-rst-mid": 2,
                                   "tcp-server-rst-mid": 2}}


def make_plan(counts: dict[str, int], seed: int) -> list[dict]:
    intents = [intent for intent, n in counts.items() for _ in range(n)]
    random.Random(seed).shuffle(intents)  # a fixed mix: re-runs tell the same story
    plan = []
    for number, intent in enumerate(intents, 1):
        mode, route, behaviour, action = INTENTS[intent]
        plan.append({"id": f"{number:03d}", "intent": intent, "mode": mode, "route": route,
                     "behaviour": behaviour, "action": action,
                     "src": REJECTED_ADDR if action == "rejected" else CLIENT_ADDR,
                     "dst": FRONT_ADDR, "port": HTTP_PORT if mode == "http" else TCP_PORT,
                     "read_limit": TCP_OK_BYTES if intent == "tcp-ok" else 0})
    return plan


# ------------------------------------------------------------------ namespaces and processes

def _check(argv: Sequence[str], timeout: float = 30) -> str:
    proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout,
                          check=False)
    if proc.returncode != 0:
        raise LabError(f"{' '.join(argv)}: {proc.stderr.strip() or proc.returncode}")
    return proc.stdout


@dataclass
class Lab:
    base: str
    workdir: Path
    _created: list[str] = field(default_factory=list)
    _procs: list[subprocess.Popen] = field(default_factory=list)
    _firewalled: list[str] = field(default_factory=list)

    def ns(self, role: str) -> str:
        return f"{self.base}-{role}"

    def build(self) -> None:
        for role in ("cli", "hap", "s1", "s2"):
            name = self.ns(role)
            _check(["ip", "netns", "add", name])  # fails on an existing name: never adopt one
            self._created.append(name)
            self.sh(role, "sysctl -qw net.ipv6.conf.all.disable_ipv6=1 "
                          "net.ipv6.conf.default.disable_ipv6=1; ip link set lo up")
        hap = self.ns("hap")
        _check(["ip", "-n", hap, "link", "add", "fe0", "type", "veth", "peer", "name", "cli0",
                "netns", self.ns("cli")])
        _check(["ip", "-n", hap, "link", "add", "br1", "type", "bridge"])
        for number, server in ((1, "s1"), (2, "s2")):
            _check(["ip", "-n", hap, "link", "add", f"p{number}", "type", "veth", "peer",
                    "name", "srv0", "netns", self.ns(server)])
            _check(["ip", "-n", hap, "link", "set", f"p{number}", "master", "br1"])
        self.sh("cli", f"ip addr add {CLIENT_ADDR}/24 dev cli0 && "
                       f"ip addr add {REJECTED_ADDR}/24 dev cli0")
        self.sh("hap", f"ip addr add {FRONT_ADDR}/24 dev fe0 && "
                       f"ip addr add {BACK_ADDR}/24 dev br1")
        for server, addr in SERVER_ADDRS.items():
            self.sh(server, f"ip addr add {addr}/24 dev srv0")
        for role, ifaces in (("cli", ["cli0"]), ("hap", ["fe0", "p1", "p2", "br1"]),
                             ("s1", ["srv0"]), ("s2", ["srv0"])):
            for iface in ifaces:
                rps = ("" if iface == "br1" else
                       f"; for q in /sys/class/net/{iface}/queues/rx-*; "
                       "do echo 1 > $q/rps_cpus; done")
                self.sh(role, f"ip link set {iface} gso_max_segs 1 up{rps}")

    def firewall(self, role: str, rule: str) -> None:
        self._firewalled.append(role)
        self.sh(role, f"nft add table inet {NFT_TABLE} && nft add chain inet {NFT_TABLE} input "
                      f"'{{ type filter hook input priority 0; policy accept; }}' && "
                      f"nft add rule inet {NFT_TABLE} input {rule}")

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

def run_scenario(name: str, out_dir: Path, counts: dict[str, int] | None = None,
                 seed: int = 4) -> dict:
    """Run one scenario end to end; write <name>.pcapng/.truth.csv/.haproxy.log into out_dir."""
    if os.geteuid() != 0:
        raise LabError("the lab needs root (ip netns, dumpcap)")
    config = HERE / f"haproxy-{name}.cfg"
    if not config.exists():
        raise LabError(f"no HAProxy config {config}")
    plan = make_plan(counts or SCENARIOS[name], seed)
    suffix = secrets.token_hex(3)
    workdir = Path(tempfile.mkdtemp(prefix=f"{NS_PREFIX}{suffix}-"))
    lab = Lab(base=f"{NS_PREFIX}{suffix}", workdir=workdir)
    try:
        lab.build()
        if name in FIREWALL:
            lab.firewall(*FIREWALL[name])
        py = sys.executable
        backends = []
        for server, addr in SERVER_ADDRS.items():
            log = workdir / f"backend-{server}.log"
            proc = lab.spawn(server, [py, str(HERE / "backend.py"), "--http", f"{addr}:8080",
                                      "--tcp", f"{addr}:9090", "--duration", "300"], log)
            lab.wait_for(proc, log, r"READY", f"backend {server}")
            backends.append((proc, log))
        capture = workdir / "capture.pcapng"
        dumpcap_log = workdir / "dumpcap.log"
        dumpcap = lab.spawn("hap", ["dumpcap", "-q", "-s", str(SNAPLEN),
                                    "-i", "fe0", "-f", "tcp", "-i", "br1", "-f", "tcp",
                                    "-a", "duration:280", "-w", str(capture)], dumpcap_log)
        lab.wait_for(dumpcap, dumpcap_log, r"File:", "dumpcap")
        time.sleep(0.3)
        haproxy_log = workdir / "haproxy.log"
        haproxy = lab.spawn("hap", ["haproxy", "-db", "-f", str(config)], haproxy_log)
        lab.wait_listening("hap", HTTP_PORT, "haproxy")
        lab.wait_listening("hap", TCP_PORT, "haproxy")
        plan_path = workdir / "plan.json"
        plan_path.write_text(json.dumps(plan))
        client_log = workdir / "client.log"
        client = lab.spawn("cli", [py, str(HERE / "client.py"), str(plan_path),
                                   "--deadline", "200"], client_log)
        try:
            client.wait(timeout=230)
        except subprocess.TimeoutExpired as exc:
            raise LabError("client driver overran its deadline") from exc
        if client.returncode != 0:
            raise LabError(f"client failed: {client_log.read_text()[-800:]}")
        time.sleep(1.0)  # the last close on either leg
        lab.stop(dumpcap)
        lab.stop(haproxy)  # after dumpcap: its shutdown is not part of the scenario
        for proc, _ in backends:
            lab.stop(proc)
        clients = _json_lines(client_log)
        servers = [rec for _, log in backends for rec in _json_lines(log)]
        log_lines = [line for line in haproxy_log.read_text(errors="replace").splitlines()
                     if line.strip()]
        rows, summary = build_truth(capture, plan, clients, servers, log_lines,
                                    nolinger=name in NOLINGER_SCENARIOS)
        if name in FIREWALL:
            summary["firewall"] = lab.sh(FIREWALL[name][0], f"nft list table inet {NFT_TABLE}")
        out_dir.mkdir(parents=True, exist_ok=True)
        staged = workdir / "staged"
        staged.mkdir()
        shutil.copy(capture, staged / f"{name}.pcapng")
        (staged / f"{name}.haproxy.log").write_text("\n".join(log_lines) + "\n")
        with open(staged / f"{name}.truth.csv", "w", newline="") as handle:
            writer = csv.DictWriter(handle, TRUTH_FIELDS + (["ip_ttl"] if name in TTL_SCENARIOS
                                                            else []), extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)
        for path in staged.iterdir():
            path.chmod(0o644)
            shutil.move(str(path), out_dir / path.name)
        summary["scenario"] = name
        return summary
    finally:
        lab.teardown()


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
    fields = ["frame.number", "frame.time_epoch", "ip.src", "tcp.srcport", "ip.dst",
              "tcp.dstport", "tcp.stream", "tcp.flags.reset", "tcp.flags.syn",
              "tcp.flags.ack", "tcp.flags.fin", "ip.ttl"]
    argv = ["tshark", "-n", "-r", str(capture), "-Y", "tcp && !icmp", "-T", "fields",
            "-E", "separator=\t"]
    for name in fields:
        argv += ["-e", name]
    out = _check(argv, timeout=120)
    frames = []
    for line in out.splitlines():
        values = line.split("\t")
        frame = dict(zip(fields, values, strict=True))
        frames.append({"frame": int(frame["frame.number"]),
                       "time": float(frame["frame.time_epoch"]),
                       "src": frame["ip.src"], "sport": int(frame["tcp.srcport"]),
                       "dst": frame["ip.dst"], "dport": int(frame["tcp.dstport"]),
                       "stream": int(frame["tcp.stream"]),
                       "rst": frame["tcp.flags.reset"] in ("1", "True"),
                       "syn": frame["tcp.flags.syn"] in ("1", "True"),
                       "fin": frame["tcp.flags.fin"] in ("1", "True"),
                       "ttl": int(frame["ip.ttl"])})
    return frames


def _role(ip: str) -> str:
    if ip in (CLIENT_ADDR, REJECTED_ADDR):
        return "client"
    if ip in (FRONT_ADDR, BACK_ADDR):
        return "haproxy"
    if ip in SERVER_ADDRS.values():
        return "server"
    return "network"


LOG_SUFFIX = re.compile(r"lab:ts=(\S\S) bsrc=(\S*) rc=(\S+)$")


def parse_log(lines: list[str]) -> dict[str, dict]:
    """HAProxy's stream log lines by client ip:port."""
    by_client: dict[str, dict] = {}
    for line in lines:
        match = LOG_SUFFIX.search(line)
        if not match:
            continue
        client = line.split()[0]
        by_client[client] = {"state": match.group(1), "bsrc": match.group(2),
                             "retries": match.group(3), "line": line}
    return by_client


def _classify(intent: str, leg: str, sender: str,
              nolinger: bool = False) -> tuple[str, bool] | None:
    """(root cause, routine) of an RST, or None when the intent cannot explain it.

    Routine: HAProxy's by-design RST after a complete exchange, on the server side (HAProxy
    closes first and resets to avoid TIME_WAIT) or, under `option nolinger`, on either side.
    """
    owner = OWNER[intent]
    if intent in COMPLETE:
        if sender == "haproxy" and (leg == "backend" or nolinger):
            return "haproxy", True
        if intent == "refused-redispatch" and leg == "backend" and sender == "server":
            return "server", False  # the closed port's refusal
        return None
    allowed = {"client": {"client", "haproxy"}, "server": {"server", "haproxy"},
               "haproxy": {"haproxy"}}[owner]
    if sender not in allowed:
        return None
    return owner, False


def build_truth(capture: Path, plan: list[dict], clients: list[dict], servers: list[dict],
                log_lines: list[str], nolinger: bool = False) -> tuple[list[dict], dict]:
    problems: list[str] = []
    if len(clients) != len(plan):
        problems.append(f"client ran {len(clients)} of {len(plan)} connections")
    by_id = {rec["id"]: rec for rec in clients}
    by_src = {rec["src"]: rec for rec in clients}
    starts = sorted((rec["start"], rec["id"]) for rec in clients)
    logs = parse_log(log_lines)
    frames = tshark_tcp(capture)

    stream_first: dict[int, dict] = {}
    for frame in frames:
        stream_first.setdefault(frame["stream"], frame)
    stream_id: dict[int, str] = {}
    for stream, first in stream_first.items():
        if first["src"].startswith("10.232.1.") or first["dst"].startswith("10.232.1."):
            client_end = (f"{first['src']}:{first['sport']}" if first["dport"] in
                          (HTTP_PORT, TCP_PORT) else f"{first['dst']}:{first['dport']}")
            rec = by_src.get(client_end)
            if rec is None:
                problems.append(f"frontend stream {stream} ({client_end}) has no client record")
                continue
            stream_id[stream] = rec["id"]
        else:
            earlier = [conn for start, conn in starts if start <= first["time"] + 0.001]
            if not earlier:
                problems.append(f"backend stream {stream} starts before any connection")
                continue
            stream_id[stream] = earlier[-1]
            haproxy_end = (f"{first['src']}:{first['sport']}" if first["src"] == BACK_ADDR
                           else f"{first['dst']}:{first['dport']}")
            for rec in servers:
                if rec.get("peer") == haproxy_end and rec.get("id") not in (None, "?",
                                                                            earlier[-1]):
                    problems.append(f"backend stream {stream}: server says id {rec['id']}, "
                                    f"timing says {earlier[-1]}")

    # The log must say what each intent predicts; its bsrc must be one of the id's streams.
    for rec in clients:
        intent = rec["intent"]
        entry = logs.get(rec["src"])
        expected = EXPECTED_STATE[intent]
        if expected is None:
            if entry is not None:
                problems.append(f"{rec['id']} {intent}: logged although rejected: "
                                f"{entry['line']}")
            continue
        if entry is None:
            problems.append(f"{rec['id']} {intent}: no HAProxy log line")
            continue
        if not re.fullmatch(expected, entry["state"]):
            problems.append(f"{rec['id']} {intent}: termination state {entry['state']}, "
                            f"expected {expected}: {entry['line']}")
        ip, _, port = entry["bsrc"].rpartition(":")
        if ip == BACK_ADDR and port not in ("", "0", "-"):
            streams = [s for s, first in stream_first.items()
                       if stream_id.get(s) == rec["id"]
                       and int(port) in (first["sport"], first["dport"])]
            if not streams:
                problems.append(f"{rec['id']}: log bsrc {entry['bsrc']} is not among the "
                                f"backend flows tied to it")

    rows = []
    for frame in frames:
        if not frame["rst"]:
            continue
        leg = "frontend" if frame["src"].startswith("10.232.1.") else "backend"
        sender = _role(frame["src"])
        conn = stream_id.get(frame["stream"])
        rec = by_id.get(conn) if conn else None
        if rec is None:
            problems.append(f"RST frame {frame['frame']} belongs to no connection")
            continue
        verdict = _classify(rec["intent"], leg, sender, nolinger)
        if verdict is None:
            problems.append(f"RST frame {frame['frame']} ({leg}, from {sender}) is not "
                            f"explained by intent {rec['intent']} of {conn}")
            continue
        entry = logs.get(rec["src"])
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

    by_cause: dict[str, int] = {}
    for row in rows:
        key = f"{row['leg']}/{row['sender_role']}->{row['root_cause']}" + (
            "/routine" if row["routine"] == "true" else "")
        by_cause[key] = by_cause.get(key, 0) + 1
    # How each leg of each intent ended: who sent the first FIN or RST (for the README).
    first_close: dict[int, str] = {}
    for frame in frames:
        if (frame["fin"] or frame["rst"]) and frame["stream"] not in first_close:
            leg = "frontend" if frame["src"].startswith("10.232.1.") else "backend"
            first_close[frame["stream"]] = (f"{leg}:{_role(frame['src'])}:"
                                            f"{'RST' if frame['rst'] else 'FIN'}")
    closes: dict[str, dict[str, int]] = {}
    for stream, how in first_close.items():
        conn = stream_id.get(stream)
        if conn in by_id:
            per_intent = closes.setdefault(by_id[conn]["intent"], {})
            per_intent[how] = per_intent.get(how, 0) + 1
    intents: dict[str, int] = {}
    for rec in clients:
        intents[rec["intent"]] = intents.get(rec["intent"], 0) + 1
    return rows, {"connections": len(clients), "intents": intents, "frames": len(frames),
                  "rsts": len(rows), "rsts_by": dict(sorted(by_cause.items())),
                  "log_lines": len(logs), "first_close": closes,
                  "rst_ttls": sorted({f"{row['leg']}/{row['sender_role']}:{row['ip_ttl']}"
                                      for row in rows}),
                  "states": sorted({f"{rec['intent']}:{logs[rec['src']]['state']}"
                                    for rec in clients if rec["src"] in logs})}


def main() -> None:
    parser = argparse.ArgumentParser(description="Run HAProxy lab scenarios.")
    parser.add_argument("scenarios", nargs="+", help=f"{' '.join(SCENARIOS)} or all")
    parser.add_argument("--out", type=Path, default=HERE / "out")
    args = parser.parse_args()
    # SIGTERM unwinds like ^C, so the `finally` blocks remove what the lab created.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    names = list(SCENARIOS) if args.scenarios == ["all"] else args.scenarios
    for name in names:
        if name not in SCENARIOS:
            parser.error(f"unknown scenario {name!r}")
    for name in names:
        summary = run_scenario(name, args.out)
        print(json.dumps(summary, indent=1), flush=True)


if __name__ == "__main__":
    main()

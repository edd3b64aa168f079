"""A lossy link between two network namespaces, for live tests of the flow stage.

Rules:
- Needs root (ip netns, nftables, dumpcap on a namespace's veth). Traffic stays inside the
  namespaces this module creates: the endpoints' only addresses are on their veths, and no
  interface is ever created in, or moved to, the caller's namespace (each veth pair is made
  inside the middle namespace with its far end placed straight into an endpoint's).
- Unique names (`tracer-t-<hex>-a`, `-m`, `-b`), so parallel runs and leftovers of a killed run
  never collide; `ip netns list | grep tracer-t-` shows anything left behind.
- Everything it creates is removed when the `with` block ends, also on an exception: first the
  processes it started (by PID: SIGTERM, then SIGKILL), then the namespaces, which takes their
  veths, bridge and nft table with them. A namespace outlives `ip netns del` while a process
  is still inside it, which is why the processes go first.
- Bounded: every wait has a deadline, dumpcap runs with `-a duration:N`, the bulk transfer's
  programs have socket timeouts and an overall time limit.

Theory of operation (the lessons of captures/make_basic_captures.sh):

    ns a: veth_a <-> mid_a [ns m: bridge br0, nft drop] mid_b <-> veth_b :ns b
          10.231.X.1/30                                         10.231.X.2/30
          fd00:231:X::1/64                                      fd00:231:X::2/64

- Loss is made in the middle namespace's bridge (an nftables `bridge` table, forward hook),
  not on an endpoint. A packet dropped in a host's own output path is reported back to its TCP
  as a failed transmit and quietly sent again, so it never shows on the wire as loss; dropped
  in the bridge, it is lost the way a switch loses it: the sender's veth saw it leave, the
  receiver's veth never sees it, and TCP has to find out from duplicate ACKs, SACK or a timeout.
- Only TCP is dropped (`meta l4proto tcp numgen random mod 100 < N counter drop`): dropping
  ARP or neighbour discovery would stall the link for a second now and then and make the
  timing anything but predictable. The rule's counter is the ground truth for the drops.
- `gso_max_segs 1` on the endpoint veths: TCP hands MTU-sized segments to the veth as a NIC
  would put them on a wire (a veth otherwise passes 64 KB TSO super-frames, and one drop would
  lose 40 segments at once).
- Receive packet steering to CPU 0 on all four veths: a veth hands each packet to the backlog
  of the CPU that sent it, so a sender whose packets leave from two CPUs (its process on one,
  ACK-clocked softirq sends on another) gets them reordered at the far end: 5-30 segments per
  2 MB were seen arriving out of order. One backlog keeps the path FIFO, so the only thing the
  link does to a stream is lose packets, and a receiver's gap means a drop.
- IPv6 is off on the middle namespace's ports (no chatter of its own); the endpoints' IPv6
  addresses are `nodad`, usable at once.
"""

from __future__ import annotations

import os
import re
import secrets
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

DIRECTIONS = ("a_to_b", "b_to_a", "both")
NS_PREFIX = "tracer-t-"
NFT_TABLE = "tracer_loss"
IFACE_A, IFACE_B = "veth_a", "veth_b"
_PORT_A, _PORT_B = "mid_a", "mid_b"

BULK_RECEIVE_BUFFER = 64 * 1024
DUMPCAP_READY_S = 10.0
STOP_GRACE_S = 5.0


class NetnsError(RuntimeError):
    """A namespace command failed, or a process did not get ready in time."""


def _ip(*args: str) -> None:
    _check(["ip", *args])


def _check(argv: Sequence[str], stdin: str | None = None) -> str:
    proc = subprocess.run(list(argv), input=stdin, capture_output=True, text=True, timeout=30,
                          check=False)
    if proc.returncode != 0:
        raise NetnsError(f"{' '.join(argv)}: {proc.stderr.strip() or proc.returncode}")
    return proc.stdout


def our_namespaces() -> list[str]:
    """Every namespace this module's naming scheme could have made (for leak checks)."""
    out = _check(["ip", "netns", "list"])
    return [line.split()[0] for line in out.splitlines()
            if line.strip() and line.split()[0].startswith(NS_PREFIX)]


@dataclass
class LossLink:
    """Two endpoint namespaces, a and b, joined through a lossy bridge namespace m.

    Capture points: `capture_ns`/`capture_iface` is the receiver's veth, downstream of the
    drop, because that is where loss looks like loss: a sequence gap (tshark's lost_segment),
    duplicate ACKs with SACK blocks going back, then the retransmission filling the hole, the
    picture a tracer on the receiving host has. The sender's veth (`sender_ns`, `sender_iface`)
    sees every transmission, the later-dropped ones too: nothing is missing there, and each
    dropped data segment comes back as a re-sent copy. Capture both to compare; the nft
    counter (`dropped_packets`) is exactly the difference.
    """

    drop_percent: int
    direction: str
    ipv6: bool
    ns_a: str
    ns_b: str
    ns_mid: str
    addr4_a: str
    addr4_b: str
    addr6_a: str
    addr6_b: str
    workdir: Path
    iface_a: str = IFACE_A
    iface_b: str = IFACE_B
    _procs: list[subprocess.Popen] = field(default_factory=list, repr=False)
    _created: list[str] = field(default_factory=list, repr=False)  # only these get deleted

    @property
    def addr_a(self) -> str:
        return self.addr6_a if self.ipv6 else self.addr4_a

    @property
    def addr_b(self) -> str:
        return self.addr6_b if self.ipv6 else self.addr4_b

    @property
    def namespaces(self) -> tuple[str, str, str]:
        return self.ns_a, self.ns_mid, self.ns_b

    @property
    def sender_is_a(self) -> bool:
        """Data should flow into the lossy direction: a sends unless only b -> a loses."""
        return self.direction != "b_to_a"

    @property
    def sender_ns(self) -> str:
        return self.ns_a if self.sender_is_a else self.ns_b

    @property
    def sender_iface(self) -> str:
        return self.iface_a if self.sender_is_a else self.iface_b

    @property
    def sender_addr(self) -> str:
        return self.addr_a if self.sender_is_a else self.addr_b

    @property
    def receiver_ns(self) -> str:
        return self.ns_b if self.sender_is_a else self.ns_a

    @property
    def receiver_iface(self) -> str:
        return self.iface_b if self.sender_is_a else self.iface_a

    @property
    def receiver_addr(self) -> str:
        return self.addr_b if self.sender_is_a else self.addr_a

    @property
    def capture_ns(self) -> str:
        return self.receiver_ns

    @property
    def capture_iface(self) -> str:
        return self.receiver_iface

    def run_in(self, ns: str, argv: Sequence[str], **popen_kwargs) -> subprocess.Popen:
        """Start `argv` inside namespace `ns` (one of this link's); stopped at exit if alive.

        `ip netns exec` execs the command after entering the namespace, so the Popen's PID is
        the command itself and a signal to it reaches the right process.
        """
        if ns not in self.namespaces:
            raise ValueError(f"{ns!r} is not one of this link's namespaces {self.namespaces}")
        proc = subprocess.Popen(["ip", "netns", "exec", ns, *argv], **popen_kwargs)
        self._procs.append(proc)
        return proc

    def capture(self, ns: str, iface: str, path: str | os.PathLike, bpf: str, *,
                snaplen: int = 256, max_seconds: int = 120) -> subprocess.Popen:
        """Start dumpcap on `iface` in `ns`, writing pcapng to `path`; return once it captures.

        Ready means dumpcap printed its "File:" line, which comes after the capture socket is
        open and the filter attached; a short pause on top covers the rest. Stop it with
        `stop(proc)` (SIGTERM by PID: dumpcap then finishes the file); `-a duration` bounds it.
        """
        log_path = self.workdir / f"dumpcap.{time.monotonic_ns()}.log"
        with open(log_path, "wb") as log:
            proc = self.run_in(ns, ["dumpcap", "-q", "-i", iface, "-s", str(snaplen),
                                    "-f", bpf, "-a", f"duration:{max_seconds}",
                                    "-w", os.fspath(path)],
                               stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + DUMPCAP_READY_S
        while time.monotonic() < deadline:
            text = log_path.read_text(errors="replace")
            if "File:" in text:
                time.sleep(0.2)
                return proc
            if proc.poll() is not None:
                raise NetnsError(f"dumpcap in {ns} exited ({proc.returncode}): {text.strip()}")
            time.sleep(0.05)
        self.stop(proc)
        raise NetnsError(f"dumpcap in {ns} not ready after {DUMPCAP_READY_S} s: "
                         f"{log_path.read_text(errors='replace').strip()}")

    def stop(self, proc: subprocess.Popen, grace_s: float = STOP_GRACE_S) -> int:
        """Stop one process this link started: SIGTERM, SIGKILL after `grace_s`; its status."""
        if proc not in self._procs:
            raise ValueError("not a process started by this link")
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=grace_s)
        self._procs.remove(proc)
        return proc.returncode

    def dropped_packets(self) -> int:
        """Packets the bridge has dropped so far (the nft rules' counters, summed)."""
        out = _check(["ip", "netns", "exec", self.ns_mid, "nft", "list", "table", "bridge",
                      NFT_TABLE])
        return sum(int(n) for n in re.findall(r"counter packets (\d+)", out))

    def _stop_all(self) -> None:
        for proc in list(self._procs):
            self.stop(proc)


def _nft_ruleset(drop_percent: int, direction: str) -> str:
    ports = {"a_to_b": [_PORT_A], "b_to_a": [_PORT_B], "both": [_PORT_A, _PORT_B]}[direction]
    rules = "\n".join(
        f'        iifname "{port}" meta l4proto tcp numgen random mod 100 < {drop_percent} '
        f"counter drop"
        for port in ports
    )
    return textwrap.dedent("""\
        table bridge {table} {{
            chain forward {{
                type filter hook forward priority filter; policy accept;
        {rules}
            }}
        }}
        """).format(table=NFT_TABLE, rules=rules)


def _delete_namespaces(names: Sequence[str]) -> None:
    errors = []
    for name in names:
        if os.path.exists(f"/run/netns/{name}"):
            proc = subprocess.run(["ip", "netns", "del", name], capture_output=True, text=True,
                                  timeout=30, check=False)
            if proc.returncode != 0:
                errors.append(f"{name}: {proc.stderr.strip()}")
    if errors:
        raise NetnsError("could not delete namespaces: " + "; ".join(errors))


def _build(link: LossLink) -> None:
    for ns in link.namespaces:
        _ip("netns", "add", ns)  # fails if the name exists: never adopt someone else's
        link._created.append(ns)
        _ip("-n", ns, "link", "set", "lo", "up")
    m = link.ns_mid
    _ip("-n", m, "link", "add", _PORT_A, "type", "veth", "peer", "name", link.iface_a,
        "netns", link.ns_a)
    _ip("-n", m, "link", "add", _PORT_B, "type", "veth", "peer", "name", link.iface_b,
        "netns", link.ns_b)
    _ip("-n", m, "link", "add", "br0", "type", "bridge")
    for port in ("br0", _PORT_A, _PORT_B):
        _check(["ip", "netns", "exec", m, "sysctl", "-qw",
                f"net.ipv6.conf.{port}.disable_ipv6=1"])
    _ip("-n", m, "link", "set", _PORT_A, "master", "br0")
    _ip("-n", m, "link", "set", _PORT_B, "master", "br0")
    for port in ("br0", _PORT_A, _PORT_B):
        _ip("-n", m, "link", "set", port, "up")
    _check(["ip", "netns", "exec", m, "nft", "-f", "-"],
           stdin=_nft_ruleset(link.drop_percent, link.direction))
    for ns, iface, addr4, addr6 in ((link.ns_a, link.iface_a, link.addr4_a, link.addr6_a),
                                    (link.ns_b, link.iface_b, link.addr4_b, link.addr6_b)):
        _ip("-n", ns, "addr", "add", f"{addr4}/30", "dev", iface)
        _ip("-n", ns, "addr", "add", f"{addr6}/64", "dev", iface, "nodad")
        _ip("-n", ns, "link", "set", iface, "gso_max_segs", "1", "up")
    for ns, iface in ((link.ns_a, link.iface_a), (link.ns_b, link.iface_b),
                      (m, _PORT_A), (m, _PORT_B)):
        # `ip netns exec` mounts the namespace's own /sys, where its veths live.
        _check(["ip", "netns", "exec", ns, "sh", "-c",
                f"for q in /sys/class/net/{iface}/queues/rx-*; do echo 1 > $q/rps_cpus; done"])


@contextmanager
def loss_link(drop_percent: int, *, direction: str = "a_to_b",
              ipv6: bool = False) -> Iterator[LossLink]:
    """Namespaces a and b joined through a bridge that drops `drop_percent`% of TCP packets.

    `direction`: "a_to_b" drops what a sends, "b_to_a" what b sends, "both" either way.
    `ipv6` picks which addresses `addr_a`/`addr_b` give (both families are configured).
    """
    if not 0 <= drop_percent <= 100:
        raise ValueError(f"drop_percent {drop_percent} is not in 0..100")
    if direction not in DIRECTIONS:
        raise ValueError(f"direction {direction!r} is not one of {DIRECTIONS}")
    for tool in ("ip", "nft", "dumpcap"):
        if shutil.which(tool) is None:
            raise NetnsError(f"{tool} is not installed")
    suffix = secrets.token_hex(3)
    subnet = int(suffix[:2], 16)  # only for telling links apart in a capture by eye
    base = f"{NS_PREFIX}{suffix}"
    workdir = Path(tempfile.mkdtemp(prefix=f"{base}-"))
    link = LossLink(
        drop_percent=drop_percent, direction=direction, ipv6=ipv6,
        ns_a=f"{base}-a", ns_b=f"{base}-b", ns_mid=f"{base}-m",
        addr4_a=f"10.231.{subnet}.1", addr4_b=f"10.231.{subnet}.2",
        addr6_a=f"fd00:231:{subnet:x}::1", addr6_b=f"fd00:231:{subnet:x}::2",
        workdir=workdir,
    )
    try:
        _build(link)
        yield link
    finally:
        try:
            link._stop_all()
        finally:
            try:
                _delete_namespaces(link._created)
            finally:
                shutil.rmtree(workdir, ignore_errors=True)


# ---------------------------------------------------------------- bulk transfer

# The server accepts one connection, reads to EOF (at most the announced size plus one
# chunk), answers with the byte count and closes. Bounded by the overall time limit.
_SERVER = """
import socket, sys, time
host, port, nbytes, limit = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
rcvbuf = int(sys.argv[5])
deadline = time.monotonic() + limit
family = socket.AF_INET6 if ":" in host else socket.AF_INET
with socket.socket(family, socket.SOCK_STREAM) as listener:
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if rcvbuf:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    listener.bind((host, port))
    listener.listen(1)
    listener.settimeout(limit)
    print("READY", flush=True)
    conn, _ = listener.accept()
    with conn:
        got = 0
        for _ in range(nbytes // 1024 + 1024):
            conn.settimeout(max(deadline - time.monotonic(), 0.01))
            data = conn.recv(1 << 16)
            if not data:
                break
            got += len(data)
        conn.settimeout(max(deadline - time.monotonic(), 0.01))
        conn.sendall(b"%d\\n" % got)
print(got, flush=True)
"""

# The client sends a known pattern, half-closes, and reads the server's count until EOF.
_CLIENT = """
import socket, sys, time
host, port, nbytes, limit = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
family = socket.AF_INET6 if ":" in host else socket.AF_INET
pattern = b"tracer-bulk-transfer-0123456789abcdefghijklmnopqrstuvwxyz\\n"
payload = (pattern * (nbytes // len(pattern) + 1))[:nbytes]
with socket.socket(family, socket.SOCK_STREAM) as sock:
    sock.settimeout(limit)
    sock.connect((host, port))
    sock.sendall(payload)
    sock.shutdown(socket.SHUT_WR)
    answer = b""
    for _ in range(64):
        data = sock.recv(64)
        if not data:
            break
        answer += data
print(int(answer or b"-1"), flush=True)
"""


@dataclass(frozen=True)
class BulkResult:
    nbytes: int  # what the client was asked to send
    received: int  # what the server counted
    acknowledged: int  # what the server told the client it counted
    seconds: float  # from the client's start to its exit


def _wait_for_line(proc: subprocess.Popen, expected: str, seconds: float) -> None:
    """Read `proc.stdout` lines until `expected` (bounded by time and line count).

    readline() may buffer bytes past the line, which a later communicate() (reading the file
    descriptor) would not see; the server prints nothing after READY until its connection is
    over, so there is nothing to lose.
    """
    deadline = time.monotonic() + seconds
    with selectors.DefaultSelector() as selector:
        selector.register(proc.stdout, selectors.EVENT_READ)
        for _ in range(100):
            left = deadline - time.monotonic()
            if left <= 0 or not selector.select(timeout=left):
                break
            line = proc.stdout.readline()
            if not line:
                break
            if line.strip() == expected:
                return
    raise NetnsError(f"server did not print {expected} within {seconds} s")


def bulk_transfer(link: LossLink, nbytes: int, *, port: int, time_limit_s: float = 20.0,
                  receive_buffer: int = BULK_RECEIVE_BUFFER) -> BulkResult:
    """Send `nbytes` over one TCP connection from the link's sender to its receiver.

    The server listens on the receiver's address, the client runs in the sender's namespace,
    so the data crosses the lossy direction. Both are plain Python programs (stdlib, `-c`) run
    with `ip netns exec`; both are stopped by PID if they overrun `time_limit_s`.

    `receive_buffer` (SO_RCVBUF on the listening socket, so the window scale follows it; 0 for
    the kernel's autotuning) bounds the window. With autotuning the window grows to megabytes
    on a microsecond-RTT link, and one retransmission timeout then re-sends much of it
    (go-back-N over segments the receiver already has): 5 % loss measured 5 to 23 % re-sent
    segments. With 64 KiB the re-sent fraction stays within a few segments of the drops.
    """
    args = [link.receiver_addr, str(port), str(nbytes), str(time_limit_s), str(receive_buffer)]
    server = link.run_in(link.receiver_ns, [sys.executable, "-c", _SERVER, *args],
                         stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    try:
        _wait_for_line(server, "READY", 10.0)
        started = time.monotonic()
        client = link.run_in(link.sender_ns, [sys.executable, "-c", _CLIENT, *args],
                             stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
        try:
            client_out, client_err = client.communicate(timeout=time_limit_s + 5)
        except subprocess.TimeoutExpired as exc:
            raise NetnsError(f"bulk client still running after {time_limit_s + 5} s") from exc
        finally:
            link.stop(client)
        seconds = time.monotonic() - started
        try:
            server_out, server_err = server.communicate(timeout=10)
        except subprocess.TimeoutExpired as exc:
            raise NetnsError("bulk server did not finish after the client") from exc
        if client.returncode != 0 or server.returncode != 0:
            raise NetnsError(f"bulk transfer failed: client {client.returncode} "
                             f"{client_err.strip()[-300:]}; server {server.returncode} "
                             f"{server_err.strip()[-300:]}")
        return BulkResult(nbytes=nbytes, received=int(server_out.split()[-1]),
                          acknowledged=int(client_out.split()[-1]), seconds=seconds)
    finally:
        link.stop(server)

"""Real TCP traffic for the bundled captures: a tiny line-protocol server and scripted clients.

Rules:
- Traffic goes only where it is told: the server binds the addresses given with --listen and
  the client connects only to --target addresses (the capture script passes loopback addresses
  or addresses inside the network namespaces it created).
- Everything is bounded: every socket has a timeout, the server stops at --duration seconds (or
  on SIGTERM/SIGINT), the client stops starting new connections at --max-seconds, and every
  loop runs a fixed number of rounds.
- Plain blocking sockets with threads, not asyncio: each scenario needs exact control over
  socket calls (shutdown, SO_LINGER, SO_RCVBUF, TCP_MAXSEG before connect), and the kernel is
  what we want in the capture, not an event loop's buffering.

Theory of operation:
The client opens a connection and sends one request line, `VERB ARG [ARG]`; the verb tells the
server which ending to act out, so one server serves every scenario and each connection in the
capture is one scenario. The endings are the ones a reset tracer must tell apart:

    close      server sends N bytes and closes first (server FIN first)
    keep       K requests of N bytes on one connection; the client closes first (client FIN)
    half       client sends a body, shuts down writing; server reads to EOF, answers, closes
    slow       server waits before answering; the client gives up with an abortive close (RST)
    cabort     client reads part of a long answer, then aborts with SO_LINGER 0 (RST mid-data)
    srst       server sends part of an answer, then aborts with SO_LINGER 0 (RST mid-response)
    unread     server closes while request bytes are still unread: the kernel answers with RST
    upload     client sends N bytes, server answers OK and closes
    slowread   client with a tiny receive buffer reads a bulk answer slowly (zero windows)
    smallmss   client sets TCP_MAXSEG before connecting (a different MSS option)
    idle       client connects and says nothing; the server's idle timeout closes it
    refused    connect to a port nobody listens on (SYN answered by RST/ACK)

Usage (see make_basic_captures.sh):
    basic_traffic.py serve --listen 127.0.0.1:18080 --listen [::1]:18080 --duration 60
    basic_traffic.py client --target 127.0.0.1:18080 --closed-port 18081 --rounds 2
"""

from __future__ import annotations

import argparse
import concurrent.futures
import itertools
import random
import selectors
import signal
import socket
import struct
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

SOCKET_TIMEOUT_S = 10.0
SERVER_IDLE_TIMEOUT_S = 0.4  # the "idle" scenario waits longer than this
SLOW_ANSWER_DELAY_S = 0.5  # the "slow" scenario's client aborts before this
CHUNK = 16384

# A repeating, printable payload, so truncated captures still show readable bytes.
PAYLOAD_PATTERN = b"tracer-capture-payload-0123456789abcdefghijklmnopqrstuvwxyz\n"


def payload(n: int) -> bytes:
    reps = n // len(PAYLOAD_PATTERN) + 1
    return (PAYLOAD_PATTERN * reps)[:n]


def parse_endpoint(text: str) -> tuple[str, int]:
    """'127.0.0.1:80' or '[::1]:80' -> (host, port)."""
    if text.startswith("["):
        host, _, port = text[1:].partition("]:")
    else:
        host, _, port = text.rpartition(":")
    return host, int(port)


def family_of(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def set_abortive_close(sock: socket.socket) -> None:
    """SO_LINGER on with timeout 0: close() discards unsent data and sends RST."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


def recv_line(sock: socket.socket, limit: int = 256) -> bytes:
    """Read one request line byte by byte, so nothing after it is consumed (see 'unread')."""
    line = bytearray()
    while len(line) < limit:
        byte = sock.recv(1)
        if not byte:
            break
        line += byte
        if byte == b"\n":
            break
    return bytes(line)


def recv_exactly(sock: socket.socket, n: int) -> int:
    got = 0
    while got < n:
        data = sock.recv(min(CHUNK, n - got))
        if not data:
            break
        got += len(data)
    return got


def recv_until_eof(sock: socket.socket, limit: int = 1 << 24) -> int:
    got = 0
    while got < limit:
        data = sock.recv(CHUNK)
        if not data:
            break
        got += len(data)
    return got


# ---------------------------------------------------------------- server


def serve_connection(conn: socket.socket) -> None:
    conn.settimeout(SERVER_IDLE_TIMEOUT_S)
    try:
        try:
            line = recv_line(conn)
        except TimeoutError:
            conn.close()  # idle timeout: the server closes first, FIN
            return
        conn.settimeout(SOCKET_TIMEOUT_S)
        parts = line.decode("ascii", "replace").split()
        verb, args = (parts[0], [int(a) for a in parts[1:]]) if parts else ("", [])
        handler = SERVER_HANDLERS.get(verb)
        if handler is None:
            conn.close()
            return
        handler(conn, args)
    except OSError:
        # Resets from the client side are part of the scenarios; nothing to report.
        conn.close()


def serve_close(conn: socket.socket, args: list[int]) -> None:
    conn.sendall(payload(args[0]))
    conn.close()


def serve_keep(conn: socket.socket, args: list[int]) -> None:
    size = args[0]
    for _ in range(1000):
        conn.sendall(payload(size))
        line = recv_line(conn)
        if not line:
            break
    conn.close()


def serve_half(conn: socket.socket, args: list[int]) -> None:
    recv_until_eof(conn)
    conn.sendall(payload(args[0]))
    conn.close()


def serve_slow(conn: socket.socket, args: list[int]) -> None:
    time.sleep(SLOW_ANSWER_DELAY_S)
    conn.sendall(payload(args[0]))  # usually fails: the client has reset the connection
    conn.close()


def serve_srst(conn: socket.socket, args: list[int]) -> None:
    conn.sendall(payload(args[0] // 2))
    time.sleep(0.02)
    set_abortive_close(conn)
    conn.close()


def serve_unread(conn: socket.socket, args: list[int]) -> None:
    time.sleep(0.05)  # let the request body arrive, so close() finds it unread and resets
    conn.close()


def serve_upload(conn: socket.socket, args: list[int]) -> None:
    recv_exactly(conn, args[0])
    conn.sendall(b"OK\n")
    conn.close()


SERVER_HANDLERS: dict[str, Callable[[socket.socket, list[int]], None]] = {
    "CLOSE": serve_close,
    "KEEP": serve_keep,
    "HALF": serve_half,
    "SLOW": serve_slow,
    "SRST": serve_srst,
    "UNREAD": serve_unread,
    "UPLOAD": serve_upload,
}


def run_server(listen: list[str], duration_s: float) -> int:
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    selector = selectors.DefaultSelector()
    listeners = []
    for endpoint in listen:
        host, port = parse_endpoint(endpoint)
        sock = socket.socket(family_of(host), socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family_of(host) == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((host, port))
        sock.listen(256)
        sock.setblocking(False)
        selector.register(sock, selectors.EVENT_READ)
        listeners.append(sock)
    print("READY", flush=True)
    deadline = time.monotonic() + duration_s
    workers: list[threading.Thread] = []
    while not stop.is_set() and time.monotonic() < deadline:
        for key, _ in selector.select(timeout=0.2):
            try:
                conn, _ = key.fileobj.accept()  # type: ignore[union-attr]
            except BlockingIOError:
                continue
            conn.setblocking(True)
            worker = threading.Thread(target=serve_connection, args=(conn,), daemon=True)
            worker.start()
            workers.append(worker)
        workers = [w for w in workers if w.is_alive()]
    for sock in listeners:
        sock.close()
    for worker in workers:
        worker.join(timeout=SOCKET_TIMEOUT_S)
    return 0


# ---------------------------------------------------------------- client


@dataclass
class Target:
    host: str
    port: int
    closed_port: int
    sources: list[str]  # local addresses to bind, one per connection in turn; [] = kernel's


_source_turn = itertools.count()


def connect(target: Target, port: int | None = None, *, before: Callable | None = None):
    sock = socket.socket(family_of(target.host), socket.SOCK_STREAM)
    sock.settimeout(SOCKET_TIMEOUT_S)
    if before is not None:
        before(sock)
    if target.sources:
        sock.bind((target.sources[next(_source_turn) % len(target.sources)], 0))
    sock.connect((target.host, port or target.port))
    return sock


def client_close(target: Target, size: int) -> None:
    with connect(target) as sock:
        sock.sendall(b"CLOSE %d\n" % size)
        recv_until_eof(sock)


def client_keep(target: Target, size: int) -> None:
    with connect(target) as sock:
        for _ in range(3):
            sock.sendall(b"KEEP %d\n" % size)
            recv_exactly(sock, size)
        time.sleep(0.01)
    # Leaving the with-block closes the socket: the client's FIN comes first.


def client_half(target: Target, size: int) -> None:
    with connect(target) as sock:
        sock.sendall(b"HALF %d\n" % size + payload(3000))
        sock.shutdown(socket.SHUT_WR)
        recv_until_eof(sock)


def client_slow(target: Target, size: int) -> None:
    sock = connect(target)
    sock.sendall(b"SLOW %d\n" % size)
    time.sleep(SLOW_ANSWER_DELAY_S / 4)
    set_abortive_close(sock)
    sock.close()


def client_cabort(target: Target, size: int) -> None:
    sock = connect(target)
    sock.sendall(b"CLOSE %d\n" % size)
    recv_exactly(sock, min(size // 4, 20000))
    set_abortive_close(sock)
    sock.close()


def client_srst(target: Target, size: int) -> None:
    with connect(target) as sock:
        sock.sendall(b"SRST %d\n" % size)
        try:
            recv_until_eof(sock)
        except ConnectionResetError:
            pass


def client_unread(target: Target, size: int) -> None:
    with connect(target) as sock:
        try:
            sock.sendall(b"UNREAD 0\n" + payload(4000))
            recv_until_eof(sock)
        except (ConnectionResetError, BrokenPipeError):
            pass


def client_upload(target: Target, size: int) -> None:
    with connect(target) as sock:
        sock.sendall(b"UPLOAD %d\n" % size)
        sock.sendall(payload(size))
        recv_until_eof(sock)


def client_slowread(target: Target, size: int) -> None:
    def tiny_buffer(sock: socket.socket) -> None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 2048)

    with connect(target, before=tiny_buffer) as sock:
        sock.sendall(b"CLOSE %d\n" % size)
        got = 0
        for _ in range(size // 512 + 10):  # bounded: a read per step, at least 512 bytes each
            data = sock.recv(2048)
            if not data:
                break
            got += len(data)
            time.sleep(0.004)


def client_smallmss(target: Target, size: int) -> None:
    def small_mss(sock: socket.socket) -> None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG, 536)

    with connect(target, before=small_mss) as sock:
        sock.sendall(b"CLOSE %d\n" % size)
        recv_until_eof(sock)


def client_idle(target: Target, size: int) -> None:
    with connect(target) as sock:
        recv_until_eof(sock)


def client_refused(target: Target, size: int) -> None:
    try:
        with connect(target, port=target.closed_port):
            pass
    except ConnectionRefusedError:
        pass


# name -> (client function, answer size in bytes)
SCENARIOS: dict[str, tuple[Callable[[Target, int], None], int]] = {
    "close": (client_close, 2000),
    "keep": (client_keep, 1500),
    "half": (client_half, 5000),
    "slow": (client_slow, 1000),
    "cabort": (client_cabort, 120_000),
    "srst": (client_srst, 40_000),
    "unread": (client_unread, 0),
    "upload": (client_upload, 60_000),
    "slowread": (client_slowread, 60_000),
    "smallmss": (client_smallmss, 8_000),
    "idle": (client_idle, 0),
    "refused": (client_refused, 0),
    "bulk": (client_close, 300_000),
}


def run_client(
    targets: list[Target],
    scenario_names: list[str],
    rounds: int,
    parallel: int,
    max_seconds: float,
    bulk_bytes: int,
    seed: int,
    scale: float,
) -> int:
    rng = random.Random(seed)
    jobs: list[tuple[str, Target]] = []
    for _ in range(rounds):
        round_jobs = [(name, target) for target in targets for name in scenario_names]
        rng.shuffle(round_jobs)
        jobs.extend(round_jobs)
    deadline = time.monotonic() + max_seconds
    failures: dict[str, int] = {}

    def run_one(job: tuple[str, Target]) -> None:
        name, target = job
        if time.monotonic() > deadline:
            failures["skipped (deadline)"] = failures.get("skipped (deadline)", 0) + 1
            return
        func, size = SCENARIOS[name]
        size = bulk_bytes if name == "bulk" else int(size * scale)
        try:
            func(target, size)
        except OSError as exc:  # unexpected here, but a capture run should not die on one
            key = f"{name}: {type(exc).__name__}"
            failures[key] = failures.get(key, 0) + 1

    if parallel <= 1:
        for job in jobs:
            run_one(job)
    else:
        with concurrent.futures.ThreadPoolExecutor(max_workers=parallel) as pool:
            list(pool.map(run_one, jobs))
    print(f"client: {len(jobs)} connections planned, unexpected outcomes: {failures or 'none'}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve")
    serve.add_argument("--listen", action="append", required=True, help="host:port or [v6]:port")
    serve.add_argument("--duration", type=float, default=60.0)
    client = sub.add_parser("client")
    client.add_argument("--target", action="append", required=True, help="host:port")
    client.add_argument("--source", action="append", default=[], help="local address to bind")
    client.add_argument("--closed-port", type=int, required=True)
    client.add_argument("--scenarios", default=",".join(SCENARIOS))
    client.add_argument("--rounds", type=int, default=1)
    client.add_argument("--parallel", type=int, default=1)
    client.add_argument("--max-seconds", type=float, default=60.0)
    client.add_argument("--bulk-bytes", type=int, default=300_000)
    client.add_argument("--seed", type=int, default=1)
    client.add_argument("--scale", type=float, default=1.0, help="factor on answer sizes")
    args = parser.parse_args(argv)
    if args.command == "serve":
        return run_server(args.listen, args.duration)
    names = [n for n in args.scenarios.split(",") if n]
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenarios: {unknown}")
    targets = []
    for endpoint in args.target:
        host, port = parse_endpoint(endpoint)
        sources = [s for s in args.source if family_of(s) == family_of(host)]
        targets.append(Target(host, port, args.closed_port, sources))
    return run_client(
        targets,
        names,
        args.rounds,
        args.parallel,
        args.max_seconds,
        args.bulk_bytes,
        args.seed,
        args.scale,
    )


if __name__ == "__main__":
    sys.exit(main())

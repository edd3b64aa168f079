"""The lab's client driver: runs a plan of connections, each with an intent.

Rules:
- Connects only to the address in the plan (HAProxy's frontend inside the lab namespaces);
  every socket has a timeout, the whole run a deadline, and concurrency a bound.
- Two schedules. Sequential (no spec has `at`): one connection at a time with a short gap, so
  HAProxy opens a connection's server-side flows between its start and the next connection's
  start, which lets the lab tie even unrecorded backend flows (a refused SYN) to a connection
  id by time. Scheduled (every spec has `at`, seconds from the run's start): each connection
  starts at its time in its own thread (at most MAX_PARALLEL at once); the lab then ties
  backend flows by the backend's own records and HAProxy's log instead.
- Source ports are never reused within a run: the client's address and port name a frontend
  flow and HAProxy's log line. A spec may ask for a port from a range (`port_range`): a
  middlebox picks its victims by that range.
- One JSON line per connection on stdout: id, intent, local address and port, times, outcome.

Theory of operation: the connection id and the server's behaviour travel in the request (HTTP
path `/<route>/<id>/<behaviour>/<n>`, tcp mode first line `<id> <behaviour>`); the client's own
part of the intent is its `action`:
  complete     send the request, read to EOF (or `read_limit` bytes: a tcp-mode answer has no
               end of its own), close (FIN)
  rst-request  send half a request, wait 0.1 s, abort with an RST (SO_LINGER 0)
  rst-wait     send the whole request, wait 0.25 s for an answer that comes later, abort (RST)
  fin-wait     send the whole request, wait 0.25 s, close() normally (FIN; an answer that
               arrives later meets a closed socket)
  rst-mid      read 24 kB of a long answer, abort (RST) with the rest in flight
  rejected     connect and read: HAProxy is expected to reset at once
  idle         connect, send nothing, read until HAProxy gives up (`timeout http-request`)
  partial      send a request head without its final empty line, read until HAProxy gives up
  slowloris    send the request line, then one header line every 0.3 s (8 lines), then read
  halfclose    send the request, shutdown(SHUT_WR) (a FIN), read to EOF
  keepalive    `requests` requests on one connection, each answer read by its Content-Length;
               the last says `Connection: close` and is read to EOF, unless `leave`: then the
               client closes (FIN) after the last answer without announcing it
Optional spec fields: `body` (POST with that many bytes), `pad` (an X-Pad header of that many
bytes), `read_timeout` (seconds, instead of SOCKET_TIMEOUT_S, after the request).
"""

from __future__ import annotations

import argparse
import json
import socket
import struct
import threading
import time

SOCKET_TIMEOUT_S = 8.0
GAP_S = 0.15
MAX_READ = 2_000_000
MAX_PARALLEL = 64


def _abort(sock: socket.socket) -> None:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def _read_until(sock: socket.socket, limit: int) -> tuple[int, str]:
    got = 0
    for _ in range(100_000):
        try:
            data = sock.recv(65536)
        except ConnectionResetError:
            return got, "reset"
        except TimeoutError:
            return got, "timeout"
        if not data:
            return got, "eof"
        got += len(data)
        if got >= limit:
            return got, "limit"
    return got, "loop-bound"


def _read_response(sock: socket.socket) -> tuple[str, int]:
    """One HTTP response, by its Content-Length: (status or how it ended, body bytes)."""
    data = b""
    for _ in range(1000):
        if b"\r\n\r\n" in data:
            break
        try:
            more = sock.recv(65536)
        except ConnectionResetError:
            return "reset", 0
        except TimeoutError:
            return "timeout", 0
        if not more:
            return "eof", 0
        data += more
    head, _, body = data.partition(b"\r\n\r\n")
    status = head.split(b" ", 2)[1].decode() if head.count(b" ") >= 2 else "?"
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    got = len(body)
    for _ in range(10_000):
        if got >= length:
            break
        try:
            more = sock.recv(65536)
        except (ConnectionResetError, TimeoutError):
            return "cut", got
        if not more:
            return "cut", got
        got += len(more)
    return status, got


class PortBook:
    """Source ports already used in this run (shared by the threads of a scheduled run)."""

    def __init__(self) -> None:
        self.used: set[int] = set()
        self.lock = threading.Lock()

    def bind(self, source: str, port_range: list[int] | None) -> socket.socket:
        """A socket bound to a port no earlier connection of this run had: the lab ties
        frontend flows and HAProxy's log lines to connection ids by client address and port."""
        family = socket.AF_INET6 if ":" in source else socket.AF_INET
        with self.lock:
            candidates = (range(port_range[0], port_range[1] + 1) if port_range
                          else [0] * 50)
            for wanted in candidates:
                if wanted and wanted in self.used:
                    continue
                sock = socket.socket(family, socket.SOCK_STREAM)
                try:
                    sock.bind((source, wanted))
                except OSError:
                    sock.close()
                    continue
                port = sock.getsockname()[1]
                if port not in self.used:
                    self.used.add(port)
                    return sock
                sock.close()
        raise RuntimeError("no fresh source port")


def _request(spec: dict, number: int = 0, close: bool = True) -> bytes:
    if spec["mode"] != "http":
        line = f"{spec['id']} {spec['behaviour']}\n".encode()
        return line + (b"p" * spec["pad"] + b"\n" if spec.get("pad") else b"")
    body = b"q" * spec.get("body", 0)
    method = "POST" if body else "GET"
    head = (f"{method} /{spec['route']}/{spec['id']}/{spec['behaviour']}/{number} HTTP/1.1\r\n"
            f"Host: lab\r\nUser-Agent: tracer-lab\r\n"
            f"Connection: {'close' if close else 'keep-alive'}\r\n")
    if spec.get("pad"):
        head += f"X-Pad: {'p' * spec['pad']}\r\n"
    if body:
        head += f"Content-Length: {len(body)}\r\n"
    return head.encode() + b"\r\n" + body


def run_one(spec: dict, ports: PortBook) -> dict:
    record = {key: spec[key] for key in ("id", "intent", "mode", "action")}
    sock = ports.bind(spec["src"], spec.get("port_range"))
    sock.settimeout(SOCKET_TIMEOUT_S)
    local = sock.getsockname()
    record["src"] = f"{local[0]}:{local[1]}"
    record["start"] = time.time()
    request = _request(spec)
    action = spec["action"]
    try:
        sock.connect((spec["dst"], spec["port"]))
        if spec.get("read_timeout"):
            sock.settimeout(spec["read_timeout"])
        if action == "rst-request":
            sock.sendall(request[: len(request) // 2])
            time.sleep(0.1)
            _abort(sock)
            record["outcome"] = "aborted-in-request"
        elif action == "rst-wait":
            sock.sendall(request)
            time.sleep(0.25)
            _abort(sock)
            record["outcome"] = "aborted-waiting"
        elif action == "fin-wait":
            sock.sendall(request)
            time.sleep(0.25)
            sock.close()
            record["outcome"] = "closed-waiting"
        elif action == "rst-mid":
            sock.sendall(request)
            got, how = _read_until(sock, 24_000)
            _abort(sock)
            record["outcome"] = f"aborted-mid:{got}:{how}"
        elif action == "slowloris":
            lines = request.split(b"\r\n")
            sent = 0
            try:
                sock.sendall(lines[0] + b"\r\n")
                for number in range(8):
                    time.sleep(0.3)
                    sock.sendall(f"X-Slow-{number}: a\r\n".encode())
                    sent += 1
                got, how = _read_until(sock, MAX_READ)
                record["outcome"] = f"{how}:{got}:lines{sent}"
            except OSError as exc:
                record["outcome"] = f"send-failed:{type(exc).__name__}:lines{sent}"
            sock.close()
        elif action == "keepalive":
            count = spec.get("requests", 3)
            statuses = []
            for number in range(count):
                last = number == count - 1
                sock.sendall(_request(spec, number, close=last and not spec.get("leave")))
                status, _ = _read_response(sock)
                statuses.append(status)
                if status in ("reset", "eof", "timeout", "cut"):
                    break
                if not last:
                    time.sleep(0.1)
            if not spec.get("leave"):
                _read_until(sock, MAX_READ)
            sock.close()
            record["outcome"] = "keepalive:" + ",".join(statuses)
        else:  # complete, rejected, idle, partial, halfclose
            if action in ("complete", "halfclose"):
                sock.sendall(request)
            elif action == "partial":
                sock.sendall(request[: request.index(b"\r\n\r\n") + 2])
            if action == "halfclose":
                sock.shutdown(socket.SHUT_WR)
            got, how = _read_until(sock, spec.get("read_limit") or MAX_READ)
            sock.close()
            record["outcome"] = f"{how}:{got}"
    except OSError as exc:
        sock.close()
        record["outcome"] = f"error:{type(exc).__name__}"
    record["end"] = time.time()
    return record


def _run_scheduled(plan: list[dict], deadline: float) -> None:
    """Start each connection at its `at` (threads, at most MAX_PARALLEL alive at once)."""
    ports = PortBook()
    printing = threading.Lock()
    slots = threading.BoundedSemaphore(MAX_PARALLEL)
    started = time.monotonic()

    def worker(spec: dict) -> None:
        try:
            record = run_one(spec, ports)
        except Exception as exc:  # noqa: BLE001 - reported as a record, the lab fails the run
            record = {"error": f"{spec['id']}: {type(exc).__name__}: {exc}"}
        finally:
            slots.release()
        with printing:
            print(json.dumps(record), flush=True)

    threads = []
    for spec in sorted(plan, key=lambda s: s["at"]):
        wait = started + spec["at"] - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        if time.monotonic() - started > deadline or not slots.acquire(timeout=30):
            print(json.dumps({"error": "deadline"}), flush=True)
            break
        thread = threading.Thread(target=worker, args=(spec,), daemon=True)
        thread.start()
        threads.append(thread)
    for thread in threads:
        thread.join(timeout=max(started + deadline - time.monotonic(), 0.1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("plan", help="JSON file: a list of connection specs")
    parser.add_argument("--deadline", type=float, default=240.0, help="seconds for the run")
    args = parser.parse_args()
    with open(args.plan) as handle:
        plan = json.load(handle)
    if plan and all("at" in spec for spec in plan):
        _run_scheduled(plan, args.deadline)
        return
    stop_at = time.monotonic() + args.deadline
    ports = PortBook()
    for spec in plan:
        if time.monotonic() > stop_at:
            print(json.dumps({"error": "deadline"}), flush=True)
            break
        print(json.dumps(run_one(spec, ports)), flush=True)
        time.sleep(GAP_S)


if __name__ == "__main__":
    main()

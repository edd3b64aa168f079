"""The lab's client driver: runs a plan of connections one after another, each with an intent.

Rules:
- Connects only to the address in the plan (HAProxy's frontend inside the lab namespaces);
  every socket has a timeout and the whole run a deadline; one connection at a time, with a
  short gap, so HAProxy opens a connection's server-side flows (SYNs) between its start and
  the next connection's start, which is how the lab ties backend-side flows to connection ids.
  (Later packets of a flow may come after the next start: in HTTP mode HAProxy passes a
  client's abort on to the server only when the server answers.)
- Source ports are never reused within a run: the client's address and port name a frontend
  flow and HAProxy's log line.
- One JSON line per connection on stdout: id, intent, local address and port, times, outcome.

Theory of operation: the connection id and the server's behaviour travel in the request (HTTP
path `/<route>/<id>/<behaviour>`, tcp mode first line `<id> <behaviour>`); the client's own
part of the intent is its `action`:
  complete     send the request, read to EOF (or `read_limit` bytes: a tcp-mode answer has no
               end of its own), close (FIN)
  rst-request  send half a request, wait 0.1 s, abort with an RST (SO_LINGER 0)
  rst-wait     send the whole request, wait 0.25 s for an answer that comes later, abort (RST)
  rst-mid      read 24 kB of a long answer, abort (RST) with the rest in flight
  rejected     connect and read: HAProxy is expected to reset at once
  idle         connect, send nothing, read until HAProxy gives up (`timeout http-request`)
"""

from __future__ import annotations

import argparse
import json
import socket
import struct
import time

SOCKET_TIMEOUT_S = 8.0
GAP_S = 0.15
MAX_READ = 2_000_000


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


def _bind_fresh_port(source: str, used: set[int]) -> socket.socket:
    """A socket bound to a source port no earlier connection of this run had: the lab ties
    frontend flows and HAProxy's log lines to connection ids by client address and port."""
    for _ in range(50):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind((source, 0))
        port = sock.getsockname()[1]
        if port not in used:
            used.add(port)
            return sock
        sock.close()
    raise RuntimeError("no fresh source port in 50 tries")


def run_one(spec: dict, used_ports: set[int]) -> dict:
    record = {key: spec[key] for key in ("id", "intent", "mode", "action")}
    sock = _bind_fresh_port(spec["src"], used_ports)
    sock.settimeout(SOCKET_TIMEOUT_S)
    record["src"] = f"{spec['src']}:{sock.getsockname()[1]}"
    record["start"] = time.time()
    if spec["mode"] == "http":
        request = (f"GET /{spec['route']}/{spec['id']}/{spec['behaviour']} HTTP/1.1\r\n"
                   f"Host: lab\r\nUser-Agent: tracer-lab\r\nConnection: close\r\n\r\n").encode()
    else:
        request = f"{spec['id']} {spec['behaviour']}\n".encode()
    action = spec["action"]
    try:
        sock.connect((spec["dst"], spec["port"]))
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
        elif action == "rst-mid":
            sock.sendall(request)
            got, how = _read_until(sock, 24_000)
            _abort(sock)
            record["outcome"] = f"aborted-mid:{got}:{how}"
        else:  # complete, rejected, idle
            if action == "complete":
                sock.sendall(request)
            got, how = _read_until(sock, spec.get("read_limit") or MAX_READ)
            sock.close()
            record["outcome"] = f"{how}:{got}"
    except OSError as exc:
        sock.close()
        record["outcome"] = f"error:{type(exc).__name__}"
    record["end"] = time.time()
    return record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("plan", help="JSON file: a list of connection specs")
    parser.add_argument("--deadline", type=float, default=240.0, help="seconds for the run")
    args = parser.parse_args()
    with open(args.plan) as handle:
        plan = json.load(handle)
    stop_at = time.monotonic() + args.deadline
    used_ports: set[int] = set()
    for spec in plan:
        if time.monotonic() > stop_at:
            print(json.dumps({"error": "deadline"}), flush=True)
            break
        print(json.dumps(run_one(spec, used_ports)), flush=True)
        time.sleep(GAP_S)


if __name__ == "__main__":
    main()

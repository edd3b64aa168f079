"""The lab's backend server: told per connection, by the request itself, what to do.

Rules:
- Listens only on the addresses it is given (inside a lab namespace); stops by itself after
  `--duration` seconds; every read and wait is bounded in bytes and time.
- One JSON line per request as soon as it is read (`"req": true`: id, behaviour, peer address,
  time) and one per connection when it ends (what it did), so the lab can tie HAProxy's
  backend-side source port to the connection ids it carried (several, with keep-alive).
- Optional health-check listeners (`--check HOST:PORT`): accept, answer an HTTP request with
  200 (a bare connect gets nothing), wait for the peer's close; `--check-down-at T
  --check-down-for D` closes them at T seconds after READY and reopens them D seconds later
  (a server whose check port is down), printing `{"check": "down"|"up", "t0": ..., "t": ...}`
  (the time before and after the change: a SYN between the two may find either).
- Optional deaf listeners (`--deaf HOST:PORT`, one thread per connection, at most DEAF_MAX):
  peek at the request head (MSG_PEEK: the bytes stay unread in the kernel), report it, then
  hold the connection without reading for DEAF_HOLD_S. A process killed meanwhile leaves
  unread bytes behind, so its kernel resets the connection instead of closing it with a FIN.
- Optional PROXY protocol listeners (`--proxy-http`, `--proxy-tcp`): every connection must
  start with a PROXY protocol header, v1 or v2 (HAProxy's `send-proxy`, `send-proxy-v2`),
  which is read and reported as `"proxied": "client ip:port"` (and `"pp": 1|2`) in the
  connection's records; a connection without one is closed (`"did": "no-proxy-header"`).

Theory of operation: an HTTP request's path is `/<route>/<id>/<behaviour>`, a tcp-mode
connection's first line is `<id> <behaviour>`. The behaviour is what the server does next:
  ok          answer at once (HTTP: Content-Length body, then wait for the next request)
  slow        answer after 0.3 s
  hold        answer after 2.0 s (holds a `maxconn 1` server's only slot)
  bulk        answer 100 kB at once (a complete download, for loss on the path)
  wait        answer after 1.5 s (the client is meant to abort first)
  big         answer 400 kB in 8 kB pieces, 20 ms apart (the client is meant to abort midway)
  rst-before  close with SO_LINGER 0 before answering: an RST instead of a response
  rst-mid     send the headers and 12 kB of a 60 kB body, then close with SO_LINGER 0
  stall       never answer; wait for the peer to close (HAProxy's `timeout server`)
  long        answer 200 kB in 4 kB pieces, 100 ms apart (5 s: still sending when killed)
An RST is made the way an application makes one: SO_LINGER {on, 0} and close().
A request body (Content-Length, at most 1 MB) is read before answering.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import socket
import struct
import sys
import threading
import time

MAX_HEAD = 65536
MAX_BODY = 1_000_000
IDLE_S = 5.0  # --idle: how long a connection may wait for its (next) request
STALL_S = 10.0
BODY_OK = 2000
DEAF_HOLD_S = 20.0
DEAF_MAX = 64


def _linger_zero(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


def _report(record: dict) -> None:
    # One write per line: deaf listener threads report too.
    sys.stdout.write(json.dumps(record) + "\n")
    sys.stdout.flush()


async def _read_head(reader: asyncio.StreamReader, http: bool) -> bytes | None:
    try:
        if http:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), IDLE_S)
            length = re.search(rb"(?im)^content-length:\s*(\d+)", head)
            if length and 0 < int(length.group(1)) <= MAX_BODY:
                await asyncio.wait_for(reader.readexactly(int(length.group(1))), IDLE_S)
            return head
        return await asyncio.wait_for(reader.readuntil(b"\n"), IDLE_S)
    except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
        return None


def _http_answer(conn_id: str, body_len: int) -> bytes:
    return (f"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {body_len}\r\n"
            f"X-Lab-Id: {conn_id}\r\n\r\n").encode()


PROXY_V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"


async def _read_proxy(reader: asyncio.StreamReader) -> tuple[int, str] | None:
    """A PROXY protocol header (haproxy.org proxy-protocol.txt): (version, "client ip:port")."""
    import ipaddress

    try:
        first = await asyncio.wait_for(reader.readexactly(6), IDLE_S)
        if first == b"PROXY ":
            line = await asyncio.wait_for(reader.readuntil(b"\r\n"), IDLE_S)
            words = line.decode("ascii").split()
            return 1, (f"{words[1]}:{words[3]}" if words[0] in ("TCP4", "TCP6") else "?")
        if first != PROXY_V2_SIGNATURE[:6]:
            return None
        rest = await asyncio.wait_for(reader.readexactly(10), IDLE_S)
        head = first + rest
        if head[:12] != PROXY_V2_SIGNATURE:
            return None
        block = await asyncio.wait_for(reader.readexactly(int.from_bytes(head[14:16], "big")),
                                       IDLE_S)
        if head[13] == 0x11:
            return 2, f"{ipaddress.IPv4Address(block[0:4])}:{int.from_bytes(block[8:10], 'big')}"
        if head[13] == 0x21:
            return 2, f"{ipaddress.IPv6Address(block[0:16])}:{int.from_bytes(block[32:34], 'big')}"
        return 2, "?"
    except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError,
            ConnectionError, UnicodeDecodeError, IndexError, ValueError):
        return None


async def _serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, http: bool,
                 proxied: bool = False) -> None:
    peer = writer.get_extra_info("peername")
    record: dict = {"peer": f"{peer[0]}:{peer[1]}", "http": http, "t": time.time()}
    pp_fields: dict = {}
    try:
        if proxied:
            header = await _read_proxy(reader)
            if header is None:
                record["did"] = "no-proxy-header"
                return
            pp_fields = {"pp": header[0], "proxied": header[1]}
            record.update(pp_fields)
        for request_no in range(16):  # keep-alive, bounded
            head = await _read_head(reader, http)
            if head is None:
                record.setdefault("did", "closed-before-request" if request_no == 0 else "idle")
                break
            words = head.split(b"\r\n", 1)[0].decode(errors="replace").split()
            if http:
                parts = words[1].split("/") if len(words) > 1 else []
                conn_id, behaviour = (parts[2], parts[3]) if len(parts) >= 4 else ("?", "ok")
            else:
                conn_id, behaviour = (words + ["?", "ok"])[:2]
            record.update(id=conn_id, behaviour=behaviour)
            _report({"req": True, "peer": record["peer"], "id": conn_id,
                     "behaviour": behaviour, "n": request_no, "t": time.time(), **pp_fields})
            done = await _behave(reader, writer, http, conn_id, behaviour)
            record["did"] = done
            if done != "answered" or not http:
                break
        if record.get("did") in ("answered", "idle"):
            writer.close()
    except (ConnectionError, OSError) as exc:
        record["did"] = f"error:{type(exc).__name__}"
    finally:
        record["end"] = time.time()
        _report(record)
        writer.close()


async def _behave(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, http: bool,
                  conn_id: str, behaviour: str) -> str:
    body = (f"lab {conn_id} ".encode() * (BODY_OK // 8 + 1))[:BODY_OK]
    if behaviour in ("slow", "wait", "hold"):
        await asyncio.sleep({"slow": 0.3, "wait": 1.5, "hold": 2.0}[behaviour])
    if behaviour == "bulk":
        body = b"b" * 100_000
    if behaviour == "rst-before":
        _linger_zero(writer)
        writer.transport.abort()
        return "rst-before"
    if behaviour == "stall":
        try:  # returns when the peer closes, or after STALL_S
            await asyncio.wait_for(reader.read(MAX_HEAD), STALL_S)
        except (TimeoutError, ConnectionError):
            pass
        return "stalled"
    if behaviour in ("big", "rst-mid", "long"):
        total = {"big": 400_000, "rst-mid": 60_000, "long": 200_000}[behaviour]
        if http:
            writer.write(_http_answer(conn_id, total))
        chunk = b"x" * (4096 if behaviour == "long" else 8192)
        pause = 0.1 if behaviour == "long" else 0.02
        sent = 0
        for _ in range(total // len(chunk) + 1):
            if behaviour == "rst-mid" and sent >= 12_000:
                await writer.drain()
                await asyncio.sleep(0.05)
                _linger_zero(writer)
                writer.transport.abort()
                return "rst-mid"
            piece = chunk[: total - sent]
            if not piece:
                break
            writer.write(piece)
            sent += len(piece)
            await writer.drain()
            await asyncio.sleep(pause)
        return "answered"
    writer.write(_http_answer(conn_id, len(body)) + body if http else body)
    await writer.drain()
    if not http:  # tcp mode: the client closes first; wait for its FIN
        try:
            await asyncio.wait_for(reader.read(MAX_HEAD), IDLE_S)
        except (TimeoutError, ConnectionError):
            pass
    return "answered"


async def _check(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """A health-check port: 200 to an HTTP request, nothing to a bare connect; then wait for
    the checker to close (HAProxy closes its checks itself)."""
    try:
        try:
            data = await asyncio.wait_for(reader.read(1024), 1.0)
        except TimeoutError:
            data = b""
        if data[:4] in (b"GET ", b"HEAD", b"OPTI"):
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            await writer.drain()
        await asyncio.wait_for(reader.read(1024), 2.0)
    except (TimeoutError, ConnectionError, OSError):
        pass
    finally:
        writer.close()


def _deaf_conn(conn: socket.socket, peer: str) -> None:
    """Peek at the request head without consuming it, report it, hold the bytes unread."""
    try:
        conn.settimeout(2.0)
        head = b""
        for _ in range(50):
            head = conn.recv(4096, socket.MSG_PEEK)
            if not head or b"\r\n\r\n" in head:
                break
            time.sleep(0.02)
        words = head.split(b"\r\n", 1)[0].decode(errors="replace").split()
        parts = words[1].split("/") if len(words) > 1 else []
        if len(parts) >= 4:
            _report({"req": True, "peer": peer, "id": parts[2], "behaviour": parts[3], "n": 0,
                     "t": time.time(), "deaf": True})
        time.sleep(DEAF_HOLD_S)
    except OSError:
        pass
    finally:
        _report({"peer": peer, "deaf": True, "did": "held-unread", "end": time.time()})
        conn.close()


def _deaf_listener(spec: str) -> None:
    host, port = _split(spec)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listener = socket.socket(family, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((host, port))
    listener.listen(16)
    threads: list[threading.Thread] = []

    def accept_loop() -> None:
        while True:
            conn, addr = listener.accept()
            threads[:] = [thread for thread in threads if thread.is_alive()]
            if len(threads) >= DEAF_MAX:
                conn.close()
                continue
            thread = threading.Thread(target=_deaf_conn, args=(conn, f"{addr[0]}:{addr[1]}"),
                                      daemon=True)
            thread.start()
            threads.append(thread)

    threading.Thread(target=accept_loop, daemon=True).start()


def _split(spec: str) -> tuple[str, int]:
    host, port = spec.rsplit(":", 1)
    return host.strip("[]"), int(port)


async def _check_listeners(specs: list[str]) -> list[asyncio.Server]:
    return [await asyncio.start_server(_check, *_split(spec), reuse_address=True)
            for spec in specs]


async def _main(args: argparse.Namespace) -> None:
    global IDLE_S
    IDLE_S = args.idle
    servers = []
    listeners = ([(s, True, False) for s in args.http] + [(s, False, False) for s in args.tcp]
                 + [(s, True, True) for s in args.proxy_http]
                 + [(s, False, True) for s in args.proxy_tcp])
    for spec, http, proxied in listeners:
        servers.append(await asyncio.start_server(
            lambda r, w, h=http, p=proxied: _serve(r, w, h, p), *_split(spec), limit=MAX_HEAD))
    checks = await _check_listeners(args.check)
    for spec in args.deaf:
        _deaf_listener(spec)
    print("READY", flush=True)
    started = time.monotonic()
    if checks and args.check_down_at is not None:
        await asyncio.sleep(args.check_down_at)
        before = time.time()
        for server in checks:
            server.close()  # the port is closed now: a SYN gets an RST/ACK
        _report({"check": "down", "t0": before, "t": time.time()})
        await asyncio.sleep(args.check_down_for)
        before = time.time()
        checks = await _check_listeners(args.check)
        _report({"check": "up", "t0": before, "t": time.time()})
    await asyncio.sleep(max(args.duration - (time.monotonic() - started), 0))
    for server in servers + checks:
        server.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--http", action="append", default=[], help="HOST:PORT for HTTP")
    parser.add_argument("--tcp", action="append", default=[], help="HOST:PORT for line mode")
    parser.add_argument("--proxy-http", action="append", default=[],
                        help="HOST:PORT for HTTP behind a PROXY protocol header")
    parser.add_argument("--proxy-tcp", action="append", default=[],
                        help="HOST:PORT for line mode behind a PROXY protocol header")
    parser.add_argument("--check", action="append", default=[], help="HOST:PORT health checks")
    parser.add_argument("--deaf", action="append", default=[],
                        help="HOST:PORT that peeks at requests and never reads them")
    parser.add_argument("--check-down-at", type=float, help="close the check ports at T s")
    parser.add_argument("--check-down-for", type=float, default=0.0, help="for D s")
    parser.add_argument("--idle", type=float, default=IDLE_S, help="wait for a request, s")
    parser.add_argument("--duration", type=float, default=120.0)
    try:
        asyncio.run(_main(parser.parse_args()))
    except KeyboardInterrupt:
        sys.exit(0)


if __name__ == "__main__":
    main()

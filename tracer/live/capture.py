"""dumpcap as a child process writing pcapng to a pipe (the I/O edge).

Rules:
- tracer never opens a capture socket itself: dumpcap (Wireshark's capture helper, the one
  program that needs CAP_NET_RAW/CAP_NET_ADMIN) does, and writes pcapng to its stdout, which
  tracer reads. tshark is the fallback when dumpcap is not on PATH (it runs dumpcap itself).
- The child runs in a session of its own, so a Ctrl-C on the terminal reaches tracer only;
  tracer stops the child by its PID (SIGTERM: dumpcap ends the file cleanly with its
  interface statistics; SIGKILL after a grace period).
- dumpcap's stderr is read in a thread: "File: -" means the capture is running; an exit before
  that is an error, turned into one line (`LiveCaptureError`) by `_classify` from dumpcap's own
  words: no such interface, no permission, a bad capture filter. At exit dumpcap prints its
  per-interface counters ("Packets received/dropped on interface ..."), parsed by
  `parse_drop_lines` into the drops the kernel and dumpcap had.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import threading
import time

from tracer.errors import ToolMissingError, TracerError

READY_TIMEOUT_S = 15.0
STOP_GRACE_S = 5.0
PIPE_BYTES = 1 << 20  # a bigger pipe: dumpcap blocks less often between our reads

GRANT_HINT = ("grant dumpcap the capture capabilities instead of running tracer as root: "
              "sudo setcap cap_net_raw,cap_net_admin=eip $(command -v dumpcap), or add your "
              "user to the wireshark group (sudo usermod -a -G wireshark $USER, then log in "
              "again)")

_DROP_LINE = re.compile(
    r"Packets received/dropped on interface '(?P<iface>.*)': (?P<received>\d+)/(?P<dropped>\d+)"
    r"(?: \((?P<detail>[^)]*)\))?")


class LiveCaptureError(TracerError):
    """dumpcap could not start the capture (interface, permission, filter, ...)."""


def capture_tool() -> str:
    for name in ("dumpcap", "tshark"):
        path = shutil.which(name)
        if path:
            return path
    raise ToolMissingError("neither dumpcap nor tshark is installed: install Wireshark's "
                           "command-line tools (Debian/Ubuntu: apt-get install tshark)")


def list_interfaces() -> list[tuple[str, str]]:
    """(name, description) of every interface the capture tool can open (`dumpcap -D`)."""
    tool = capture_tool()
    proc = subprocess.run([tool, "-D"], capture_output=True, text=True, timeout=30, check=False)
    if proc.returncode != 0:
        raise LiveCaptureError(_classify(proc.stderr, [], None, proc.returncode))
    out = []
    for line in proc.stdout.splitlines():
        m = re.match(r"\s*\d+\.\s+(\S+)(?:\s+\((.*)\))?", line)
        if m:
            out.append((m.group(1), m.group(2) or ""))
    return out


def build_argv(tool: str, interfaces: list[str], bpf: str | None, snaplen: int,
               buffer_mb: int) -> list[str]:
    argv = [tool]
    for iface in interfaces:
        argv += ["-i", iface]
        if bpf:
            argv += ["-f", bpf]  # dumpcap's -f applies to the interface before it
        if snaplen:
            argv += ["-s", str(snaplen)]
        if buffer_mb:
            argv += ["-B", str(buffer_mb)]
    if os.path.basename(tool) == "tshark":
        argv += ["-F", "pcapng", "-Q"]
    return argv + ["-q", "-w", "-"]


def parse_drop_lines(text: str) -> dict[str, dict[str, int]]:
    """dumpcap's exit counters per interface: received, dropped, and the detail it gives
    (pcap: dropped by the kernel, dumpcap: by dumpcap, flushed, ps_ifdrop: by the interface)."""
    out: dict[str, dict[str, int]] = {}
    for m in _DROP_LINE.finditer(text):
        entry = {"received": int(m.group("received")), "dropped": int(m.group("dropped"))}
        for part in (m.group("detail") or "").split("/"):
            name, _, value = part.partition(":")
            if value.strip().isdigit():
                entry[name.strip()] = int(value)
        out[m.group("iface")] = entry
    return out


def _classify(stderr: str, interfaces: list[str], bpf: str | None, code: int | None) -> str:
    text = stderr.strip()
    m = re.search(r'There is no device named "([^"]*)"', text) or re.search(
        r"could not be initiated on interface '([^']*)' \(No such device", text)
    if m or "No such device exists" in text:
        name = m.group(1) if m else (interfaces[0] if interfaces else "?")
        return f"no such interface {name!r} (tracer interfaces lists the ones there are)"
    if "permission" in text.lower() or "Operation not permitted" in text:
        m = re.search(r'capture on device "([^"]*)"', text)
        where = f" on {m.group(1)!r}" if m else ""
        return f"no permission to capture{where}: {GRANT_HINT}"
    m = re.search(r"Invalid capture filter \"(.*)\" for interface '([^']*)'", text)
    if m:
        why = re.search(r"\(([^()]*(?:syntax error|can't|unknown|illegal)[^()]*)\)", text)
        return (f"bad capture filter {m.group(1)!r}: "
                f"{why.group(1) if why else 'dumpcap cannot compile it'}")
    last = [line for line in text.splitlines() if line.strip()]
    shown = last[-1] if last else "no message"
    return f"the capture tool failed (exit {code}): {shown}"


class Capture:
    """One running dumpcap. `stdout_fd` is the pipe to read; `stop()` ends it by PID."""

    def __init__(self, interfaces: list[str], bpf: str | None = None, snaplen: int = 0,
                 buffer_mb: int = 0) -> None:
        self.interfaces = interfaces
        self.bpf = bpf
        self.tool = capture_tool()
        self.argv = build_argv(self.tool, interfaces, bpf, snaplen, buffer_mb)
        self.stderr_lines: list[str] = []
        self._ready = threading.Event()
        self._lock = threading.Lock()
        self.proc: subprocess.Popen | None = None
        self._stderr_thread: threading.Thread | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, bufsize=0, start_new_session=True)
        try:
            import fcntl

            fcntl.fcntl(self.proc.stdout.fileno(), 1031, PIPE_BYTES)  # F_SETPIPE_SZ
        except OSError:  # pragma: no cover - an older kernel or a lower pipe-max-size
            pass
        self._stderr_thread = threading.Thread(target=self._read_stderr, daemon=True,
                                               name="tracer-dumpcap-stderr")
        self._stderr_thread.start()
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not self._ready.wait(0.05):
            if self.proc.poll() is not None:
                self._stderr_thread.join(2.0)
                raise LiveCaptureError(_classify(self.stderr_text, self.interfaces, self.bpf,
                                                 self.proc.returncode))
            if time.monotonic() > deadline:
                self.stop()
                raise LiveCaptureError(f"the capture tool did not start within "
                                       f"{READY_TIMEOUT_S:.0f} s: {self.stderr_text.strip()[-200:]}")

    @property
    def pid(self) -> int:
        return self.proc.pid if self.proc else -1

    @property
    def stdout_fd(self) -> int:
        return self.proc.stdout.fileno()

    @property
    def stderr_text(self) -> str:
        with self._lock:
            return "\n".join(self.stderr_lines)

    def _read_stderr(self) -> None:
        for raw in iter(self.proc.stderr.readline, b""):
            line = raw.decode("utf-8", "replace").rstrip("\n")
            with self._lock:
                if len(self.stderr_lines) < 1000:
                    self.stderr_lines.append(line)
            if line.startswith("File:"):
                self._ready.set()

    def terminate(self) -> None:
        """Ask dumpcap to finish (SIGTERM to its PID); the pipe then reaches its end."""
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.kill(self.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass

    def stop(self, grace_s: float = STOP_GRACE_S) -> int | None:
        """Terminate, wait up to `grace_s`, then SIGKILL; the exit status."""
        if self.proc is None:
            return None
        self.terminate()
        try:
            self.proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=grace_s)
        if self._stderr_thread is not None:
            self._stderr_thread.join(2.0)
        for stream in (self.proc.stdout, self.proc.stderr):
            try:
                stream.close()
            except OSError:
                pass
        return self.proc.returncode

    def drops(self) -> dict[str, dict[str, int]]:
        return parse_drop_lines(self.stderr_text)

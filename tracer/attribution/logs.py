"""HAProxy log lines: parsing (the I/O-free part), joining to flows, agreement with tracer.

Rules: a log line is matched against log-format strings turned into regular expressions: the
`log-format` of each frontend in the config when one is given, then HAProxy's default `option
httplog` and `option tcplog` formats (configuration manual 8.2). The match is a search, not
anchored, so any syslog wrapping in front (RFC 3164 `<134>Nov 22 02:05:14 host haproxy[42]: `,
RFC 5424, journald) and any suffix after are ignored. Lines no format matches are counted,
not raised.

The log-format subset understood (other `%` variables match one word and are ignored):
`%ci %cp` client address and port, `%t %tr` accept / request date (`dd/Mon/yyyy:HH:MM:SS.mmm`,
HAProxy's local time), `%ft %f %b %s` frontend, backend, server, `%TR %Tw %Tc %Tr %Ta %Tt %Th
%Ti %Tq` timers (ms), `%ST` status, `%B` bytes, `%ts %tsc` termination state, `%ac %fc %bc %sc
%rc` connection counts and retries, `%sq %bq` queues, `%bi %bp` HAProxy's backend-side source
address and port, `%si %sp` server address and port, `%fi %fp` frontend address and port,
`%hr %hs` captured headers (optional), `%r` / `%{+Q}r` the request line.

Joining (vectorized): a line belongs to the frontend flow with the same client address and
port whose start is nearest to the logged accept date. The logged date is in HAProxy's local
time zone, which the log does not say: the offset is the median difference over the lines whose
client address and port match exactly one flow, rounded to 15 minutes. With `%bi:%bp` in the
format, the backend flow from that source port is joined to the line's frontend flow exactly,
overriding the timing join.
"""

from __future__ import annotations

import calendar
import re
from dataclasses import dataclass, field

import numpy as np

from tracer.attribution import vocab as av
from tracer.attribution.config import HTTPLOG_FORMAT, TCPLOG_FORMAT, Config
from tracer.errors import TracerError
from tracer.packet import parse_address


class LogError(TracerError):
    """The HAProxy log could not be read."""


_IP = r"[0-9A-Fa-f:.]+"
_NUM = r"[+-]?\d+"
_DATE = r"\d{2}/[A-Za-z]{3}/\d{4}:\d{2}:\d{2}:\d{2}(?:\.\d{3,6})?"
_VARS = {
    "ci": _IP, "cp": r"\d+", "bi": _IP, "bp": r"\d+", "si": _IP, "sp": r"\d+", "fi": _IP,
    "fp": r"\d+", "t": _DATE, "tr": _DATE, "trg": _DATE, "trl": _DATE,
    "ft": r"\S+", "f": r"\S+", "b": r"\S+", "s": r"\S+",
    "TR": _NUM, "Tw": _NUM, "Tc": _NUM, "Tr": _NUM, "Ta": _NUM, "Tt": _NUM, "Th": _NUM,
    "Ti": _NUM, "Tq": _NUM, "ST": _NUM, "B": _NUM, "ts": r"\S{2}", "tsc": r"\S{4}",
    "ac": _NUM, "fc": _NUM, "bc": _NUM, "sc": _NUM, "rc": _NUM, "sq": _NUM, "bq": _NUM,
    "CC": r"\S+", "CS": r"\S+", "ID": r"\S+",
}
_TOKEN = re.compile(r"%(\{[^}]*\})?(\[[^\]]*\]|[A-Za-z]+)")
_STREAM_LIKE = re.compile(r"[0-9A-Fa-f:.\]]+:\d+ \[\d{2}/[A-Za-z]{3}/\d{4}")
_MONTHS = {m: i for i, m in enumerate(calendar.month_abbr) if m}


def format_regex(log_format: str) -> re.Pattern:
    """A log-format string as a regular expression with a named group per known variable."""
    parts: list[str] = []
    named: set[str] = set()
    pos = 0
    text = log_format
    while pos < len(text):
        m = _TOKEN.search(text, pos)
        if not m:
            parts.append(re.escape(text[pos:]))
            break
        parts.append(re.escape(text[pos:m.start()]))
        options, var = m.group(1) or "", m.group(2)
        end = m.end()
        if var in ("hr", "hs", "hrl", "hsl"):
            # captured headers: absent when nothing is captured, then their blank goes too
            parts.append(r"(?:\{[^}]*\}\s?)?")
            if end < len(text) and text[end] == " ":
                end += 1
        elif var == "r":
            parts.append(r'"[^"]*"' if "+Q" in options else r".*?")
        elif var in _VARS:
            pattern = _VARS[var]
            if "+Q" in options:
                pattern = f'"{pattern}"'
            if var not in named:
                parts.append(f"(?P<{var}>{pattern})")
                named.add(var)
            else:
                parts.append(f"(?:{pattern})")
        else:
            parts.append(r'(?:"[^"]*"|\S*)')
        pos = end
    return re.compile("".join(parts).replace(r"\ ", " "))


LOG_DTYPE = np.dtype(
    [
        ("line", np.int64),  # 1-based line number in the file
        ("client_hi", np.uint64), ("client_lo", np.uint64), ("client_port", np.uint16),
        ("accept_local_ns", np.int64),  # the logged date read as if it were UTC
        ("tt_ms", np.int64),  # total time (Tt or Ta), -1 unknown
        ("retries", np.int32),
        ("bsrc_hi", np.uint64), ("bsrc_lo", np.uint64), ("bsrc_port", np.uint16),  # 0: unknown
        ("status", np.int32),
    ]
)


@dataclass
class LogEntries:
    path: str
    rows: np.ndarray  # LOG_DTYPE
    termination: list[str]  # 2 letters per row
    frontend: list[str]
    backend: list[str]
    server: list[str]
    lines: int = 0
    unparsed: int = 0  # looked like a stream's line (client ip:port [date]) but did not parse
    other: int = 0  # not a stream's line (server UP/DOWN, warnings, notices)
    first_line: str = ""
    unparsed_examples: list[str] = field(default_factory=list)
    unique_id: list[str] = field(default_factory=list)  # %ID per row ("" without)


def _date_ns(text: str) -> int:
    day, mon, rest = text.split("/", 2)
    year, hh, mm, ss = rest.split(":")
    sec, _, frac = ss.partition(".")
    base = calendar.timegm((int(year), _MONTHS[mon], int(day), int(hh), int(mm), int(sec)))
    return base * 1_000_000_000 + (int(frac.ljust(9, "0")[:9]) if frac else 0)


def parse_log(text: str, path: str = "haproxy.log", config: Config | None = None) -> LogEntries:
    formats: list[re.Pattern] = []
    if config is not None:
        for p in config.frontends:
            f = p.effective_log_format()
            if f:
                formats.append(format_regex(f))
    formats += [format_regex(HTTPLOG_FORMAT), format_regex(TCPLOG_FORMAT)]
    rows = []
    term, fe, be, sv = [], [], [], []
    entries = LogEntries(path, np.zeros(0, LOG_DTYPE), term, fe, be, sv)
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        entries.lines += 1
        if entries.lines == 1:
            entries.first_line = line[:200]
        match = None
        for rx in formats:
            match = rx.search(line)
            if match and match.groupdict().get("ci"):
                break
            match = None
        if match is None:
            if not _STREAM_LIKE.search(line):
                entries.other += 1  # server state changes, warnings, startup notices
                continue
            entries.unparsed += 1
            if len(entries.unparsed_examples) < 3:
                entries.unparsed_examples.append(line[:200])
            continue
        g = match.groupdict()
        try:
            hi, lo = parse_address(g["ci"])
            date = g.get("tr") or g.get("t") or g.get("trg") or g.get("trl")
            accept = _date_ns(date) if date else -1
        except (ValueError, KeyError):
            entries.unparsed += 1
            continue
        b_hi = b_lo = 0
        b_port = 0
        if g.get("bi") and g.get("bp"):
            try:
                b_hi, b_lo = parse_address(g["bi"])
                b_port = int(g["bp"])
            except ValueError:
                pass
        total = g.get("Tt") or g.get("Ta")
        rows.append((number, hi, lo, int(g["cp"]), accept, int(total) if total else -1,
                     int(g["rc"].lstrip("+")) if g.get("rc") else 0, b_hi, b_lo, b_port,
                     int(g["ST"]) if g.get("ST") else -1))
        state = g.get("tsc") or g.get("ts") or "??"
        term.append(state[:2])
        fe.append(g.get("ft") or g.get("f") or "")
        be.append(g.get("b") or "")
        sv.append(g.get("s") or "")
        entries.unique_id.append(g.get("ID") or "")
    entries.rows = np.array(rows, LOG_DTYPE) if rows else np.zeros(0, LOG_DTYPE)
    return entries


def load_log(path: str, config: Config | None = None) -> LogEntries:
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            text = fh.read()
    except OSError as exc:
        raise LogError(f"{path}: cannot read the HAProxy log ({exc.strerror or exc})") from None
    entries = parse_log(text, path, config)
    if entries.lines and not entries.rows.shape[0]:
        raise LogError(f"{path}: no line matches HAProxy's httplog/tcplog format"
                       + (" or the config's log-format" if config else "")
                       + f" (first line: {entries.first_line[:100]!r})")
    return entries


# -- joining ------------------------------------------------------------------------------------

def _key(hi: np.ndarray, lo: np.ndarray, port: np.ndarray) -> np.ndarray:
    h = hi.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)
    h ^= lo.astype(np.uint64) + np.uint64(0x632BE59BD9B4E019)
    h = h * np.uint64(0xBF58476D1CE4E5B9) ^ port.astype(np.uint64)
    return h


def _nearest(keys: np.ndarray, times: np.ndarray, q_keys: np.ndarray, q_times: np.ndarray,
             width: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """For each query, the position (in `keys` order as given, sorted by (key, time)) of the
    entry with the same key and the nearest time (-1: none), and how many had that key."""
    lo = np.searchsorted(keys, q_keys, side="left")
    hi = np.searchsorted(keys, q_keys, side="right")
    count = hi - lo
    if keys.size == 0:
        return np.full(q_keys.size, -1, np.int64), count
    pos = lo[:, None] + np.arange(width)[None, :]
    ok = pos < hi[:, None]
    pos_c = np.minimum(pos, keys.size - 1)
    dist = np.where(ok, np.abs(times[pos_c] - q_times[:, None]), np.iinfo(np.int64).max)
    best = np.argmin(dist, axis=1)
    chosen = pos_c[np.arange(q_keys.size), best]
    return np.where(count > 0, chosen, -1), count


def _unique_id_join(entries: LogEntries, flow_row: np.ndarray, join, backend_unique_ids, roles
                    ) -> None:
    """A unique id is one stream's: the server connection that carried it served the stream
    whose log line has it (a loop over server connections with an id)."""
    by_id = {uid: int(row) for uid, row in zip(entries.unique_id, flow_row.tolist(), strict=True)
             if uid and uid != "-" and row >= 0}
    joined = changed = 0
    for b, uid in backend_unique_ids.items():
        f = by_id.get(uid)
        if f is None:
            continue
        joined += 1
        changed += int(join.front_of[b] != f)
        join.front_of[b] = f
        join.method[b] = 2
        join.candidates[b] = 1
    join.stats["log_unique_id_joins"] = joined
    join.stats["log_unique_id_changed_joins"] = changed
    backs = np.flatnonzero(roles.leg == av.LEG_BACKEND)
    ok = join.front_of[backs] >= 0
    join.stats["backend_flows_joined"] = int(ok.sum())
    join.stats["backend_flows_unjoined"] = int((~ok).sum())
    join.stats["join_rate"] = float(ok.mean()) if backs.size else None


def apply_log_join(entries: LogEntries, flows: np.ndarray, roles, join, topo,
                   backend_unique_ids: dict[int, str] | None = None) -> dict:
    """Ties log lines to frontend flows; with %bi:%bp, sets the exact backend join; with %ID
    in the log and the unique-id header read from server connections (`backend_unique_ids`:
    backend flow row -> id), a server connection joins the stream whose line logged its id."""
    rows = entries.rows
    fronts = np.flatnonzero(roles.leg == av.LEG_FRONTEND)
    start = np.where(flows["syn_ts"] >= 0, flows["syn_ts"], flows["first_ts"])
    fk = _key(flows["initiator_hi"][fronts], flows["initiator_lo"][fronts], flows["initiator_port"][fronts])
    o = np.lexsort((start[fronts], fk))
    fk, f_rows = fk[o], fronts[o]
    f_start = start[f_rows]
    qk = _key(rows["client_hi"], rows["client_lo"], rows["client_port"])
    accept = rows["accept_local_ns"]
    pos, count = _nearest(fk, f_start, qk, accept)
    unique = (count == 1) & (accept >= 0)
    offset = 0
    if unique.any():
        diffs = f_start[pos[unique]] - accept[unique]
        quarter = 900 * 1_000_000_000
        offset = int(np.round(np.median(diffs) / quarter)) * quarter
    pos, count = _nearest(fk, f_start, qk, accept + offset)
    flow_row = np.where(pos >= 0, f_rows[np.maximum(pos, 0)], -1)
    # a line must fall near its flow: within 2 s of the flow's start (clock and rounding)
    near = (pos >= 0) & (np.abs(f_start[np.maximum(pos, 0)] - (accept + offset)) <= 2_000_000_000)
    flow_row = np.where(near, flow_row, -1)
    entries_flow = flow_row
    # exact backend join from %bi:%bp
    exact = 0
    has_bsrc = rows["bsrc_port"] > 0
    if has_bsrc.any():
        backs = np.flatnonzero(roles.leg == av.LEG_BACKEND)
        bk = _key(flows["initiator_hi"][backs], flows["initiator_lo"][backs], flows["initiator_port"][backs])
        ob = np.lexsort((start[backs], bk))
        bk, b_rows = bk[ob], backs[ob]
        q = np.flatnonzero(has_bsrc & (flow_row >= 0))
        qb = _key(rows["bsrc_hi"][q], rows["bsrc_lo"][q], rows["bsrc_port"][q])
        bpos, _ = _nearest(bk, start[b_rows], qb, start[flow_row[q]])
        hit = bpos >= 0
        b_sel = b_rows[bpos[hit]]
        f_sel = flow_row[q[hit]]
        # a server connection several log lines name was reused across streams (keep-alive,
        # http-reuse): a one-to-one join cannot express it; it keeps its first stream
        uniq, first_idx, counts = np.unique(b_sel, return_index=True, return_counts=True)
        shared = counts > 1
        b_one, f_one = b_sel[first_idx], f_sel[first_idx]
        changed = (join.front_of[b_one] != f_one) & ~shared
        join.front_of[b_one] = f_one
        join.method[b_one] = 2
        join.candidates[b_one] = 1
        exact = int(uniq.size)
        join.stats["log_joined_backend_flows"] = exact
        join.stats["log_shared_backend_flows"] = int(shared.sum())
        join.stats["log_changed_joins"] = int(changed.sum())
        unshared = int((~shared).sum())
        join.stats["join_accuracy_vs_log"] = (1 - int(changed.sum()) / unshared) if unshared else None
        backs_all = np.flatnonzero(roles.leg == av.LEG_BACKEND)
        joined = join.front_of[backs_all] >= 0
        join.stats["backend_flows_joined"] = int(joined.sum())
        join.stats["backend_flows_unjoined"] = int((~joined).sum())
        join.stats["join_rate"] = float(joined.mean()) if backs_all.size else None
    if backend_unique_ids and any(entries.unique_id):
        _unique_id_join(entries, entries_flow, join, backend_unique_ids, roles)
    entries.__dict__["flow_row"] = entries_flow
    return {
        "path": entries.path,
        "lines": entries.lines,
        "parsed": int(rows.shape[0]),
        "unparsed": entries.unparsed,
        "other_lines": entries.other,
        "joined_to_frontend_flows": int((entries_flow >= 0).sum()),
        "local_time_offset_s": offset / 1e9,
        "exact_backend_joins": exact,
    }


def agreement(entries: LogEntries, attribution) -> dict:
    """Predicted vs logged termination state per logged stream that has an RST (confusion
    table), and how many predicted-unlogged connections (rejects, silent drops) have no line."""
    flow_row = entries.__dict__.get("flow_row")
    t = attribution.result.table
    term = attribution.result.termination
    n_f = attribution.flows.shape[0]
    # per frontend flow: the prediction of its most telling RST (faults first, then earliest)
    stream = np.where(t["leg"] == av.LEG_FRONTEND, t["flow_row"], t["peer_flow_row"])
    order = np.lexsort((t["frame"], t["routine"], stream))
    predicted: dict[int, str] = {}
    for i in order.tolist():
        s = int(stream[i])
        if s >= 0 and s not in predicted:
            predicted[s] = term[i] or "not-logged"
    logged_rows = set()
    table: dict[str, dict[str, int]] = {}
    agree = total = 0
    for k in range(entries.rows.shape[0]):
        fr = int(flow_row[k]) if flow_row is not None else -1
        if fr < 0:
            continue
        logged_rows.add(fr)
        if fr not in predicted:
            continue
        p, logged = predicted[fr], entries.termination[k]
        table.setdefault(p, {})
        table[p][logged] = table[p].get(logged, 0) + 1
        total += 1
        agree += p == logged
    unlogged_pred = [s for s, p in predicted.items() if p == "not-logged" and 0 <= s < n_f]
    return {
        "termination_agreement": {
            "streams_compared": total,
            "agree": agree,
            "rate": (agree / total) if total else None,
            "confusion": table,  # predicted -> logged -> streams
        },
        "predicted_unlogged": len(unlogged_pred),
        "predicted_unlogged_without_line": sum(1 for s in unlogged_pred if s not in logged_rows),
    }

"""The payload join on the lab's proxy-protocol scenario, against HAProxy's own log.

Rules: the capture (captures/lab/out/proxy-protocol.pcapng, snaplen 512) has bursts of
concurrent streams through servers that get PROXY protocol v1 or v2 headers, and through
servers that get only the X-Forwarded-For and X-Unique-ID headers. HAProxy's log line per
stream names the client (%ci:%cp), the backend-side source port of the server connection it
used (%bi:%bp) and the unique id (%ID): the oracle. The test reads the log itself (never
through tracer's log import) and runs the real pipeline with the config, with `--proxy` only,
and with nothing.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from tracer.analysis import AttributionOptions
from tracer.attribution import vocab as av
from tracer.attribution.config import load_config
from tracer.attribution.join import METHOD_PAYLOAD
from tracer.attribution.logs import load_log
from tracer.attribution.payload import client_claim
from tracer.packet import format_address
from tracer.pipeline import analyze_native, run

ROOT = Path(__file__).resolve().parent.parent
LAB = ROOT / "captures" / "lab"
CAPTURE = LAB / "out" / "proxy-protocol.pcapng"
LOG = LAB / "out" / "proxy-protocol.haproxy.log"
CONFIG = LAB / "haproxy-proxy-protocol.cfg"
LINE = re.compile(r"^(\S+):(\d+) \[.*?(?: id=(\S+))? lab:ts=\S\S bsrc=(\S+):(\d+) rc=")


def _logged() -> list[tuple[str, int, int, str | None]]:
    """(client address, client port, backend-side source port, unique id) per logged stream."""
    out = []
    for line in LOG.read_text().splitlines():
        m = LINE.match(line)
        if m:
            out.append((m.group(1), int(m.group(2)), int(m.group(5)), m.group(3)))
    assert len(out) >= 100
    return out


def _analysed(options: AttributionOptions):
    analysis, summary = run(analyze_native(str(CAPTURE), attribution=options))
    return analysis, summary


def _agreement(analysis) -> tuple[int, int, list]:
    """Logged streams whose server connection tracer joined to the logged client's flow."""
    a = analysis.attribution
    flows, front_of = a.flows, a.join.front_of
    leg = a.roles.leg
    start = np.where(flows["syn_ts"] >= 0, flows["syn_ts"], flows["first_ts"])
    client = {}
    for row in np.flatnonzero(leg == av.LEG_FRONTEND).tolist():
        key = (format_address(flows["initiator_hi"][row], flows["initiator_lo"][row]),
               int(flows["initiator_port"][row]))
        assert key not in client  # the lab never reuses a client port
        client[key] = row
    right, wrong = 0, []
    logged = _logged()
    for ci, cp, bp, _ in logged:
        front = client[(ci, cp)]
        backs = np.flatnonzero((leg == av.LEG_BACKEND) & (flows["initiator_port"] == bp)
                               & (start >= start[front]))
        back = backs[np.argmin(start[backs])]  # the first from that port after the stream began
        if front_of[back] == front:
            right += 1
        else:
            wrong.append((ci, cp, bp, int(front_of[back])))
    return right, len(logged), wrong


@pytest.mark.parametrize("mode", ["config", "proxy", "inferred"])
def test_payload_join_agrees_with_the_log_on_every_connection(mode):
    options = {"config": AttributionOptions(config=load_config(str(CONFIG))),
               "proxy": AttributionOptions(proxy=["10.232.1.1"]),
               "inferred": AttributionOptions()}[mode]
    analysis, summary = _analysed(options)
    join = summary["join"]
    right, total, wrong = _agreement(analysis)
    print(f"\nproxy-protocol [{mode}]: payload join agrees with the log on {right}/{total}; "
          f"{join}")
    assert right == total, wrong[:10]
    # every server connection named its client, and each named one the capture has
    assert join["payload_claims"] == join["backend_flows"]
    assert join["payload_unmatched"] == 0
    by = join["payload_claims_by_source"]
    assert by["proxy_v1"] and by["proxy_v2"] and by["unique_id"]
    assert join["payload_confirmed"] + join["payload_contradicted"] == join["payload_claims"]


def test_timing_mistakes_are_what_payload_contradicts():
    """Timing alone (payload off) against the log: each of its mistakes is a join payload
    contradicted, and nothing else was."""
    config = load_config(str(CONFIG))
    timing, _ = _analysed(AttributionOptions(config=config, payload=False))
    right, total, wrong = _agreement(timing)
    _, summary = _analysed(AttributionOptions(config=config))
    print(f"\ntiming alone agrees with the log on {right}/{total}")
    assert summary["join"]["payload_contradicted"] == total - right
    assert "payload_claims" not in _analysed(AttributionOptions(config=config, payload=False))[1]["join"]


def test_unique_ids_in_the_log_are_the_ones_on_the_server_connections():
    """The unique id HAProxy logged for a stream is the X-Unique-ID header of the server
    connection the payload join gave it; with the log, the id join agrees (changes nothing)."""
    config = load_config(str(CONFIG))
    analysis, _ = _analysed(AttributionOptions(config=config))
    a = analysis.attribution
    flows, front_of = a.flows, a.join.front_of
    by_front = {int(f): int(b) for b, f in enumerate(front_of.tolist()) if f >= 0}
    client = {(format_address(flows["initiator_hi"][r], flows["initiator_lo"][r]),
               int(flows["initiator_port"][r])): r
              for r in np.flatnonzero(a.roles.leg == av.LEG_FRONTEND).tolist()}
    checked = 0
    for ci, cp, _, uid in _logged():
        if uid is None:
            continue
        back = by_front[client[(ci, cp)]]
        claim = client_claim(analysis.prefixes.start(int(flows["flow_id"][back])),
                             unique_id_header="X-Unique-ID")
        assert claim is not None and claim.unique_id == uid
        checked += 1
    assert checked >= 60
    _, summary = _analysed(AttributionOptions(config=config,
                                              log_entries=load_log(str(LOG), config)))
    join = summary["join"]
    assert join["log_unique_id_joins"] == checked
    assert join["log_unique_id_changed_joins"] == 0
    assert join["join_accuracy_vs_log"] == 1.0


def test_payload_joins_are_marked():
    analysis, summary = _analysed(AttributionOptions(config=load_config(str(CONFIG))))
    method = analysis.attribution.join.method
    assert int((method == METHOD_PAYLOAD).sum()) == summary["join"]["payload_joined"]

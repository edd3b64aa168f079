"""Patterns and diagnosis on the HAProxy lab's captures, and the reports that carry them.

Rules: every lab scenario runs through the real pipeline (decode, flows, attribution, patterns)
with its own haproxy-<s>.cfg; the test checks that its top finding names the cause and the
HAProxy setting or component the scenario is about (captures/lab/README.md says what each one
injected). The truth CSVs are not read by tracer. Routine closes must stay routine. The HTML
report is opened in headless Chromium (Debian `chromium`, installed by scripts/setup.sh): its
DOM must hold the plots, and a PNG screenshot of the demo capture's report is written to
tests/output/demo-report.png for people to look at.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

from tracer.analysis import AttributionOptions
from tracer.attribution import vocab as av
from tracer.attribution.config import load_config
from tracer.patterns.anomaly import anomaly_windows, rolling_baseline
from tracer.pipeline import analyze_native, run

ROOT = Path(__file__).resolve().parent.parent
LAB = ROOT / "captures" / "lab"
OUT = LAB / "out"
DEMO = ROOT / "captures" / "demo-haproxy.pcapng"
SCREENSHOT = ROOT / "tests" / "output" / "demo-report.png"
TRACER = [sys.executable, "-m", "tracer"]


def _capture(scenario: str) -> Path:
    return DEMO if scenario == "mixed" else OUT / f"{scenario}.pcapng"


_CACHE: dict[str, tuple] = {}


def _analysed(scenario: str):
    if scenario not in _CACHE:
        options = AttributionOptions(config=load_config(str(LAB / f"haproxy-{scenario}.cfg")))
        _CACHE[scenario] = run(analyze_native(str(_capture(scenario)), attribution=options))
    return _CACHE[scenario]


def _top(scenario: str) -> dict:
    findings = _analysed(scenario)[1]["findings"]
    assert findings, f"{scenario}: no findings"
    return findings[0]


# scenario -> (cause, a check of the setting, other checks on the top finding)
EXPECTED = {
    "client-abort": ("client", lambda s: s == "clients", None),
    "server-reset": ("server", lambda s: s.startswith("server be_app/s") or s.startswith("server be_tcp/s"), None),
    "server-refused": ("server", lambda s: "10.232.2.12:8081" in s, None),
    "timeout-server": ("server", lambda s: s == "timeout server", lambda f: f["configured"] == "1s"),
    "tcp-reject": ("haproxy", lambda s: s == "tcp-request connection reject",
                   lambda f: f["clients"][0].startswith("10.232.1.20 ")),
    "timeout-client": ("client", lambda s: s == "timeout client", lambda f: f["configured"] == "1s"),
    "nolinger": ("haproxy", lambda s: s == "option nolinger", None),
    "http-deny": ("haproxy", lambda s: s == "http-request deny",
                  lambda f: f["configured"] == "http-request deny, http-request reject"),
    "timeout-connect": ("server", lambda s: s == "timeout connect",
                        lambda f: f["configured"] == "500ms" and "blackhole" in f["server"]),
    "silent-drop": ("haproxy", lambda s: s == "tcp-request connection silent-drop", None),
    "timeout-http-request": ("client", lambda s: s == "timeout http-request", lambda f: f["configured"] == "1s"),
    "overload": ("haproxy", lambda s: s == "maxconn", lambda f: "fe_small maxconn 3" in f["configured"]),
    "health-check": ("server", lambda s: s.startswith("health checks of be_") and "10.232.2.12" in s, None),
    "halfclose-limits": ("haproxy", lambda s: "http-request deny" in s and "tune.bufsize" in s, None),
    # 3 % of data/ACK segments dropped on the backend leg; dropped pure ACKs are invisible
    "loss": ("network", lambda s: s.startswith("network path between HAProxy"),
             lambda f: f["leg"] == "backend" and 0.015 <= f["loss_rate"] <= 0.045),
    "middlebox": ("network", lambda s: s.startswith("network path"), lambda f: f["kind"] == "rst_middlebox_injected"),
    "loopback": ("server", lambda s: s.startswith("server "), None),
    "ipv6": ("server", lambda s: s.startswith("server "), None),
    # 3 % of data/ACK segments dropped on the frontend leg (router's frontend interface)
    "loss-frontend": ("network", lambda s: s.startswith("network path between clients"),
                      lambda f: f["leg"] == "frontend" and 0.01 <= f["loss_rate"] <= 0.045),
    # s2's backend killed three times: connection attempts refused while it is down
    "server-crash": ("server", lambda s: s.startswith("server be_crash/s2"), None),
    # silent-drop with CAP_NET_ADMIN: HAProxy sends nothing, its kernel later resets the
    # client's packets for a socket that no longer exists
    "silent-drop-netadmin": ("haproxy", lambda s: s == "tcp-request connection silent-drop", None),
    # clients giving up while queued or waiting, HAProxy aborting the server side for them
    "abortonclose": ("client", lambda s: s == "clients", None),
    # bursts of concurrent streams (PROXY protocol, forwarded-for, unique ids): 16 client
    # aborts outnumber the 8 + 8 server resets split over four servers
    "proxy-protocol": ("client", lambda s: s == "clients", None),
    # the demo: 1 % loss on the backend leg among everything else
    "mixed": ("network", lambda s: s.startswith("network path between HAProxy"),
              lambda f: f["leg"] == "backend" and 0.005 <= f["loss_rate"] <= 0.02),
}


# Scenarios whose RSTs are all routine closes: no fault finding to expect.
NO_FAULT = {"keepalive"}


def test_every_lab_scenario_has_an_expected_top_finding() -> None:
    scenarios = {p.stem for p in OUT.glob("*.pcapng")} | {"mixed"}
    assert scenarios - NO_FAULT - set(EXPECTED) == set()


@pytest.mark.parametrize("scenario", sorted(EXPECTED))
def test_top_finding_names_cause_and_setting(scenario: str) -> None:
    top = _top(scenario)
    cause, setting_ok, extra_ok = EXPECTED[scenario]
    shown = {k: top[k] for k in ("severity", "title", "cause", "setting", "configured")}
    assert top["cause"] == cause, shown
    assert top["setting"] and setting_ok(top["setting"]), shown
    assert extra_ok is None or extra_ok(top), top
    assert top["severity"] != "info" and not top["routine"]
    assert top["evidence_frames"] and top["window"] is not None


def test_keepalive_has_only_routine_closes() -> None:
    """Every RST of the keep-alive scenario is a routine close: the diagnosis says so and
    raises no fault above `low`."""
    findings = _analysed("keepalive")[1]["findings"]
    routine = [f for f in findings if f["routine"]]
    assert len(routine) == 1 and routine[0]["severity"] == "info" and routine[0]["count"] == 46
    assert not [f for f in findings if not f["routine"] and f["severity"] in ("critical", "high", "medium")]


@pytest.mark.parametrize("scenario", ["client-abort", "server-reset", "nolinger", "mixed"])
def test_routine_closes_never_count_as_faults(scenario: str) -> None:
    analysis, summary = _analysed(scenario)
    t = analysis.attribution.result.table
    findings = summary["findings"]
    routine = [f for f in findings if f["routine"]]
    assert [f["severity"] for f in routine] == ["info"] * len(routine)
    assert sum(f["count"] for f in routine) == int(t["routine"].sum())
    # RST findings count exactly the fault RSTs that are not timeouts (those are per flow)
    timeouts = np.isin(t["reason"], [av.REASON[r] for r in ("haproxy_timeout_client",
                                                            "haproxy_timeout_http_request",
                                                            "haproxy_timeout_server")])
    rst_findings = [f for f in findings if f["kind"].startswith("rst_")]
    assert sum(f["count"] for f in rst_findings) == int((~t["routine"] & ~timeouts).sum())
    routine_frames = set(t["frame"][t["routine"]].tolist())
    for f in rst_findings:
        assert not routine_frames & set(f["evidence_frames"]), f["title"]


def test_loss_is_localized_against_the_capture_point() -> None:
    """In the loss scenario the router drops segments both ways on the backend leg; the capture
    is at HAProxy, so the server's lost segments never reach it (lost before the capture point)
    and HAProxy's are seen, then resent (lost after it). The frontend leg has no loss."""
    _, summary = _analysed("loss")
    legs = summary["patterns"]["by_leg"]
    back, front = legs["backend"], legs["frontend"]
    assert back["lost_before_capture"] > 0 and back["lost_after_capture"] > 0
    assert front["lost_before_capture"] + front["lost_after_capture"] <= 1
    series = summary["timeseries"]["legs"]["backend"]
    assert sum(series["lost_before_capture"]) == back["lost_before_capture"]
    assert sum(series["data_segments"]) == back["data_segments"]


def test_breakdowns_add_up() -> None:
    analysis, summary = _analysed("mixed")
    pat = summary["patterns"]
    assert sum(g["flows"] for g in pat["by_leg"].values()) == summary["flows"]["total"]
    assert sum(g["rsts_fault"] + g["rsts_routine"] for g in pat["by_leg"].values()) == summary["rsts"]
    ts = summary["timeseries"]
    assert ts["bucket_s"] == 1 and ts["buckets"] == int(summary["duration_s"]) + 1
    assert sum(ts["rsts_fault"]) + sum(ts["rsts_routine"]) == summary["rsts"]
    assert sum(ts["flows_started"]) == summary["flows"]["total"]
    assert pat["by_client_subnet"] and all(k.endswith("/24") for k in pat["by_client_subnet"])
    assert sum(ts["syn_retries"]) == sum(g["syn_retries"] for g in pat["by_leg"].values())


def test_ipv6_subnets_are_64() -> None:
    pat = _analysed("ipv6")[1]["patterns"]
    assert list(pat["by_client_subnet"]) == ["fd00:232:1::/64"]


# -- anomaly windows --------------------------------------------------------------------------

def test_anomaly_window_finds_a_burst_and_nothing_in_noise() -> None:
    rng = np.random.default_rng(7)
    counts = rng.poisson(2.0, 300).astype(float)
    assert anomaly_windows(counts, counts=True, min_excess=3) == []
    counts[150:153] += 25
    windows = anomaly_windows(counts, counts=True, min_excess=3)
    assert len(windows) == 1 and windows[0]["first"] == 150 and windows[0]["last"] == 152
    # a slow ramp is a trend, not an anomaly; a flat zero series has nothing
    assert anomaly_windows(np.linspace(0, 50, 300), counts=True, min_excess=3) == []
    assert anomaly_windows(np.zeros(50), counts=True, min_excess=3) == []


def test_rolling_baseline_ignores_the_outlier_and_gaps() -> None:
    x = np.array([1.0, 1, 1, 100, 1, 1, np.nan, 1, 1])
    med, mad = rolling_baseline(x, window=5)
    assert med[3] == 1.0 and mad[3] == 0.0
    rates = np.full(60, 0.01)
    rates[30] = 0.2
    rates[10] = np.nan
    w = anomaly_windows(rates, counts=False, min_excess=0.01, relative_floor=0.5, absolute_floor=0.005)
    assert [x["peak"] for x in w] == [30]


# -- reports --------------------------------------------------------------------------------

def _tracer(*args: str, timeout: int = 120) -> subprocess.CompletedProcess:
    return subprocess.run([*TRACER, *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT)


def test_csvs_and_report_from_saved_json(tmp_path: Path) -> None:
    import csv

    cfg = str(LAB / "haproxy-loss.cfg")
    cap = str(OUT / "loss.pcapng")
    done = _tracer("analyze", cap, "--haproxy-config", cfg, "--format", "json", "-o", str(tmp_path / "r.json"),
                   "--flows-csv", str(tmp_path / "f.csv"), "--buckets-csv", str(tmp_path / "b.csv"),
                   "--html", str(tmp_path / "a.html"))
    assert done.returncode == 0, done.stderr
    doc = json.loads((tmp_path / "r.json").read_text())
    cap_doc = doc["captures"][0]
    for f in cap_doc["findings"]:
        for key in ("severity", "title", "cause", "setting", "action", "window", "evidence_frames", "rank"):
            assert key in f
        assert f["cause"] in ("client", "haproxy", "server", "network", "unknown")
    flows = list(csv.DictReader(open(tmp_path / "f.csv")))
    assert len(flows) == cap_doc["flows"]["total"]
    assert sum(int(r["rsts_fault"]) + int(r["rsts_routine"]) for r in flows) == cap_doc["rsts"]
    buckets = list(csv.DictReader(open(tmp_path / "b.csv")))
    assert len(buckets) == cap_doc["timeseries"]["buckets"]
    assert sum(int(r["backend_lost_before_capture"]) for r in buckets) == \
        cap_doc["patterns"]["by_leg"]["backend"]["lost_before_capture"]
    # the same page from the saved JSON, without the capture
    done = _tracer("report", str(tmp_path / "r.json"), "--html", str(tmp_path / "b.html"))
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "a.html").read_text() == (tmp_path / "b.html").read_text()
    text = _tracer("report", str(tmp_path / "r.json")).stdout
    assert "diagnosis" in text and "1. Packet loss on the backend leg" in text
    assert text.index("diagnosis") < text.index("TCP segments")  # faults first
    assert "\x1b[" not in text  # no colour off a terminal


@pytest.mark.parametrize("content, message", [
    ("{", "not a tracer JSON result"),
    ('{"captures": []}', "no schema_version"),
    ('{"schema_version": 99, "captures": []}', "schema version 99"),
])
def test_report_bad_input_is_one_line(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "x.json"
    path.write_text(content)
    done = _tracer("report", str(path), "--html", str(tmp_path / "x.html"))
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and message in done.stderr and "Traceback" not in done.stderr
    done = _tracer("report", str(tmp_path / "missing.json"))
    assert done.returncode == 2 and "no such file" in done.stderr


def _chromium(*args: str, timeout: int = 90) -> subprocess.CompletedProcess:
    exe = shutil.which("chromium")
    assert exe, "chromium is missing: run scripts/setup.sh (it installs Debian's chromium)"
    with tempfile.TemporaryDirectory(prefix="tracer-chromium-") as profile:
        return subprocess.run(
            [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-first-run",
             f"--user-data-dir={profile}", "--hide-scrollbars", *args],
            capture_output=True, text=False, timeout=timeout)


def test_html_report_renders_in_chromium(tmp_path: Path) -> None:
    html_path = tmp_path / "demo.html"
    done = _tracer("analyze", str(DEMO), "--haproxy-config", str(LAB / "haproxy-mixed.cfg"),
                   "--html", str(html_path), "-o", str(tmp_path / "demo.txt"))
    assert done.returncode == 0, done.stderr
    page = html_path.read_text()
    assert "http://" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "")  # nothing fetched
    assert "https://" not in page
    dom = _chromium("--virtual-time-budget=2000", "--dump-dom", html_path.as_uri())
    assert dom.returncode == 0, dom.stderr[-2000:]
    text = dom.stdout.decode()
    plots = {name for name in ("rsts_by_cause", "connections", "rtt_frontend", "rtt_backend", "loss",
                               "servers", "topology") if f'data-plot="{name}"' in text}
    assert plots == {"rsts_by_cause", "connections", "rtt_frontend", "rtt_backend", "loss", "servers",
                     "topology"}
    assert text.count('<svg class="plot"') >= 7
    assert text.count("<rect") > 100 and text.count("<path") >= 6  # bars and lines were drawn
    assert text.count('class="finding') >= 5
    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    SCREENSHOT.unlink(missing_ok=True)
    shot = _chromium("--window-size=1280,4200", f"--screenshot={SCREENSHOT}", html_path.as_uri())
    assert shot.returncode == 0, shot.stderr[-2000:]
    data = SCREENSHOT.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 100_000

"""The `tracer` command line (the I/O edge).

Rules: every error a user can cause ends as one line on stderr ("tracer: error: ...") and a
non-zero exit; no traceback reaches the user. Exit codes: 0 success; 1 the analysis ran but a
capture was corrupt and could only be read in part; 2 usage or input errors (no such file,
not a capture, unsupported link type, missing tool); 130 interrupted.
"""

from __future__ import annotations

import sys
import time

import click

from tracer import __version__
from tracer.errors import TracerError, UnsupportedLinkTypeError

EXIT_PARTIAL = 1


class _Progress:
    """A one-line progress indicator on stderr, only when stderr is a terminal."""

    def __init__(self, enabled: bool, label: str) -> None:
        self.enabled = enabled
        self.label = label
        self.started = time.monotonic()
        self.last = 0.0

    def __call__(self, done: int, total: int | None, frames: int) -> None:
        now = time.monotonic()
        if not self.enabled or now - self.last < 0.2:
            return
        self.last = now
        rate = frames / max(now - self.started, 1e-9)
        if total:
            pct = 100.0 * done / total
            bar_w = 24
            fill = int(bar_w * done / total)
            bar = "#" * fill + "-" * (bar_w - fill)
            text = f"{self.label} [{bar}] {pct:5.1f}%  {frames:,} packets  {rate:,.0f}/s"
        else:
            text = f"{self.label} {frames:,} packets  {rate:,.0f}/s"
        sys.stderr.write("\r" + text[:200] + "\x1b[K")
        sys.stderr.flush()

    def finish(self) -> None:
        if self.enabled and self.last:
            sys.stderr.write("\r\x1b[K")
            sys.stderr.flush()


def _fail(message: str, code: int = 2) -> None:
    click.echo(f"tracer: error: {message}", err=True)
    sys.exit(code)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="tracer")
def main() -> None:
    """tracer: who reset what, from the packets on both legs of HAProxy."""


@main.command()
@click.argument("files", nargs=-1, type=click.Path(allow_dash=True, readable=False))
@click.option("-r", "--read", "read_files", multiple=True,
              type=click.Path(allow_dash=True, readable=False),
              help="Capture file to read (may repeat; '-' reads stdin).")
@click.option("--format", "output_format", type=click.Choice(["text", "json"]), default="text",
              show_default=True, help="Report format.")
@click.option("-o", "--output", type=click.Path(dir_okay=False, writable=True, allow_dash=True),
              default="-", help="Write the report here instead of stdout.")
@click.option("--engine", type=click.Choice(["native", "pyshark"]), default="native",
              show_default=True,
              help="native: tracer's vectorized decoder. pyshark: tshark's dissectors (slow, "
                   "reads any encapsulation tshark knows).")
@click.option("-f", "--filter", "filter_expr", default=None,
              help="Keep only TCP segments matching a BPF-like expression, e.g. "
                   "'host 10.0.0.5 and port 443'.")
@click.option("--progress/--no-progress", default=None,
              help="Progress on stderr (default: when stderr is a terminal).")
@click.option("--rsts-csv", type=click.Path(dir_okay=False, allow_dash=True), default=None,
              help="Write one CSV row per RST packet to this file.")
@click.option("--flows-csv", type=click.Path(dir_okay=False, allow_dash=True), default=None,
              help="Write one CSV row per flow (leg, server, loss, RTT, RSTs) to this file.")
@click.option("--buckets-csv", type=click.Path(dir_okay=False, allow_dash=True), default=None,
              help="Write one CSV row per time bucket (RSTs by cause, loss, RTT per leg) to this file.")
@click.option("--html", "html_path", type=click.Path(dir_okay=False), default=None,
              help="Write a self-contained HTML report with plots to this file.")
@click.option("--join", is_flag=True,
              help="Read the files as one capture, in the order given (e.g. tcpdump -C/-G "
                   "rotations): flows continue across files, frame numbers go on counting.")
@click.option("--flow-idle-timeout", type=click.FloatRange(min=0.001), default=600.0,
              show_default=True, metavar="SECONDS",
              help="A flow quiet this long is finished to free its memory (checked between "
                   "batches; a later packet of it then opens a new, midstream flow): keep it "
                   "above HAProxy's longest idle timeout (e.g. timeout tunnel).")
@click.option("--flow-closed-timeout", type=click.FloatRange(min=0.001), default=10.0,
              show_default=True, metavar="SECONDS",
              help="A flow closed by FINs or an RST is finished after this much quiet.")
@click.option("--jobs", type=click.IntRange(1, 64), default=1, show_default=True,
              help="Flow-stage processes: packets are sharded by 4-tuple over this many workers "
                   "(same results; pays on large captures with spare cores).")
@click.option("--haproxy-config", type=click.Path(dir_okay=False, readable=False), default=None,
              help="HAProxy's configuration: frontends, servers, timeouts and rules for RST "
                   "attribution.")
@click.option("--proxy", "proxies", multiple=True, metavar="ADDR[:PORT]",
              help="HAProxy's frontend address (may repeat), when the config is not at hand; "
                   "without either, HAProxy is inferred from the traffic.")
@click.option("--haproxy-log", type=click.Path(dir_okay=False, readable=False), default=None,
              help="HAProxy's log (httplog/tcplog, syslog-wrapped or raw, or the config's "
                   "log-format): sharpens the leg join and is compared with tracer's verdicts.")
def analyze(files, read_files, output_format, output, engine, filter_expr, progress,
            rsts_csv, flows_csv, buckets_csv, html_path, join, flow_idle_timeout,
            flow_closed_timeout, jobs, haproxy_config, proxies, haproxy_log) -> None:
    """Analyse capture files (pcap, pcapng, gzip-compressed, or '-' for stdin)."""
    from tracer.analysis import AttributionOptions
    from tracer.attribution.config import load_config
    from tracer.attribution.logs import load_log
    from tracer.filter import compile_filter
    from tracer.pipeline import analyze_native, analyze_pyshark, run
    from tracer.report import make_document, render_json, render_text, write_rsts_csv

    paths = list(read_files) + list(files)
    if not paths:
        _fail("no capture given: tracer analyze FILE [FILE...] (or '-' for stdin)")
    if paths.count("-") > 1:
        _fail("stdin ('-') can be read only once")
    show_progress = sys.stderr.isatty() if progress is None else progress
    if join and engine != "native":
        _fail("--join works with the native engine only")
    _check_topology_options(haproxy_config, proxies)
    try:
        packet_filter = compile_filter(filter_expr) if filter_expr else None
        config = load_config(haproxy_config) if haproxy_config else None
        log_entries = load_log(haproxy_log, config) if haproxy_log else None
        captures = []
        rst_tables = []
        flow_tables = []
        partial = False
        for path in ([paths] if join else paths):
            meter = _Progress(show_progress, "<stdin>" if path == "-" else str(path))
            analyze_one = analyze_native if engine == "native" else analyze_pyshark
            try:
                options = AttributionOptions(config=config, proxy=list(proxies) or None,
                                             log_entries=log_entries)
                more = {"jobs": jobs, "flow_timeouts": {
                    "idle_timeout_s": flow_idle_timeout,
                    "closed_timeout_s": flow_closed_timeout}} if engine == "native" else {}
                analysis, summary = run(analyze_one(path, packet_filter=packet_filter,
                                                    filter_expr=filter_expr, progress=meter,
                                                    attribution=options, **more))
            finally:
                meter.finish()
            _check_linktypes(summary)
            if summary.get("problem"):
                partial = True
                click.echo(f"tracer: warning: {summary['path']}: {summary['problem']}; "
                           "the report covers the records before it", err=True)
            captures.append(summary)
            rst_tables.append((summary["path"], analysis.flows.rsts, summary.get("rst_details")))
            flow_tables.append((summary["path"], analysis.patterns))
        document = make_document(captures)
        if rsts_csv:
            _write_with(rsts_csv, lambda target: write_rsts_csv(target, rst_tables))
        _write_reports(document, flows_csv=flows_csv, flow_tables=flow_tables,
                       buckets_csv=buckets_csv, html_path=html_path)
        if output_format == "json":
            text = render_json(document)
        else:
            to_terminal = output == "-" and sys.stdout.isatty()
            text = render_text(document, colour=to_terminal)
        _write(output, text)
    except TracerError as exc:
        _fail(str(exc), exc.exit_code)
    except KeyboardInterrupt:
        click.echo("tracer: interrupted", err=True)
        sys.exit(130)
    if partial:
        sys.exit(EXIT_PARTIAL)


def _write_reports(document: dict, *, flows_csv: str | None = None, flow_tables: list | None = None,
                   buckets_csv: str | None = None, html_path: str | None = None) -> None:
    """The per-flow and per-bucket CSVs and the HTML report (tracer.report, tracer.report_html)."""
    from tracer.report import write_buckets_csv, write_flows_csv

    if flows_csv:
        _write_with(flows_csv, lambda target: write_flows_csv(target, flow_tables or []))
    if buckets_csv:
        _write_with(buckets_csv, lambda target: write_buckets_csv(target, document))
    if html_path:
        from tracer.report_html import render_html

        _write(html_path, render_html(document))


@main.command()
@click.argument("result", type=click.Path(allow_dash=True, dir_okay=False, readable=False))
@click.option("--format", "output_format", type=click.Choice(["text", "json"]), default="text",
              show_default=True, help="Report format on stdout (or -o).")
@click.option("-o", "--output", type=click.Path(dir_okay=False, writable=True, allow_dash=True),
              default="-", help="Write the report here instead of stdout.")
@click.option("--html", "html_path", type=click.Path(dir_okay=False), default=None,
              help="Write the self-contained HTML report to this file.")
@click.option("--buckets-csv", type=click.Path(dir_okay=False, allow_dash=True), default=None,
              help="Write one CSV row per time bucket to this file.")
def report(result, output_format, output, html_path, buckets_csv) -> None:
    """Render a saved `tracer analyze --format json` result again (text, JSON, HTML, bucket
    CSV) without the capture."""
    import json

    from tracer.report import render_json, render_text

    try:
        try:
            if result == "-":
                document = json.load(sys.stdin)
            else:
                with open(result, encoding="utf-8") as fh:
                    document = json.load(fh)
        except FileNotFoundError:
            raise TracerError(f"{result}: no such file") from None
        except OSError as exc:
            raise TracerError(f"{result}: cannot read ({exc.strerror or exc})") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise TracerError(f"{result}: not a tracer JSON result ({exc})") from None
        if (not isinstance(document, dict) or not isinstance(document.get("captures"), list)
                or "schema_version" not in document):
            raise TracerError(f"{result}: not a tracer JSON result (no schema_version/captures)")
        from tracer.analysis import SCHEMA_VERSION

        if document["schema_version"] != SCHEMA_VERSION:
            raise TracerError(f"{result}: schema version {document['schema_version']} is not "
                              f"{SCHEMA_VERSION}, which this tracer renders")
        try:
            _write_reports(document, buckets_csv=buckets_csv, html_path=html_path)
            if output_format == "json":
                text = render_json(document)
            else:
                text = render_text(document, colour=output == "-" and sys.stdout.isatty())
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise TracerError(f"{result}: incomplete tracer JSON result ({type(exc).__name__}: {exc})") from None
        if html_path and output == "-" and output_format == "text" and not sys.stdout.isatty():
            return  # the HTML was asked for: no text on a pipe unless -o says where
        _write(output, text)
    except TracerError as exc:
        _fail(str(exc), exc.exit_code)


def _check_topology_options(haproxy_config, proxies) -> None:
    """--haproxy-config and --proxy name the topology two ways: one of them, well formed."""
    from tracer.attribution.config import parse_endpoint

    if haproxy_config and proxies:
        _fail("give --haproxy-config or --proxy, not both (the config names the frontends)")
    for spec in proxies:
        endpoint = parse_endpoint(spec)
        if endpoint is None or endpoint.address is None:
            _fail(f"--proxy {spec!r}: expected ADDR or ADDR:PORT, e.g. 10.0.0.5 or 10.0.0.5:443")


def _check_linktypes(summary: dict) -> None:
    """A capture none of whose frames the native decoder could read is an error, not a report."""
    unsupported = summary["anomalies"].get("unsupported_link_type", 0)
    if unsupported and unsupported == summary["packets"]:
        names = ", ".join(summary["link_types"])
        raise UnsupportedLinkTypeError(
            f"{summary['path']}: link type {names} is not supported by the native decoder; "
            "try --engine pyshark"
        )


def _write_with(path: str, writer) -> None:
    try:
        writer("/dev/stdout" if path == "-" else path)
    except OSError as exc:
        raise TracerError(f"{path}: cannot write ({exc.strerror or exc})") from None


def _write(output: str, text: str) -> None:
    if output == "-":
        try:
            from tracer.output import write_stdout

            write_stdout(text)
        except BrokenPipeError:  # e.g. piped into `head`
            sys.stderr.close()
            sys.exit(0)
        return
    try:
        with open(output, "w", encoding="utf-8") as fh:
            fh.write(text)
    except OSError as exc:
        raise TracerError(f"{output}: cannot write the report ({exc.strerror or exc})") from None


# ---------------------------------------------------------------- live capture (issue 7)

def _ring(spec: str | None) -> tuple[int, int]:
    if not spec:
        return 0, 0
    files, _, size = spec.partition(":")
    if not (files.isdigit() and size.isdigit() and int(files) >= 2 and int(size) >= 1):
        _fail(f"--ring {spec!r}: expected FILES:SIZE_MB with FILES >= 2 and SIZE_MB >= 1, "
              "e.g. 10:100")
    return int(files), int(size)


@main.command()
@click.option("-i", "--interface", "interfaces", multiple=True, metavar="IFACE",
              help="Interface to capture on (may repeat; `tracer interfaces` lists them).")
@click.option("-f", "--filter", "bpf", default=None,
              help="Capture filter (BPF, compiled by dumpcap), e.g. 'tcp port 80 or tcp port 8080'.")
@click.option("--haproxy-config", type=click.Path(dir_okay=False, readable=False), default=None,
              help="HAProxy's configuration: frontends, servers and timeouts for attribution.")
@click.option("--proxy", "proxies", multiple=True, metavar="ADDR[:PORT]",
              help="HAProxy's frontend address (may repeat), when the config is not at hand.")
@click.option("--duration", type=click.FloatRange(min=0.1), default=None,
              help="Stop after this many seconds (default: until Ctrl-C or SIGTERM).")
@click.option("--interval", type=click.FloatRange(min=0.2), default=2.0, show_default=True,
              help="Seconds between two windows of the view.")
@click.option("--format", "output_format", type=click.Choice(["text", "jsonl"]), default="text",
              show_default=True, help="The view: text, or one JSON object per interval.")
@click.option("-o", "--output", type=click.Path(dir_okay=False, allow_dash=True), default="-",
              help="Write the view here instead of stdout.")
@click.option("--report", "report_path", type=click.Path(dir_okay=False, allow_dash=True),
              default=None, help="Write the final report here (default: after the view, on "
                                 "stdout for text; the last JSON line for jsonl).")
@click.option("--report-format", type=click.Choice(["text", "json"]), default=None,
              help="Final report format (default: json for a --report ending in .json, else text).")
@click.option("--write", "write_path", type=click.Path(dir_okay=False), default=None,
              help="Save what was analysed as pcapng, for `tracer analyze` afterwards.")
@click.option("--ring", "ring", default=None, metavar="FILES:SIZE_MB",
              help="With --write: a ring of FILES files of about SIZE_MB each (oldest removed).")
@click.option("--metrics-port", type=click.IntRange(0, 65535), default=None,
              help="Serve Prometheus metrics on this port.")
@click.option("--metrics-address", default="127.0.0.1", show_default=True,
              help="Address the metrics endpoint listens on.")
@click.option("--snaplen", type=click.IntRange(0, 262144), default=256, show_default=True,
              help="Bytes kept per packet (headers are enough for tracer; 0: whole packets).")
@click.option("--buffer-mb", type=click.IntRange(1, 4096), default=32, show_default=True,
              help="Kernel capture buffer per interface (dumpcap -B).")
@click.option("--max-flows", type=click.IntRange(min=1000), default=200_000, show_default=True,
              help="Finished flows kept for attribution before the state starts afresh "
                   "(bounds memory on endless runs).")
def live(interfaces, bpf, haproxy_config, proxies, duration, interval, output_format, output,
         report_path, report_format, write_path, ring, metrics_port, metrics_address, snaplen,
         buffer_mb, max_flows) -> None:
    """Capture on interfaces with dumpcap and trace RSTs live, window by window."""
    import json

    from tracer.analysis import AttributionOptions
    from tracer.attribution.config import load_config
    from tracer.live.run import LiveSettings, run_live
    from tracer.pipeline import run
    from tracer.report import make_document, render_json, render_text

    if not interfaces:
        _fail("no interface given: tracer live -i IFACE (tracer interfaces lists them)")
    _check_topology_options(haproxy_config, proxies)
    ring_files, ring_mb = _ring(ring)
    if ring and not write_path:
        _fail("--ring needs --write FILE (the ring's file name)")
    if report_format is None:
        report_format = "json" if (report_path or "").endswith(".json") else "text"
    try:
        config = load_config(haproxy_config) if haproxy_config else None
        settings = LiveSettings(
            interfaces=list(interfaces), bpf=bpf, duration_s=duration, interval_s=interval,
            write=write_path, ring_files=ring_files, ring_size_mb=ring_mb,
            output_format=output_format, output=output, metrics_port=metrics_port,
            metrics_address=metrics_address, snaplen=snaplen, buffer_mb=buffer_mb,
            attribution=AttributionOptions(config=config, proxy=list(proxies) or None),
            max_flows=max_flows)
        result = run(run_live(settings))
        document = make_document([result.summary])
        if report_path is None and output_format == "jsonl":
            text = json.dumps({"type": "final", "report": document}, separators=(",", ":")) + "\n"
            _append(output, text)
        else:
            if report_format == "json":
                text = render_json(document)
            else:
                text = render_text(document, colour=(report_path in (None, "-")
                                                     and sys.stdout.isatty()))
            if report_path in (None, "-"):
                _write("-", text)
            else:
                _write(report_path, text)
        lost = {k: v for k, v in result.dropped.items() if v}
        if lost:
            click.echo("tracer: warning: frames not analysed: "
                       + ", ".join(f"{n:,} dropped by {who}" for who, n in lost.items()), err=True)
    except TracerError as exc:
        _fail(str(exc), exc.exit_code)
    except KeyboardInterrupt:
        click.echo("tracer: interrupted", err=True)
        sys.exit(130)


def _append(output: str, text: str) -> None:
    if output == "-":
        _write("-", text)
        return
    try:
        with open(output, "a", encoding="utf-8") as fh:
            fh.write(text)
    except OSError as exc:
        raise TracerError(f"{output}: cannot write ({exc.strerror or exc})") from None


@main.command()
def interfaces() -> None:
    """List the interfaces `tracer live -i` can capture on (dumpcap -D)."""
    from tracer.live.capture import list_interfaces

    try:
        for name, description in list_interfaces():
            click.echo(f"{name}\t{description}" if description else name)
    except TracerError as exc:
        _fail(str(exc), exc.exit_code)



if __name__ == "__main__":
    main()

"""`--format json` rendering: the same data as json.dumps, long lists of rows one per line."""

from __future__ import annotations

import json

from conftest import CAPTURES
from pcaputil import run_tracer

from tracer.report import ROWS_PER_LINE_FROM, render_json


def test_render_json_round_trips_edge_values():
    docs = [{}, [], {"a": []}, {"a": {}}, [1, [2, {}]], {"t": (1, 2), "u": "é\n\"", "n": None},
            {7: 2, True: 3, None: 4, 2.5: 1}, {"rows": [{"k": i} for i in range(20)]},
            {"mixed": [{"k": 1}] * ROWS_PER_LINE_FROM + [3]}]
    for doc in docs:
        assert json.loads(render_json(doc)) == json.loads(json.dumps(doc)), doc


def test_rst_details_are_one_per_line():
    result = run_tracer("analyze", str(CAPTURES / "demo-haproxy.pcapng"), "--format", "json")
    assert result.returncode == 0, result.stderr.decode()
    text = result.stdout.decode()
    document = json.loads(text)
    details = document["captures"][0]["rst_details"]
    assert len(details) >= ROWS_PER_LINE_FROM
    lines = text.splitlines()
    for row in details[:20]:
        line = json.dumps(row, separators=(", ", ": "))
        assert any(candidate.strip().rstrip(",") == line for candidate in lines), line

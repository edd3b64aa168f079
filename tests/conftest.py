"""Shared test fixtures: paths of the bundled captures and the shared real-world corpus.

tshark is the oracle; it is installed by scripts/setup.sh, so a missing tshark fails the tests
loudly instead of skipping them.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CAPTURES = ROOT / "captures"
CORPUS = ROOT.parent / "shared" / "corpus"
CAPTURE_SUFFIXES = (".pcap", ".pcapng", ".gz")


def bundled_captures() -> list[Path]:
    """Every well-formed capture in captures/ and the HAProxy lab's in captures/lab/out/
    (malformed ones live in captures/malformed/)."""
    found = list(CAPTURES.glob("*")) + list((CAPTURES / "lab" / "out").glob("*"))
    return sorted(p for p in found if p.is_file() and p.name.endswith(CAPTURE_SUFFIXES))


def corpus_captures() -> list[Path]:
    return sorted(p for p in CORPUS.rglob("*") if p.is_file() and p.suffix in (".pcap", ".pcapng"))


@pytest.fixture(scope="session", autouse=True)
def _tools_present() -> None:
    for tool in ("tshark", "dumpcap", "editcap", "capinfos"):
        assert shutil.which(tool), f"{tool} missing: run scripts/setup.sh"

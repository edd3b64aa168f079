#!/usr/bin/env bash
# Set everything up, then run the whole test suite (lint included). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh
.venv/bin/ruff check tracer tests benchmarks captures
exec .venv/bin/python -m pytest "$@"

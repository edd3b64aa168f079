#!/usr/bin/env bash
# Set everything up, then run tracer's main job on the bundled demo capture.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh
exec .venv/bin/tracer analyze "${@:-captures/demo-basic.pcapng}"

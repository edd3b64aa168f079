#!/usr/bin/env bash
# Set everything up, then run tracer's main job on the bundled demo capture.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh
# The demo: a 40 s capture of both legs of a real HAProxy (397 client connections: aborts,
# server resets, refusals, timeouts, rejects, health checks, keep-alive, 1 % loss, a middlebox
# forging RSTs), analysed with the HAProxy config it ran with. Arguments replace it.
if [ "$#" -eq 0 ]; then
    set -- captures/demo-haproxy.pcapng --haproxy-config captures/lab/haproxy-mixed.cfg
fi
exec .venv/bin/tracer analyze "$@"

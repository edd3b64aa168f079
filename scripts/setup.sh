#!/usr/bin/env bash
# Set up tracer on a Debian machine, as root, idempotently: the system tools it drives
# (tshark/dumpcap/editcap/capinfos, haproxy, iproute2, nftables, tcpdump; chromium, headless,
# for the HTML report test) with apt-get, then the
# Python package and its test extras in a virtualenv at .venv. Safe to run again: it installs only
# what is missing.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

APT_PACKAGES=(tshark wireshark-common haproxy iproute2 nftables tcpdump chromium)
NEEDED_COMMANDS=(tshark dumpcap editcap capinfos haproxy ip nft tcpdump chromium)

missing=()
for cmd in "${NEEDED_COMMANDS[@]}"; do
    command -v "$cmd" >/dev/null 2>&1 || missing+=("$cmd")
done
if ((${#missing[@]})); then
    echo "setup: installing system packages (missing: ${missing[*]})" >&2
    if [ "$(id -u)" != 0 ]; then
        echo "setup: error: run as root to install ${APT_PACKAGES[*]} with apt-get" >&2
        exit 2
    fi
    export DEBIAN_FRONTEND=noninteractive
    # wireshark-common asks whether non-root users may capture; answer for it.
    echo "wireshark-common wireshark-common/install-setuid boolean false" | debconf-set-selections
    apt-get update -q
    apt-get install -y -q --no-install-recommends "${APT_PACKAGES[@]}"
fi

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
# Reinstall only when the project metadata changed since the last install.
stamp=.venv/.tracer-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || ! .venv/bin/python -c "import tracer, pytest, hypothesis, pyshark" 2>/dev/null; then
    .venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test]'
    touch "$stamp"
fi
echo "setup: ready (.venv/bin/tracer $(.venv/bin/tracer --version | awk '{print $NF}'), $(tshark --version | head -1))" >&2

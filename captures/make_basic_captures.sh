#!/usr/bin/env bash
# Makes the real captures in captures/ from real sockets (basic_traffic.py) and dumpcap.
#
# Rules:
# - Needs root (dumpcap on lo/any, ip netns, nft). Traffic goes only to loopback or to
#   addresses inside the namespaces this script creates; nothing leaves the machine.
# - Idempotent: leftovers of an earlier run (same namespace names) are removed first, every
#   output is written to a temporary file and moved into place only when complete.
# - Everything is bounded: dumpcap runs with -a duration:N and is stopped by PID, servers and
#   relays stop themselves after a duration, every wait loop has a fixed number of tries.
# - On exit (also on error or ^C) the trap stops every process this script started, by PID,
#   and deletes its namespaces (which takes their veths and nft tables with them).
#
# Theory of operation: for each capture, start the server (and the VLAN relay where needed),
# start dumpcap and wait for its "File:" line, run the scripted client, give the last packets
# a moment, stop dumpcap with SIGTERM, then stop the server.
#
# Usage: sudo bash captures/make_basic_captures.sh [only-these-names...]
#   names: lo lo-pcap any-sll any-sll2 demo netns-loss netns-vlan netns-qinq (default: all)
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
PY=$(python3 -c 'import sys; print(sys.executable)')
TRAFFIC=("$PY" "$HERE/basic_traffic.py")
RELAY=("$PY" "$HERE/vlan_trunk_relay.py")

# Ports below the ephemeral range (32768-60999), so no client socket on the machine takes them.
PORT=23080
CLOSED_PORT=23081
PORT_FILTER="tcp port $PORT or tcp port $CLOSED_PORT"

NS_CLIENT=trcap-client
NS_SERVER=trcap-server
NS_SWITCH=trcap-switch
ALL_NAMESPACES=("$NS_CLIENT" "$NS_SERVER" "$NS_SWITCH")

if [[ $EUID -ne 0 ]]; then
    echo "make_basic_captures.sh: needs root (dumpcap on lo/any, ip netns, nft)" >&2
    exit 1
fi
for tool in dumpcap ip nft capinfos; do
    command -v "$tool" >/dev/null || { echo "make_basic_captures.sh: $tool not found" >&2; exit 1; }
done

WORK=$(mktemp -d /tmp/tracer-captures.XXXXXX)
STARTED_PIDS=()

delete_namespaces() {
    local ns
    for ns in "${ALL_NAMESPACES[@]}"; do
        if [[ -e /run/netns/$ns ]]; then
            ip netns del "$ns"
        fi
    done
}

forget_pid() {  # a process we have waited for is not ours to signal any more
    local pid=$1 kept=() other
    for other in "${STARTED_PIDS[@]}"; do
        [[ $other == "$pid" ]] || kept+=("$other")
    done
    STARTED_PIDS=("${kept[@]}")
}

stop_pid() {  # stop one process we started: SIGTERM, then SIGKILL after 5 s
    local pid=$1 i
    forget_pid "$pid"
    kill -TERM "$pid" 2>/dev/null || return 0
    for ((i = 0; i < 50; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

cleanup() {
    local pid
    for pid in "${STARTED_PIDS[@]}"; do
        stop_pid "$pid"
    done
    STARTED_PIDS=()
    delete_namespaces
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

in_ns() {  # in_ns NAMESPACE|"" COMMAND... : run in a namespace, or here when NAMESPACE is ""
    local ns=$1
    shift
    if [[ -n $ns ]]; then
        ip netns exec "$ns" "$@"
    else
        "$@"
    fi
}

wait_for_line() {  # wait_for_line FILE PATTERN SECONDS WHAT
    local file=$1 pattern=$2 seconds=$3 what=$4 i
    for ((i = 0; i < seconds * 10; i++)); do
        if grep -q "$pattern" "$file" 2>/dev/null; then
            return 0
        fi
        sleep 0.1
    done
    echo "make_basic_captures.sh: $what did not get ready; its output:" >&2
    cat "$file" >&2 || true
    exit 1
}

LAST_PID=""
spawn() {  # spawn NAMESPACE|"" LOG COMMAND... : start in the background; LAST_PID is its PID
    # A simple command put in the background is exec'd by the forked child, so $! is the
    # command itself (signals reach it, not a wrapper shell).
    local ns=$1 log=$2
    shift 2
    if [[ -n $ns ]]; then
        ip netns exec "$ns" "$@" >"$log" 2>&1 &
    else
        "$@" >"$log" 2>&1 &
    fi
    LAST_PID=$!
    STARTED_PIDS+=("$LAST_PID")
}

start_server() {  # start_server NAMESPACE LISTEN...
    local ns=$1 log
    shift
    log="$WORK/server.$RANDOM.log"
    local args=()
    for endpoint in "$@"; do args+=(--listen "$endpoint"); done
    spawn "$ns" "$log" "${TRAFFIC[@]}" serve "${args[@]}" --duration 300
    wait_for_line "$log" READY 10 "server"
}

start_relay() {  # start_relay NAMESPACE SIDE_A SIDE_B TAGS
    local log="$WORK/relay.$RANDOM.log"
    spawn "$1" "$log" "${RELAY[@]}" --side-a "$2" --side-b "$3" --tags "$4" --duration 300
    RELAY_LOG=$log
    wait_for_line "$log" READY 10 "vlan relay"
}

DUMPCAP_PID=""
DUMPCAP_TMP=""
start_dumpcap() {  # start_dumpcap NAMESPACE OUTPUT DUMPCAP-ARGS...
    local ns=$1 output=$2
    shift 2
    DUMPCAP_TMP="$WORK/$(basename "$output")"
    local log="$DUMPCAP_TMP.log"
    spawn "$ns" "$log" dumpcap -a duration:240 "$@" -w "$DUMPCAP_TMP"
    DUMPCAP_PID=$LAST_PID
    wait_for_line "$log" "File:" 10 "dumpcap for $output"
    sleep 0.5  # the "File:" line comes right after the socket is set up; be generous
}

finish_dumpcap() {  # finish_dumpcap OUTPUT : stop dumpcap and move its file into place
    local output=$1
    sleep 1  # let the last FIN/ACKs and any retransmissions land
    # SIGTERM, not SIGINT: background jobs of a non-interactive shell start with SIGINT ignored.
    kill -TERM "$DUMPCAP_PID"
    wait "$DUMPCAP_PID" || true
    forget_pid "$DUMPCAP_PID"
    capinfos -c "$DUMPCAP_TMP" >/dev/null  # a complete, readable file, or fail here
    chmod 644 "$DUMPCAP_TMP"
    mv "$DUMPCAP_TMP" "$HERE/$output"
    echo "  $output: $(capinfos -c -M "$HERE/$output" | awk '/Number of packets/ {print $NF}') packets," \
        "$(stat -c %s "$HERE/$output") bytes"
}

client() {  # client NAMESPACE ARGS...
    local ns=$1
    shift
    in_ns "$ns" timeout 200 "${TRAFFIC[@]}" client --closed-port "$CLOSED_PORT" "$@"
}

LO_TARGETS=(--target "127.0.0.1:$PORT" --target "[::1]:$PORT")
LO_SOURCES=(--source 127.0.0.2 --source 127.0.0.3 --source 127.0.0.4 --source 127.0.0.1 --source ::1)

capture_lo() {
    echo "lo-ipv4-ipv6.pcapng: every scenario, IPv4 and IPv6, on lo (snaplen 256)"
    start_server "" "127.0.0.1:$PORT" "[::1]:$PORT"
    local server=$LAST_PID
    start_dumpcap "" lo-ipv4-ipv6.pcapng -i lo -s 256 -f "$PORT_FILTER"
    client "" "${LO_TARGETS[@]}" "${LO_SOURCES[@]}" --rounds 3 --seed 11
    finish_dumpcap lo-ipv4-ipv6.pcapng
    stop_pid "$server"
}

capture_lo_pcap() {
    echo "lo-ipv4.pcap: IPv4 subset on lo, classic pcap, full frames"
    start_server "" "127.0.0.1:$PORT"
    local server=$LAST_PID
    start_dumpcap "" lo-ipv4.pcap -P -i lo -f "$PORT_FILTER"
    client "" --target "127.0.0.1:$PORT" "${LO_SOURCES[@]}" --rounds 3 --seed 12 \
        --scenarios close,keep,half,slow,srst,unread,idle,refused,smallmss,bulk --bulk-bytes 40000
    finish_dumpcap lo-ipv4.pcap
    stop_pid "$server"
}

capture_any() {  # capture_any OUTPUT LINKTYPE DUMPCAP-FORMAT-ARGS...
    local output=$1 linktype=$2
    shift 2
    echo "$output: the any device, $linktype, loopback ports only"
    start_server "" "127.0.0.1:$PORT" "[::1]:$PORT"
    local server=$LAST_PID
    start_dumpcap "" "$output" "$@" -i any -y "$linktype" \
        -f "($PORT_FILTER) and (net 127.0.0.0/8 or host ::1)"
    client "" "${LO_TARGETS[@]}" "${LO_SOURCES[@]}" --rounds 2 --seed 13 \
        --scenarios close,keep,half,slow,cabort,srst,unread,idle,refused,smallmss,upload \
        --parallel 2 --scale 0.3
    finish_dumpcap "$output"
    stop_pid "$server"
}

capture_demo() {
    echo "demo-basic.pcapng: a few hundred mixed connections on lo (snaplen 200)"
    start_server "" "127.0.0.1:$PORT" "[::1]:$PORT"
    local server=$LAST_PID
    start_dumpcap "" demo-basic.pcapng -i lo -s 200 -f "$PORT_FILTER"
    client "" "${LO_TARGETS[@]}" "${LO_SOURCES[@]}" --rounds 12 --parallel 6 --seed 14 \
        --bulk-bytes 200000 --max-seconds 150
    finish_dumpcap demo-basic.pcapng
    stop_pid "$server"
}

# ---------------------------------------------------------------- namespaces
#
# Three namespaces: a client and a server host, each with one veth, and between them a
# "switch" namespace holding the veths' peers (acc_c, acc_s) and no addresses of its own:
#
#   client: cli0 <-> acc_c [switch: a bridge, or the VLAN relay] acc_s <-> srv0 :server
#
# Loss is made in the switch, not on the server: a packet dropped in a host's own output path
# is reported back to its TCP as a failed transmit and quietly sent again, so it never shows up
# on the wire as loss. Dropped in the bridge, it is lost the way a switch loses it.

make_topology() {
    delete_namespaces
    local ns ifname
    for ns in "${ALL_NAMESPACES[@]}"; do
        ip netns add "$ns"
        ip -n "$ns" link set lo up
    done
    ip link add cli0 netns "$NS_CLIENT" type veth peer name acc_c netns "$NS_SWITCH"
    ip link add srv0 netns "$NS_SERVER" type veth peer name acc_s netns "$NS_SWITCH"
    for ifname in acc_c acc_s; do
        switch_port "$ifname"
    done
    # gso_max_segs 1: TCP hands MTU-sized segments to the veth, as a NIC would put on a wire
    # (a veth otherwise passes 64 KB TSO super-frames straight through).
    ip -n "$NS_CLIENT" link set cli0 gso_max_segs 1 up
    ip -n "$NS_SERVER" link set srv0 gso_max_segs 1 up
}

switch_port() {  # switch_port IFACE : up, room for two VLAN tags, no IPv6 chatter of its own
    ip netns exec "$NS_SWITCH" sysctl -qw "net.ipv6.conf.$1.disable_ipv6=1"
    ip -n "$NS_SWITCH" link set "$1" mtu 1600 up
}

address_hosts() {  # address_hosts IPV4-PREFIX IPV6-PREFIX : .1/::1 client, .2/::2 server
    ip -n "$NS_CLIENT" addr add "$1.1/24" dev cli0
    ip -n "$NS_CLIENT" addr add "$2::1/64" dev cli0 nodad
    ip -n "$NS_SERVER" addr add "$1.2/24" dev srv0
    ip -n "$NS_SERVER" addr add "$2::2/64" dev srv0 nodad
}

capture_netns_loss() {
    echo "netns-eth-loss.pcapng: Ethernet on the client's veth, the switch drops some packets"
    make_topology
    ip -n "$NS_SWITCH" link add br0 type bridge
    switch_port br0
    ip -n "$NS_SWITCH" link set acc_c master br0
    ip -n "$NS_SWITCH" link set acc_s master br0
    address_hosts 10.231.0 fd00:231
    ip netns exec "$NS_SWITCH" nft -f - <<EOF
table bridge trcap_loss {
    chain forward {
        type filter hook forward priority filter; policy accept;
        # server -> client only; data segments are lost more often than bare control packets,
        # so there are retransmissions and SACK blocks, and now and then a lost SYN/ACK,
        # FIN or RST
        iifname "acc_s" tcp sport $PORT meta length > 120 numgen random mod 100 < 5 counter drop
        iifname "acc_s" tcp sport $PORT numgen random mod 100 < 2 counter drop
    }
}
EOF
    start_server "$NS_SERVER" "10.231.0.2:$PORT" "[fd00:231::2]:$PORT"
    local server=$LAST_PID
    start_dumpcap "$NS_CLIENT" netns-eth-loss.pcapng -i cli0 -s 128
    client "$NS_CLIENT" --target "10.231.0.2:$PORT" --target "[fd00:231::2]:$PORT" \
        --rounds 2 --parallel 3 --seed 15 --bulk-bytes 150000 --max-seconds 150
    finish_dumpcap netns-eth-loss.pcapng
    echo "  nft drops:" $(ip netns exec "$NS_SWITCH" nft list table bridge trcap_loss | grep -o 'packets [0-9]*')
    stop_pid "$server"
    delete_namespaces
}

capture_netns_trunk() {  # capture_netns_trunk OUTPUT TAGS IPV4-PREFIX IPV6-PREFIX DUMPCAP-ARGS...
    local output=$1 tags=$2 net4=$3 net6=$4
    shift 4
    echo "$output: an Ethernet trunk with tags $tags between the hosts (userspace relay)"
    make_topology
    ip -n "$NS_SWITCH" link add trunk_c type veth peer name trunk_s
    switch_port trunk_c
    switch_port trunk_s
    address_hosts "$net4" "$net6"
    start_relay "$NS_SWITCH" acc_c,trunk_c acc_s,trunk_s "$tags"
    local relay=$LAST_PID
    start_server "$NS_SERVER" "$net4.2:$PORT" "[$net6::2]:$PORT"
    local server=$LAST_PID
    start_dumpcap "$NS_SWITCH" "$output" -i trunk_c "$@"
    client "$NS_CLIENT" --target "$net4.2:$PORT" --target "[$net6::2]:$PORT" \
        --rounds 2 --parallel 2 --seed 16 --max-seconds 120 \
        --scenarios close,keep,half,slow,cabort,srst,unread,idle,refused,smallmss,bulk \
        --bulk-bytes 40000 --scale 0.3
    finish_dumpcap "$output"
    stop_pid "$server"
    stop_pid "$relay"
    echo "  $(tail -n 1 "$RELAY_LOG")"
    delete_namespaces
}

# ---------------------------------------------------------------- main

WANTED=("$@")
[[ ${#WANTED[@]} -gt 0 ]] || WANTED=(lo lo-pcap any-sll any-sll2 demo netns-loss netns-vlan netns-qinq)
for name in "${WANTED[@]}"; do
    case $name in
        lo) capture_lo ;;
        lo-pcap) capture_lo_pcap ;;
        any-sll) capture_any any-sll.pcap LINUX_SLL -P ;;
        any-sll2) capture_any any-sll2.pcapng LINUX_SLL2 ;;
        demo) capture_demo ;;
        netns-loss) capture_netns_loss ;;
        netns-vlan) capture_netns_trunk netns-vlan.pcap 8100:42 10.231.42 fd00:231:42 -P ;;
        netns-qinq) capture_netns_trunk netns-qinq.pcapng 88a8:100,8100:7 10.231.100 fd00:231:100 ;;
        *) echo "make_basic_captures.sh: unknown capture '$name'" >&2; exit 2 ;;
    esac
done
echo "done; check with: for f in $HERE/*.pcap*; do capinfos -c -E \$f; done"

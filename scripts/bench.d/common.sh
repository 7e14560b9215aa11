# Shared by the benchmarks: two namespaces joined by a veth pair.
SRV=mm-bench-srv
CLI=mm-bench-cli
AGENT=$PWD/target/release/metalmesh-agent
WORK=$(mktemp -d /tmp/metalmesh-bench.XXXXXX)

cleanup() {
  cleanup_ns_only
  rm -rf "$WORK"
}
trap cleanup EXIT

setup_link() {
  cleanup_ns_only
  ip netns add $SRV
  ip netns add $CLI
  ip link add srv0 netns $SRV type veth peer name cli0 netns $CLI
  ip -n $SRV link set lo up
  ip -n $CLI link set lo up
  ip -n $SRV addr add "$1" dev srv0
  ip -n $SRV link set srv0 up
  ip -n $CLI link set cli0 up
  [[ -n ${2:-} ]] && ip -n $CLI addr add "$2" dev cli0
  true
}

cleanup_ns_only() {
  for ns in $SRV $CLI; do
    if ip netns list | grep -qw "$ns"; then
      for pid in $(ip netns pids "$ns"); do kill -9 "$pid" 2>/dev/null || true; done
      ip netns del "$ns" 2>/dev/null || true
    fi
  done
}

stop_servers() {
  for pid in $(ip netns pids $SRV); do kill "$pid" 2>/dev/null || true; done
  sleep 1
  for pid in $(ip netns pids $SRV); do kill -9 "$pid" 2>/dev/null || true; done
}

ratio() { python3 -c "import sys; a,b=float(sys.argv[1]),float(sys.argv[2]); print(f'{a/b:.2f}x' if b else 'n/a')" "$1" "$2"; }

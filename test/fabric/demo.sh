#!/usr/bin/env bash
# i6pn demo: a simulated two-region fabric with the dataplane on every node.
#   demo.sh up          build it, print the isolation matrix, leave it running
#   demo.sh down        remove it (and any fabric left behind by a killed test)
#   demo.sh shell NAME  a shell in node NAME's namespace (or container NAME's)
set -euo pipefail
cd "$(dirname "$0")/../.."

if [ "$(id -u)" != 0 ]; then
  echo "demo: must run as root (network namespaces, BPF, bpffs)" >&2
  exit 1
fi

driver() { node --import=tsx test/fabric/demo.ts "$@"; }

case "${1:-up}" in
  up)
    mountpoint -q /sys/fs/bpf || mount -t bpf bpf /sys/fs/bpf
    shift || true
    driver up "$@"
    ;;
  down)
    driver down
    ;;
  shell)
    name="${2:-}"
    if [ -z "$name" ]; then
      echo "usage: make demo-shell NODE=<node or container>, e.g. NODE=ams-1 or NODE=a1" >&2
      exit 2
    fi
    ns=$(driver netns "$name")
    echo "demo: shell in $ns (exit to leave)" >&2
    # nsenter, not `ip netns exec`: keep the host's /sys (and bpffs) visible.
    exec nsenter --net="/run/netns/$ns" env PS1="[$name] \\w# " bash --norc -i
    ;;
  *)
    echo "usage: $0 up|down|shell NAME" >&2
    exit 2
    ;;
esac

#!/usr/bin/env bash
# Rounds of ../shared/peer-bench with the router in several variants beside TensorZero, for the
# performance issue's before/after table (medians by bench/peer_rounds.py).
#
#   bash ../shared/peer-bench/setup_peers.sh                 # once (installs into /tmp)
#   OLD_REV=<commit> ROUNDS=3 bash bench/peer_rounds.sh      # about 4 minutes a round
#   .venv/bin/python bench/peer_rounds.py /tmp/peer-bench/rounds
#
# Variants (each its own run of run_peers.sh, one after another in a round): "new" (this tree,
# defaults: upstream streaming), "nsu" (this tree, `stream_upstream: false` added to the harness's
# routing.yaml), "nsu-w1" (the same, one worker), the same three for OLD_REV's tree (a git
# worktree in /tmp, run with this venv), and "peers" (direct and TensorZero).
set -uo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
PEER=${PEER_BENCH:-$ROOT/../shared/peer-bench}
OUT=${OUT_DIR:-/tmp/peer-bench/rounds}
ROUNDS=${ROUNDS:-3}
TMP=$(mktemp -d)
mkdir -p "$OUT"

wrapper() {  # wrapper NAME TREE NSU -> path of a router launcher
  local f="$TMP/$1.sh"
  {
    echo '#!/bin/bash'
    echo 'args=("$@"); for ((i=0; i<${#args[@]}; i++)); do [ "${args[$i]}" = --config ] && cfg="${args[$((i+1))]}"; done'
    [ "$3" = 1 ] && echo 'sed -i "s/^    api_key: sk-bench\$/    api_key: sk-bench\n    stream_upstream: false/" "$cfg"'
    echo "cd '$2' && exec '$ROOT/.venv/bin/python' -m router \"\$@\""
  } > "$f"
  chmod +x "$f"
  echo "$f"
}

trees=("new:$ROOT")
if [ -n "${OLD_REV:-}" ]; then
  git -C "$ROOT" worktree add -f "$TMP/old" "$OLD_REV" > /dev/null
  trees+=("old:$TMP/old")
fi
for r in $(seq 1 "$ROUNDS"); do
  for t in "${trees[@]}"; do
    name=${t%%:*}; tree=${t#*:}
    for v in "$name:0:2:nonstream stream" "$name-nsu:1:2:nonstream" "$name-nsu-w1:1:1:nonstream"; do
      IFS=: read -r label nsu workers modes <<< "$v"
      RESULTS_DIR="$OUT/r$r/$label" MODES="$modes" CONCS="1 64" DURATION=${DURATION:-5} ROUTER_WORKERS=$workers \
        ROUTER_BIN=$(wrapper "$label" "$tree" "$nsu") TARGETS=router bash "$PEER/run_peers.sh" > "$OUT/r$r-$label.log" 2>&1
    done
  done
  RESULTS_DIR="$OUT/r$r/peers" CONCS="1 64" DURATION=${DURATION:-5} TARGETS="direct tensorzero" \
    bash "$PEER/run_peers.sh" > "$OUT/r$r-peers.log" 2>&1
done
[ -n "${OLD_REV:-}" ] && git -C "$ROOT" worktree remove --force "$TMP/old"
echo "rounds in $OUT"

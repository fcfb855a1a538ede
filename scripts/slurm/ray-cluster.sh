#!/usr/bin/env bash
# The Ray part of scripts/slurm/ray-eval.sbatch, runnable (and tested) without SLURM:
#
#   ray-cluster.sh head PORT          start a Ray head on this node, in the foreground (srun keeps it alive)
#   ray-cluster.sh worker HEAD:PORT   join this node to the head, in the foreground
#   ray-cluster.sh wait HEAD:PORT N [TIMEOUT_S]   block until N nodes are alive (exit 1 on timeout)
#
# Environment: RAY (the ray executable; default: the one beside this venv's python, else PATH), RAY_NODE_IP (this
# node's address; default: the first of `hostname -I`), RAY_TMP (Ray's temp dir, short: its socket paths must stay
# under ~107 bytes; default /tmp/ray-$USER-$SLURM_JOB_ID), RAY_NUM_CPUS / RAY_NUM_GPUS (default: what Ray detects;
# SLURM's allocation when set). Ray 2.60 uses token authentication: every node and the driver read the same token
# (RAY_AUTH_TOKEN_PATH; the default ~/.ray/auth_token works on a shared home).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
RAY=${RAY:-$(command -v ray || true)}
if [ -z "$RAY" ] && [ -x "$here/../../.venv/bin/ray" ]; then RAY="$here/../../.venv/bin/ray"; fi
[ -n "$RAY" ] || { echo "ray-cluster.sh: no ray executable (install the rig's cluster extra)" >&2; exit 2; }
ip=${RAY_NODE_IP:-$(hostname -I 2>/dev/null | awk '{print $1}')}
tmp=${RAY_TMP:-/tmp/ray-${USER:-u}-${SLURM_JOB_ID:-local}}
res=()
cpus=${RAY_NUM_CPUS:-${SLURM_CPUS_ON_NODE:-}}
gpus=${RAY_NUM_GPUS:-}
[ -n "$cpus" ] && res+=(--num-cpus "$cpus")
[ -n "$gpus" ] && res+=(--num-gpus "$gpus")
export RAY_USAGE_STATS_ENABLED=0

case "${1:-}" in
  head)
    port=${2:?usage: ray-cluster.sh head PORT}
    exec "$RAY" start --head --block --node-ip-address "$ip" --port "$port" --temp-dir "$tmp" \
      --include-dashboard false --disable-usage-stats \
      --ray-client-server-port "${RAY_CLIENT_PORT:-$((port + 1))}" \
      --dashboard-agent-listen-port "${RAY_AGENT_PORT:-$((port + 2))}" "${res[@]}"
    ;;
  worker)
    addr=${2:?usage: ray-cluster.sh worker HEAD:PORT}
    exec "$RAY" start --block --address "$addr" --node-ip-address "$ip" --temp-dir "$tmp" \
      --disable-usage-stats --dashboard-agent-listen-port "${RAY_AGENT_PORT:-0}" "${res[@]}"
    ;;
  wait)
    addr=${2:?usage: ray-cluster.sh wait HEAD:PORT N [TIMEOUT_S]}
    want=${3:?usage: ray-cluster.sh wait HEAD:PORT N [TIMEOUT_S]}
    limit=${4:-300}
    py=$(dirname "$RAY")/python
    [ -x "$py" ] || py=python3
    RAY_ADDRESS="$addr" "$py" - "$want" "$limit" <<'PY'
import sys, time
import ray
want, limit = int(sys.argv[1]), float(sys.argv[2])
deadline = time.time() + limit
while True:
    try:
        ray.init(log_to_driver=False, configure_logging=False)
        break
    except Exception:
        if time.time() > deadline:
            sys.exit("ray-cluster.sh wait: no head answers")
        time.sleep(2)
while True:
    alive = sum(1 for n in ray.nodes() if n.get("Alive"))
    if alive >= want:
        print(f"ray-cluster.sh: {alive} node(s) alive")
        break
    if time.time() > deadline:
        sys.exit(f"ray-cluster.sh wait: {alive} of {want} node(s) alive after {limit:g} s")
    time.sleep(2)
ray.shutdown()
PY
    ;;
  *)
    echo "usage: ray-cluster.sh head PORT | worker HEAD:PORT | wait HEAD:PORT N [TIMEOUT_S]" >&2
    exit 2
    ;;
esac

#!/usr/bin/env bash
# Manual check, NOT run in CI: a real `ray up` with the `local` provider (the settings of
# cluster.local.yaml) against two SSH "hosts" on this machine, a tiny sweep on it through
# `ray exec`, then teardown. See docs/cluster.md.
#
#   bash scripts/ray_up_local.sh [--setup-sshd] [--keep]
#   bash scripts/ray_up_local.sh --down WORKDIR      # tear down a cluster left up by --keep
#
# Prerequisites: run as root, with the repository's .venv (ray 2.60, torch) and rsync; root can
# log in by key over SSH to 127.0.0.1:22 and 127.0.0.2:22 (the cluster launcher's `auth` has no
# port option). Key: $SSH_KEY (default ~/.ssh/id_ed25519).
#   --setup-sshd  THROWAWAY MACHINES ONLY: apt-get install openssh-server rsync if missing,
#                 start sshd if nothing listens on port 22, and authorise a fresh key for root
#                 (removed again at teardown).
#   --keep        leave the cluster up; the script prints the --down command.
# Exit status 0: head and worker came up, the sweep ran on the worker "host" (127.0.0.2) and
# wrote its report. About 1-2 minutes on 2 cores.
#
# What it changes relative to cluster.local.yaml (generated into WORKDIR/cluster.yaml):
# - head 127.0.0.1, worker 127.0.0.2, ssh_user root; no setup_commands (reuses this .venv
#   instead of pip-installing into /opt/hytver/venv) and no repository file mount;
# - NO `ray stop` in the start commands, and no `ray down`: `ray stop` kills every Ray process
#   on the machine, and here both "hosts" are one shared machine (other users' Ray, the
#   head started a moment earlier). Teardown instead kills the SSH sessions that hold this
#   cluster's processes (found by WORKDIR in their command lines);
# - RAY_TMPDIR=WORKDIR/t on every node, so this cluster records its address there and never
#   in /tmp/ray (other users' `ray.init()` must not join it);
# - a free GCS port instead of 6379 (another Ray on this machine may hold it);
# - --node-ip-address=127.0.0.2 on the worker (same host: otherwise both raylets register one
#   IP and the worker stays `uninitialized`).
# Kept from the template: RAY_UP_enable_autoscaler_v2=0 (v2 has no local provider), token auth
# on every node via RAY_AUTH_TOKEN_PATH (file-mounted), the quoted --resources JSON, the
# absolute venv `ray`. `ray up` writes ~/ray_bootstrap_config.yaml and ~/ray_bootstrap_key.pem
# on the head (= here); they are backed up and restored at teardown.
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
VENV=$REPO/.venv
PY=$VENV/bin/python
SSH_OPTS=(-o BatchMode=yes -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null
          -o ConnectTimeout=5 -o LogLevel=ERROR)
SETUP_SSHD=0 KEEP=0 DOWN=""
while [ $# -gt 0 ]; do
  case $1 in
    --setup-sshd) SETUP_SSHD=1 ;;
    --keep) KEEP=1 ;;
    --down) DOWN=${2:?--down needs the WORKDIR the script printed}; shift ;;
    -h|--help) sed -n '2,35p' "$0"; exit 0 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
  shift
done

log() { printf '[ray_up_local %s] %s\n' "$(date +%T)" "$*" >&2; }

teardown() {  # $1 = WORKDIR
  local work=$1 p sid sids="" own
  log "teardown of $work"
  # Each node's raylet and gcs_server run under $work/t/ray, in the SSH session that `ray
  # start` ran in; that session holds all of the node's Ray processes (the workers rename
  # themselves, so only the session finds them all). Kill those sessions and nothing else.
  own=$(ps -o sid= -p $$ | tr -d ' ')
  for p in $(grep -l -s -F "$work/t/ray" /proc/[0-9]*/cmdline 2>/dev/null | cut -d/ -f3); do
    case $(cat "/proc/$p/comm" 2>/dev/null) in
      raylet|gcs_server) sids="$sids $(ps -o sid= -p "$p" | tr -d ' ')" ;;
    esac
  done
  for sid in $(printf '%s\n' $sids | sort -un); do
    [ "$sid" -gt 1 ] && [ "$sid" != "$own" ] || continue
    for p in $(ps -e -o pid=,sid= | awk -v s="$sid" '$2 == s {print $1}'); do
      kill -9 "$p" 2>/dev/null || true
    done
  done
  [ -f "$work/sshd.pid" ] && kill "$(cat "$work/sshd.pid")" 2>/dev/null || true
  for f in ray_bootstrap_config.yaml ray_bootstrap_key.pem; do
    rm -f ~/"$f"
    [ -e "$work/home-backup/$f" ] && cp -p "$work/home-backup/$f" ~/"$f"
  done
  if [ -f "$work/authorized_key" ] && [ -f ~/.ssh/authorized_keys ]; then
    grep -v -F -f "$work/authorized_key" ~/.ssh/authorized_keys > "$work/ak.tmp" || true
    cat "$work/ak.tmp" > ~/.ssh/authorized_keys
    [ -e "$work/created_ak" ] && rm -f ~/.ssh/authorized_keys
    [ -e "$work/created_ssh_dir" ] && rmdir ~/.ssh 2>/dev/null || true
  fi
  rm -rf "$work"
}

if [ -n "$DOWN" ]; then
  [ -f "$DOWN/cluster.yaml" ] || { echo "$DOWN is not a ray_up_local work directory" >&2; exit 2; }
  teardown "$DOWN"
  exit 0
fi

[ "$(id -u)" = 0 ] || { echo "run as root (the loopback cluster logs in as root)" >&2; exit 2; }
[ -x "$PY" ] || { echo "no $PY: run scripts/setup.sh first" >&2; exit 2; }

WORK=$(mktemp -d /tmp/rayup.XXXXXX)  # short: Ray's socket paths must stay < 107 characters
mkdir -p "$WORK/home-backup"
for f in ray_bootstrap_config.yaml ray_bootstrap_key.pem; do
  [ -e ~/"$f" ] && cp -p ~/"$f" "$WORK/home-backup/$f"
done
if [ "$KEEP" = 1 ]; then
  trap 'log "cluster left up: bash $0 --down $WORK"' EXIT
else
  trap 'teardown "$WORK"' EXIT
fi

KEY=${SSH_KEY:-$HOME/.ssh/id_ed25519}
if [ "$SETUP_SSHD" = 1 ]; then
  if ! command -v sshd >/dev/null || ! command -v rsync >/dev/null; then
    log "installing openssh-server and rsync"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openssh-server rsync
  fi
  if ! (exec 3<>/dev/tcp/127.0.0.1/22) 2>/dev/null; then
    log "starting sshd on port 22 (stopped again at teardown)"
    mkdir -p /run/sshd && /usr/sbin/sshd -o PidFile="$WORK/sshd.pid"
  fi
  KEY=$WORK/id_ed25519
  ssh-keygen -q -t ed25519 -N '' -C ray_up_local -f "$KEY"
  [ -d ~/.ssh ] || { mkdir -m 700 ~/.ssh && touch "$WORK/created_ssh_dir"; }
  [ -e ~/.ssh/authorized_keys ] || touch "$WORK/created_ak"
  cp "$KEY.pub" "$WORK/authorized_key"
  cat "$KEY.pub" >> ~/.ssh/authorized_keys && chmod 600 ~/.ssh/authorized_keys
fi
command -v rsync >/dev/null || { echo "rsync is needed by ray up (or use --setup-sshd)" >&2; exit 2; }
for host in 127.0.0.1 127.0.0.2; do
  ssh "${SSH_OPTS[@]}" -i "$KEY" "root@$host" true || {
    echo "cannot ssh root@$host with $KEY (see --setup-sshd)" >&2; exit 2; }
done

# Token auth, as on a real cluster: one token file, file-mounted to every node.
"$PY" -c 'import secrets; print(secrets.token_hex(32))' > "$WORK/auth_token"
chmod 600 "$WORK/auth_token"

log "writing $WORK/cluster.yaml from cluster.local.yaml"
"$PY" - "$REPO/cluster.local.yaml" "$WORK" "$VENV" "$KEY" <<'EOF'
import re, sys, yaml
template, work, venv, key = sys.argv[1:]
cfg = yaml.safe_load(open(template))
node_token = f"{work}/node_token"
import socket
with socket.socket() as s:  # not the template's 6379: another Ray here may hold it
    s.bind(("127.0.0.1", 0))
    port = str(s.getsockname()[1])

def adapt(cmds, extra=""):
    out = []
    for c in cmds:
        if re.fullmatch(r"\s*\S*ray stop\s*", c):
            continue  # see the header: `ray stop` would kill every Ray on this machine
        c = c.replace("/opt/hytver/venv", venv).replace("/opt/hytver/auth_token", node_token)
        c = c.replace("RAY_AUTH_MODE=token", f"RAY_TMPDIR={work}/t RAY_AUTH_MODE=token")
        c = c.replace("6379", port)
        out.append(c + extra)
    return out

cfg["cluster_name"] = "hytver-loopback"
cfg["provider"] = {"type": "local", "head_ip": "127.0.0.1", "worker_ips": ["127.0.0.2"]}
cfg["auth"] = {"ssh_user": "root", "ssh_private_key": key}
cfg["min_workers"] = cfg["max_workers"] = 1
cfg["file_mounts"] = {node_token: f"{work}/auth_token"}
cfg["setup_commands"] = []
cfg["head_start_ray_commands"] = adapt(cfg["head_start_ray_commands"])
cfg["worker_start_ray_commands"] = adapt(cfg["worker_start_ray_commands"],
                                         " --node-ip-address=127.0.0.2 --num-cpus=2")
assert not any("ray stop" in c for k in ("head_start_ray_commands", "worker_start_ray_commands")
               for c in cfg[k]), cfg
yaml.safe_dump(cfg, open(f"{work}/cluster.yaml", "w"), sort_keys=False)

# Offline validation first, as the real launcher will see it.
import copy
from ray.autoscaler._private.util import prepare_config, validate_config
validate_config(prepare_config(copy.deepcopy(cfg)))
EOF

cat > "$WORK/sweep.yaml" <<EOF
name: loopback
data:
  synthetic: {n_cases: 8, seed: 0, size: tiny, n_negative: 2}
  split: {preset: random, n_test: 2, n_val: 2, seed: 0}
model: {n_filters: 4}
training: {iterations: 6, batch_size: 2, patch_size: 32, eval_every: 3, checkpoint_every: 3}
search: {losses: [hytver, dice], seeds: [0]}
storage: {path: $WORK/storage}
EOF

export PATH=$VENV/bin:$PATH RAY_UP_enable_autoscaler_v2=0 RAY_USAGE_STATS_ENABLED=0
export RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH=$WORK/auth_token RAY_TMPDIR=$WORK/t
log "ray up (head 127.0.0.1, worker 127.0.0.2)"
start=$(date +%s)
ray up -y --no-config-cache "$WORK/cluster.yaml" > "$WORK/ray_up.log" 2>&1 || {
  tail -40 "$WORK/ray_up.log" >&2; exit 1; }
log "head up in $(( $(date +%s) - start )) s; waiting for the worker node"

nodes() {  # alive nodes as "ip:CPU" lines
  "$PY" - <<'EOF' 2>/dev/null
import ray
ray.init(address="auto", logging_level="ERROR")
for n in ray.nodes():
    if n["Alive"]:
        print(f'{n["NodeManagerAddress"]}:{n["Resources"].get("CPU", 0):g}')
EOF
}
for _ in $(seq 90); do
  nodes | grep -q '^127.0.0.2:' && break
  sleep 2
done
nodes | grep -q '^127.0.0.2:' || {
  log "the worker never joined; autoscaler log:"
  tail -30 "$WORK"/t/ray/session_latest/logs/monitor.* >&2 || true
  exit 1; }
log "worker up $(( $(date +%s) - start )) s after ray up; nodes: $(nodes | tr '\n' ' ')"

log "running the sweep on the head with ray exec"
ray exec "$WORK/cluster.yaml" "cd $REPO && RAY_TMPDIR=$WORK/t RAY_AUTH_MODE=token \
RAY_AUTH_TOKEN_PATH=$WORK/node_token HYTVER_CACHE=$WORK/cache $PY -m hytver_dist.sweep \
--config $WORK/sweep.yaml" > "$WORK/sweep.log" 2>&1 || { tail -40 "$WORK/sweep.log" >&2; exit 1; }
grep -q "trials on existing cluster" "$WORK/sweep.log" || {
  echo "the sweep did not join the ray up cluster" >&2; exit 1; }

"$PY" - "$WORK" <<'EOF'
import json, pathlib, sys
work = pathlib.Path(sys.argv[1])
results = work / "storage/loopback/results"
assert (results / "report/summary.md").is_file(), "no report"
status = [json.loads(p.read_text()) for p in results.glob("trials/*/status.json")]
assert len(status) == 2 and all(s["status"] == "ok" for s in status), status
import ray
ray.init(address="auto", logging_level="ERROR")
worker = {n["NodeID"] for n in ray.nodes() if n["NodeManagerAddress"] == "127.0.0.2"}
finals = [json.loads(p.read_text().splitlines()[-1])
          for p in (work / "storage/loopback").glob("*/result.json")]
assert finals and all(r["node_id"] in worker for r in finals), (finals, worker)
print(f"OK: 2 trials trained on the worker host 127.0.0.2; report {results}/report/summary.md")
EOF
log "done in $(( $(date +%s) - start )) s"

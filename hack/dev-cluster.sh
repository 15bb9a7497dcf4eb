#!/usr/bin/env bash
# A real Kubernetes API on this machine, no cluster needed: the control plane the API-level tests
# run on (etcd, kube-apiserver, kube-controller-manager, kube-scheduler, built by
# hack/kube-binaries.sh) with our kubelet, which plays 2 CPU and 2 GPU nodes and runs every pod as
# a local process. Nothing is installed on it beyond what a fresh cluster has. Beside it, an
# S3-compatible result store: a MinIO server (built by hack/kube-binaries.sh too) on
# 127.0.0.1:9000, root user microtask, password microtask-dev-secret, bucket microtask, and in
# namespace default the Secret microtask-s3 with those credentials (AWS_ACCESS_KEY_ID,
# AWS_SECRET_ACCESS_KEY) for spec.output.s3.secretName; examples/results-s3.yaml writes there.
#
#   hack/dev-cluster.sh up      start it in the background; write the admin kubeconfig
#   hack/dev-cluster.sh env     print `export KUBECONFIG=...` and a PATH with the pinned kubectl
#   hack/dev-cluster.sh status  say whether it is up, how to use it and where its logs are
#   hack/dev-cluster.sh down    stop every process (pods and MinIO included), remove the state
#
# Where (defaults for the repository root):
#   DEV_CLUSTER_DIR         state: pid, logs, etcd data, pod directories   (.kube/dev-cluster)
#   DEV_CLUSTER_KUBECONFIG  the admin kubeconfig, namespace default        (.kube/dev-cluster.yaml)
#   DEV_CLUSTER_TIMEOUT     seconds `up` waits for the API and the nodes   (120)
#   DEV_CLUSTER_MINIO_PORT  MinIO's port on 127.0.0.1                      (9000)
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
state=${DEV_CLUSTER_DIR:-$root/.kube/dev-cluster}
kubeconfig=${DEV_CLUSTER_KUBECONFIG:-$root/.kube/dev-cluster.yaml}
timeout=${DEV_CLUSTER_TIMEOUT:-120}
minio_port=${DEV_CLUSTER_MINIO_PORT:-9000}
python=$root/.venv/bin/python
module=tests.integration.harness.devcluster
marker=.microtask-dev-cluster   # `down` removes only a directory that `up` made

log() { printf 'dev-cluster: %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }

absolute() {  # a path made absolute against the current directory (it need not exist)
  case "$1" in
    /*) printf '%s\n' "$1" ;;
    *) printf '%s/%s\n' "$(pwd)" "$1" ;;
  esac
}
state=$(absolute "$state")
kubeconfig=$(absolute "$kubeconfig")
[ "$state" != / ] || die "DEV_CLUSTER_DIR must not be /"
case "$minio_port" in
  '' | *[!0-9]*) die "DEV_CLUSTER_MINIO_PORT must be a port number, not '$minio_port'" ;;
esac
if [ "$minio_port" -lt 1 ] || [ "$minio_port" -gt 65535 ]; then
  die "DEV_CLUSTER_MINIO_PORT must be a port number (1-65535), not $minio_port"
fi

need_venv() {
  [ -x "$python" ] || die "no virtualenv at $root/.venv: create it first with
  python3 -m venv .venv && .venv/bin/pip install -q -e '.[dev]'"
  (cd "$root" && "$python" -c "import $module") 2>/dev/null || die "$root/.venv lacks the test
dependencies (the harness does not import): .venv/bin/pip install -q -e '.[dev]'"
}

# A process is alive when it exists and is not a zombie (nothing may reap a detached process).
alive() {
  local stat
  stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
  stat=${stat##*) }
  [ "${stat%% *}" != Z ]
}

# The pid of the running dev cluster (checked against its command line), or nothing.
cluster_pid() {
  local pid
  pid=$(cat "$state/devcluster.pid" 2>/dev/null) || return 0
  if alive "$pid" && tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q -- "-m $module "; then
    echo "$pid"
  fi
}

# What may outlive a killed dev cluster: the control-plane components (their command lines name
# files in $state/plane/), MinIO (its command line names $state/minio/), and the pods' processes
# (our kubelet gives each pod HOME=$state/pods/<uid>; the processes they start inherit it).
leftovers() {
  local dir pid comm
  for dir in /proc/[0-9]*; do
    pid=${dir#/proc/}
    comm=$(cat "$dir/comm" 2>/dev/null) || continue
    case "$comm" in
      etcd | kube-apiserver | kube-controller* | kube-scheduler)
        tr '\0' ' ' <"$dir/cmdline" 2>/dev/null | grep -qF -- "$state/plane/" || continue ;;
      minio)
        tr '\0' ' ' <"$dir/cmdline" 2>/dev/null | grep -qF -- "$state/minio/" || continue ;;
      *) grep -qzF -- "HOME=$state/pods/" "$dir/environ" 2>/dev/null || continue ;;
    esac
    if alive "$pid"; then
      echo "$pid"
    fi
  done
  return 0
}

kubectl_dir() {  # the directory of the pinned kubectl, when it is there
  local found
  [ -x "$python" ] || return 0
  found=$(cd "$root" && "$python" -c \
    'from tests.kube_tools import find; p = find("kubectl"); print(p.parent if p else "")' \
    2>/dev/null) || return 0
  [ -z "$found" ] || echo "$found"
}

# MinIO's port as the running dev cluster uses it (`up` records it), else the configured one.
running_minio_port() {
  local found
  found=$(sed -n 's/^minio_port //p' "$state/settings" 2>/dev/null) || true
  echo "${found:-$minio_port}"
}

usage_hint() {
  local port endpoint_note=""
  port=$(running_minio_port)
  if [ "$port" != 9000 ]; then
    endpoint_note="
Not the default port: jobs need spec.output.s3.endpoint http://127.0.0.1:$port (edit a copy of
examples/results-s3.yaml); microtask results and logs then read the job's own endpoint."
  fi
  cat <<EOF
The dev cluster is up: a real Kubernetes $("$python" -c 'from tests.kube_tools import pinned; print(pinned("KUBE_VERSION"))') API with 2 CPU and 2 GPU nodes (pods run as local processes).
Use it (kubeconfig: $kubeconfig, admin, namespace default):

  eval "\$(hack/dev-cluster.sh env)"     # KUBECONFIG, and the pinned kubectl first on PATH
  kubectl get nodes

S3 result store: MinIO at http://127.0.0.1:$port (user microtask, password microtask-dev-secret),
bucket microtask; the Secret microtask-s3 in namespace default holds those credentials for
spec.output.s3.secretName (examples/results-s3.yaml uses it).$endpoint_note

Logs: $state/devcluster.log, $state/plane/*.log and $state/minio/minio.log
Stop it with: hack/dev-cluster.sh down
EOF
}

port_taken() {  # something listens on 127.0.0.1:$1 (a socket in TIME_WAIT does not count)
  ! "$python" -c 'import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1])))' "$1" 2>/dev/null
}

up() {
  need_venv
  if [ -n "$(cluster_pid)" ]; then
    if [ -f "$state/ready" ]; then
      log "already up (pid $(cluster_pid))"
      usage_hint
    else
      log "already starting (pid $(cluster_pid)); see $state/devcluster.log"
    fi
    return 0
  fi
  if [ -e "$state/$marker" ]; then
    log "removing the state of a dev cluster that is no longer running"
    down 2>/dev/null
  elif [ -e "$state" ] && [ -n "$(ls -A "$state")" ]; then
    die "$state exists and is not empty: choose another DEV_CLUSTER_DIR"
  fi
  if port_taken "$minio_port"; then
    die "127.0.0.1:$minio_port, MinIO's port, is already in use (another MinIO, or the dev cluster
of another DEV_CLUSTER_DIR?): free it, or choose another port, e.g. DEV_CLUSTER_MINIO_PORT=9100"
  fi
  local check='import sys; from tests.kube_tools import CONTROL_PLANE, MINIO, find
sys.exit(any(find(name) is None for name in (*CONTROL_PLANE, "kubectl", MINIO)))'
  if ! (cd "$root" && "$python" -c "$check"); then
    log "Kubernetes or MinIO binaries missing: running hack/kube-binaries.sh"
    "$root/hack/kube-binaries.sh" >&2
  fi

  mkdir -p "$state" "$(dirname "$kubeconfig")"
  touch "$state/$marker"
  echo "minio_port $minio_port" >"$state/settings"
  rm -f "$kubeconfig"
  # Detached: its own session (no terminal, Ctrl-C and hang-ups of this shell do not reach it).
  (cd "$root" && exec nohup setsid "$python" -m "$module" --dir "$state" \
    --kubeconfig "$kubeconfig" --minio-port "$minio_port" >"$state/devcluster.log" 2>&1 \
    </dev/null) &
  local pid=$!
  echo "$pid" >"$state/devcluster.pid"
  log "starting (pid $pid; up to $timeout s)"

  local deadline=$((SECONDS + timeout))
  until [ -f "$state/ready" ]; do
    if ! alive "$pid" || [ "$SECONDS" -ge "$deadline" ]; then
      if alive "$pid"; then
        log "not up after $timeout s; the end of $state/devcluster.log:"
      else
        log "it exited; the end of $state/devcluster.log:"
      fi
      tail -n 40 "$state/devcluster.log" >&2 || true
      stop_processes 2>/dev/null
      rm -f "$kubeconfig"
      die "the logs are kept in $state (hack/dev-cluster.sh down removes them)"
    fi
    sleep 0.5
  done
  usage_hint
}

# Stop the dev cluster of $state and everything it started; fails when something survives.
stop_processes() {
  local pid waited=0 rest
  pid=$(cluster_pid)
  if [ -n "$pid" ]; then
    log "stopping (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    # It stops the pods' processes, then the control plane and MinIO: seconds.
    while alive "$pid" && [ "$waited" -lt 120 ]; do
      sleep 0.5
      waited=$((waited + 1))
    done
    if alive "$pid"; then
      log "still running after 60 s: killing it"
      kill -KILL "$pid" 2>/dev/null || true
    fi
  fi
  # Whatever outlived it (killed, or crashed), MinIO included.
  for _ in 1 2 3; do
    rest=$(leftovers)
    [ -n "$rest" ] || return 0
    # shellcheck disable=SC2086  # one pid per word
    kill -KILL $rest 2>/dev/null || true
    sleep 0.5
  done
  rest=$(leftovers)
  [ -z "$rest" ] || die "processes still running (pids: $rest)"
}

down() {
  if [ ! -e "$state/$marker" ]; then
    if [ -e "$state" ] && [ -n "$(ls -A "$state")" ]; then
      die "$state was not made by hack/dev-cluster.sh up; not touching it"
    fi
    rm -f "$kubeconfig"
    log "not up"
    return 0
  fi
  [ -n "$(cluster_pid)" ] || log "not running; removing what is left"
  stop_processes
  rm -rf "$state"
  rm -f "$kubeconfig"
  log "down"
}

status() {
  local pid
  pid=$(cluster_pid)
  if [ -n "$pid" ] && [ -f "$state/ready" ]; then
    log "up (pid $pid)"
    usage_hint
  elif [ -n "$pid" ]; then
    log "starting (pid $pid); see $state/devcluster.log"
    return 1
  elif [ -e "$state/$marker" ]; then
    log "not running; its logs are kept in $state (hack/dev-cluster.sh down removes them)"
    return 1
  else
    log "not up"
    return 1
  fi
}

env_lines() {
  local dir
  printf 'export KUBECONFIG=%q\n' "$kubeconfig"
  dir=$(kubectl_dir)
  if [ -n "$dir" ]; then
    printf 'export PATH=%q:"%s"\n' "$dir" "\$PATH"
  fi
  [ -f "$state/ready" ] || log "the dev cluster is not up (hack/dev-cluster.sh up)"
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  env) env_lines ;;
  status) status ;;
  *) echo "usage: $0 up|down|env|status" >&2; exit 2 ;;
esac

#!/usr/bin/env bash
# A real Kubernetes API on this machine, no cluster needed: the control plane the API-level tests
# run on (etcd, kube-apiserver, kube-controller-manager, kube-scheduler, built by
# hack/kube-binaries.sh) with our kubelet, which plays 2 CPU and 2 GPU nodes and runs every pod as
# a local process. Nothing is installed on it beyond what a fresh cluster has.
#
#   hack/dev-cluster.sh up     start it in the background; write the admin kubeconfig
#   hack/dev-cluster.sh env    print `export KUBECONFIG=...` and a PATH with the pinned kubectl
#   hack/dev-cluster.sh down   stop every process (pods included) and remove the state
#
# Where (defaults for the repository root):
#   DEV_CLUSTER_DIR         state: pid, logs, etcd data, pod directories   (.kube/dev-cluster)
#   DEV_CLUSTER_KUBECONFIG  the admin kubeconfig, namespace default        (.kube/dev-cluster.yaml)
#   DEV_CLUSTER_TIMEOUT     seconds `up` waits for the API and the nodes   (120)
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
state=${DEV_CLUSTER_DIR:-$root/.kube/dev-cluster}
kubeconfig=${DEV_CLUSTER_KUBECONFIG:-$root/.kube/dev-cluster.yaml}
timeout=${DEV_CLUSTER_TIMEOUT:-120}
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
# files in $state/plane/), and the pods' processes (our kubelet gives each pod
# HOME=$state/pods/<uid>; the processes they start inherit it).
leftovers() {
  local dir pid comm
  for dir in /proc/[0-9]*; do
    pid=${dir#/proc/}
    comm=$(cat "$dir/comm" 2>/dev/null) || continue
    case "$comm" in
      etcd | kube-apiserver | kube-controller* | kube-scheduler)
        tr '\0' ' ' <"$dir/cmdline" 2>/dev/null | grep -qF -- "$state/plane/" || continue ;;
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

usage_hint() {
  cat <<EOF
The dev cluster is up: a real Kubernetes $("$python" -c 'from tests.kube_tools import pinned; print(pinned("KUBE_VERSION"))') API with 2 CPU and 2 GPU nodes (pods run as local processes).
Use it (kubeconfig: $kubeconfig, admin, namespace default):

  eval "\$(hack/dev-cluster.sh env)"     # KUBECONFIG, and the pinned kubectl first on PATH
  kubectl get nodes

Logs: $state/devcluster.log and $state/plane/*.log; stop it with: hack/dev-cluster.sh down
EOF
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
  local check='import sys; from tests.kube_tools import CONTROL_PLANE, find
sys.exit(any(find(name) is None for name in (*CONTROL_PLANE, "kubectl")))'
  if ! (cd "$root" && "$python" -c "$check"); then
    log "Kubernetes binaries missing: running hack/kube-binaries.sh"
    "$root/hack/kube-binaries.sh" >&2
  fi

  mkdir -p "$state" "$(dirname "$kubeconfig")"
  touch "$state/$marker"
  rm -f "$kubeconfig"
  # Detached: its own session (no terminal, Ctrl-C and hang-ups of this shell do not reach it).
  (cd "$root" && exec nohup setsid "$python" -m "$module" --dir "$state" \
    --kubeconfig "$kubeconfig" >"$state/devcluster.log" 2>&1 </dev/null) &
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
    # It stops the pods' processes, then the control plane: seconds.
    while alive "$pid" && [ "$waited" -lt 120 ]; do
      sleep 0.5
      waited=$((waited + 1))
    done
    if alive "$pid"; then
      log "still running after 60 s: killing it"
      kill -KILL "$pid" 2>/dev/null || true
    fi
  fi
  # Whatever outlived it (killed, or crashed).
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
  *) echo "usage: $0 up|down|env" >&2; exit 2 ;;
esac

#!/usr/bin/env bash
# Microtask on a real (kind) cluster, end to end:
#
#   1. create the kind cluster of kind-config.yaml (or reuse it),
#   2. build the operator and runner images from this checkout and load them
#      into the cluster under the names deploy/, the chart and the examples use
#      (ghcr.io/microtask-dev/...:<version in pyproject.toml>), so that all of
#      them are applied exactly as a user applies them, only nothing is pulled,
#   3. install the operator: the Helm chart when helm is installed (after
#      `helm lint`, a values-schema check and a server-side dry run of
#      `helm template`), else `kubectl apply -k deploy/` (plus a server-side
#      dry run of `kubectl apply -f deploy/`),
#   4. apply examples/*.yaml and wait for each MicrotaskJob to succeed,
#   5. run the e2e tests: pytest tests/e2e --e2e.
#
# Needs: docker, kind, kubectl; optionally helm and a Python with the test
# dependencies (`pip install -e '.[dev]'`). Run from anywhere:
#
#   hack/kind-e2e.sh
#
# Settings (environment):
#   CLUSTER_NAME         kind cluster name (default: the name in kind-config.yaml)
#   FAKE_GPUS_PER_NODE   nvidia.com/gpu capacity advertised on the GPU-labelled
#                        workers (default 2; 0 leaves them GPU-less, so GPU shards
#                        stay Pending and `accelerator: auto` falls back to CPU)
#   INSTALL_WITH         helm | kubectl (default: helm when it is installed; keep
#                        to one per cluster: Helm does not adopt objects that
#                        `kubectl apply` created)
#   EXAMPLE_TIMEOUT      seconds to wait for each example (default 600)
#   RUN_PYTEST           1 to run the e2e tests at the end (default 1)
#   PYTHON               interpreter for pytest (default: .venv/bin/python, else python3)
#   DELETE_CLUSTER       1 to delete the cluster at the end (default 0: keep it to look around)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

CLUSTER_NAME="${CLUSTER_NAME:-$(sed -n 's/^name: *//p' kind-config.yaml)}"
VERSION="$(sed -n 's/^version = "\(.*\)"$/\1/p' pyproject.toml)"
OPERATOR_IMAGE="ghcr.io/microtask-dev/microtask-operator:${VERSION}"
RUNNER_IMAGE="ghcr.io/microtask-dev/microtask-runner:${VERSION}"
FAKE_GPUS_PER_NODE="${FAKE_GPUS_PER_NODE:-2}"
EXAMPLE_TIMEOUT="${EXAMPLE_TIMEOUT:-600}"
RUN_PYTEST="${RUN_PYTEST:-1}"
DELETE_CLUSTER="${DELETE_CLUSTER:-0}"
NAMESPACE="microtask-system"
RELEASE="microtask-operator"
EXAMPLES_NAMESPACE="microtask-examples"
GPU_LABEL="$(sed -n 's/^  nodeLabel: *//p' charts/microtask-operator/values.yaml)"
GPU_RESOURCE="$(sed -n 's/^  resourceName: *//p' charts/microtask-operator/values.yaml)"
if [[ -z "${INSTALL_WITH:-}" ]]; then
  if command -v helm >/dev/null 2>&1; then INSTALL_WITH=helm; else INSTALL_WITH=kubectl; fi
fi

log() { printf '\n==> %s\n' "$*"; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

for tool in docker kind kubectl; do
  command -v "$tool" >/dev/null 2>&1 || die "$tool is needed (see the README's kind section)"
done

WORK="$(mktemp -d)"
cleanup() {
  rm -rf "$WORK"
  if [[ "$DELETE_CLUSTER" == 1 ]]; then kind delete cluster --name "$CLUSTER_NAME"; fi
}
trap cleanup EXIT

# --------------------------------------------------------------- 1. cluster
if kind get clusters 2>/dev/null | grep -qx "$CLUSTER_NAME"; then
  log "reusing kind cluster $CLUSTER_NAME"
else
  log "creating kind cluster $CLUSTER_NAME"
  kind create cluster --name "$CLUSTER_NAME" --config kind-config.yaml --wait 180s
fi
CONTEXT="kind-$CLUSTER_NAME"
kubectl() { command kubectl --context "$CONTEXT" "$@"; }

if [[ "$FAKE_GPUS_PER_NODE" != 0 ]]; then
  # The documented way to advertise an extended resource: patch the node's
  # status capacity. Nothing backs it; the pods only need to be schedulable.
  log "advertising $FAKE_GPUS_PER_NODE fake $GPU_RESOURCE on nodes labelled $GPU_LABEL=true"
  resource_path="/status/capacity/${GPU_RESOURCE//\//~1}"
  for node in $(kubectl get nodes -l "$GPU_LABEL=true" -o name); do
    kubectl patch "$node" --subresource=status --type=json \
      -p "[{\"op\": \"add\", \"path\": \"$resource_path\", \"value\": \"$FAKE_GPUS_PER_NODE\"}]"
  done
fi

# ---------------------------------------------------------------- 2. images
# Tagged with the published names: with a version tag the pull policy is
# IfNotPresent, so the nodes run these loaded images and never pull.
log "building $OPERATOR_IMAGE and $RUNNER_IMAGE from this checkout"
docker build -f operator/Dockerfile -t "$OPERATOR_IMAGE" .
docker build -f runner/Dockerfile -t "$RUNNER_IMAGE" .
for image in "$OPERATOR_IMAGE" "$RUNNER_IMAGE"; do
  kind load docker-image "$image" --name "$CLUSTER_NAME"
done

# --------------------------------------------------------------- 3. install
kubectl create namespace "$NAMESPACE" --dry-run=client -o yaml | kubectl apply -f -
kubectl label namespace "$NAMESPACE" --overwrite pod-security.kubernetes.io/enforce=restricted
if [[ "$INSTALL_WITH" == helm ]]; then
  command -v helm >/dev/null 2>&1 || die "INSTALL_WITH=helm but helm is not installed"
  chart=charts/microtask-operator
  log "helm lint, the values schema, and a server-side dry run of helm template"
  helm lint "$chart"
  helm lint "$chart" --set metrics.serviceMonitor.enabled=true --set grafanaDashboard.enabled=true
  helm lint "$chart" --set "watchNamespaces={$EXAMPLES_NAMESPACE}"
  # The schema must turn bad values away at install time.
  if helm template "$RELEASE" "$chart" --set replicaCount=-1 >/dev/null 2>&1; then
    die "values.schema.json accepted replicaCount=-1"
  fi
  helm template "$RELEASE" "$chart" --namespace "$NAMESPACE" | kubectl apply --dry-run=server -f -
  log "helm upgrade --install $RELEASE"
  helm upgrade --install "$RELEASE" "$chart" --kube-context "$CONTEXT" --namespace "$NAMESPACE" \
    --wait --timeout 5m
else
  log "kubectl apply -k deploy/"
  kubectl apply -k deploy/
  # `-f` on the folder must work too: a server-side dry run shows it reads cleanly.
  kubectl apply -f deploy/ --dry-run=server >/dev/null
fi
kubectl wait --for condition=established --timeout=60s crd/microtaskjobs.microtask.dev
kubectl -n "$NAMESPACE" rollout status "deployment/$RELEASE" --timeout=300s

# -------------------------------------------------------------- 4. examples
log "applying examples/*.yaml in namespace $EXAMPLES_NAMESPACE"
kubectl create namespace "$EXAMPLES_NAMESPACE" --dry-run=client -o yaml | kubectl apply -f -
kubectl label namespace "$EXAMPLES_NAMESPACE" --overwrite pod-security.kubernetes.io/enforce=restricted
names=()
for file in examples/*.yaml; do
  grep -q '^kind: MicrotaskJob' "$file" || continue
  # Its result store is the MinIO of hack/dev-cluster.sh (127.0.0.1 from where the pods run).
  if grep -q '^# needs: dev-cluster-minio' "$file"; then
    log "skipping $file: it needs the dev cluster's MinIO"
    continue
  fi
  applied="$(kubectl -n "$EXAMPLES_NAMESPACE" apply -f "$file" -o name)"
  while IFS= read -r object; do
    if [[ "$object" == microtaskjob.microtask.dev/* ]]; then names+=("${object#*/}"); fi
  done <<<"$applied"
done
[[ ${#names[@]} -gt 0 ]] || die "no MicrotaskJob in examples/*.yaml"

failed=0
for name in "${names[@]}"; do
  deadline=$((SECONDS + EXAMPLE_TIMEOUT))
  phase=""
  while ((SECONDS < deadline)); do
    phase="$(kubectl -n "$EXAMPLES_NAMESPACE" get mtj "$name" -o jsonpath='{.status.phase}' 2>/dev/null || true)"
    [[ "$phase" == Succeeded || "$phase" == Failed ]] && break
    sleep 5
  done
  counts="$(kubectl -n "$EXAMPLES_NAMESPACE" get mtj "$name" \
    -o jsonpath='{.status.succeeded}/{.status.total} succeeded, {.status.failed} failed')"
  printf '%-32s %-10s %s\n' "$name" "${phase:-timeout}" "$counts"
  [[ "$phase" == Succeeded ]] || failed=1
done
kubectl -n "$EXAMPLES_NAMESPACE" get mtj
if ((failed)); then
  kubectl -n "$EXAMPLES_NAMESPACE" get events --sort-by=.lastTimestamp | tail -30
  kubectl -n "$NAMESPACE" logs "deployment/$RELEASE" -c operator --tail=100
  die "some examples did not succeed"
fi

# ----------------------------------------------------------------- 5. tests
if [[ "$RUN_PYTEST" == 1 ]]; then
  python="${PYTHON:-}"
  if [[ -z "$python" ]]; then
    if [[ -x .venv/bin/python ]]; then python=.venv/bin/python; else python=python3; fi
  fi
  log "pytest tests/e2e --e2e"
  KUBECONFIG="$(mktemp -p "$WORK")"
  kind get kubeconfig --name "$CLUSTER_NAME" >"$KUBECONFIG"
  KUBECONFIG="$KUBECONFIG" MICROTASK_E2E_IMAGE="$RUNNER_IMAGE" \
    MICROTASK_E2E_OPERATOR_NAMESPACE="$NAMESPACE" MICROTASK_E2E_RELEASE="$RELEASE" \
    "$python" -m pytest tests/e2e --e2e -v
fi
if [[ "$DELETE_CLUSTER" != 1 ]]; then
  log "done; the cluster is kept (kubectl --context $CONTEXT ...): kind delete cluster --name $CLUSTER_NAME"
fi

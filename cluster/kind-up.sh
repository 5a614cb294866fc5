#!/usr/bin/env bash
# remote-docker-operator on a local kind cluster, for machines with Docker, kind (>= 0.24), helm
# and kubectl, and access to Docker Hub (the node image, python:3.12-slim, docker:27-dind and
# docker:27-cli are pulled from it).
#
#   cluster/kind-up.sh [up]   create the cluster (kept if it exists), build the operator's image
#                             (operator/Dockerfile) and load it into the node, install the chart,
#                             then run examples/hello-dockerhub.yaml and print its result and log
#   cluster/kind-up.sh down   delete the cluster
#
# KIND_CLUSTER_NAME overrides the cluster's name (default remote-docker-operator).
#
# Not run where this project is developed and tested: there is no Docker engine there and no
# registry to pull kind's node image from. The same flow runs there on a cluster built from
# source instead (`make up`, tests/e2e).
set -euo pipefail
cd "$(dirname "$0")/.."

cluster=${KIND_CLUSTER_NAME:-remote-docker-operator}
context=kind-$cluster
namespace=remote-docker-operator
release=remote-docker-operator
version=$(sed -n 's/^version = "\(.*\)"$/\1/p' pyproject.toml | head -n1)
image=remote-docker-operator:$version
timeout=300 # seconds the hello BuildJob may take (it pulls docker:27-dind and docker:27-cli)

need() {
  local tool
  for tool in "$@"; do
    command -v "$tool" >/dev/null || { echo "kind-up.sh: $tool is needed on PATH" >&2; exit 2; }
  done
}

exists() { kind get clusters 2>/dev/null | grep -qx "$cluster"; }

k() { kubectl --context "$context" "$@"; }

down() {
  need kind
  if exists; then
    kind delete cluster --name "$cluster"
  else
    echo "no kind cluster named $cluster"
  fi
}

# What a failed or stuck BuildJob left behind: its status and events, its pods, their logs.
explain() {
  local ns
  k get bj hello -o yaml || true
  k describe bj hello | sed -n '/^Events:/,$p' || true
  ns=$(k get bj hello -o jsonpath='{.status.namespace}' 2>/dev/null || true)
  if [ -n "$ns" ]; then
    k get pods -n "$ns" -o wide || true
    k logs -n "$ns" engine -c dockerd --tail=50 || true
    k logs -n "$ns" job -c job || true
  fi
  k logs -n "$namespace" deployment/"$release" --tail=50 || true
}

up() {
  need kind docker helm kubectl
  if exists; then
    echo "kind cluster $cluster exists; using it"
  else
    kind create cluster --name "$cluster" --config kind-config.yaml
  fi

  docker build -t "$image" -f operator/Dockerfile .
  kind load docker-image "$image" --name "$cluster"

  helm upgrade --install "$release" charts/remote-docker-operator \
    --kube-context "$context" -n "$namespace" --create-namespace \
    --set image.repository=remote-docker-operator \
    --set image.tag="$version" \
    --set image.pullPolicy=IfNotPresent \
    --wait --timeout 5m

  # A BuildJob's spec is immutable: a rerun starts from a new one.
  k delete bj hello --ignore-not-found --wait
  k apply -f examples/hello-dockerhub.yaml

  # Like `kubectl wait --for=jsonpath='{.status.phase}'=Succeeded`, but a Failed BuildJob ends
  # the wait at once instead of at the timeout.
  local phase="" deadline=$((SECONDS + timeout))
  while [ "$SECONDS" -lt "$deadline" ]; do
    phase=$(k get bj hello -o jsonpath='{.status.phase}' || true)
    case "$phase" in Succeeded | Failed) break ;; esac
    sleep 3
  done
  if [ "$phase" = Failed ]; then
    echo "BuildJob hello failed" >&2
  elif [ "$phase" != Succeeded ]; then
    echo "BuildJob hello did not finish in ${timeout}s (phase: ${phase:-none})" >&2
  fi
  if [ "$phase" != Succeeded ]; then
    explain
    exit 1
  fi

  k get bj hello -o wide
  local ns
  ns=$(k get bj hello -o jsonpath='{.status.namespace}')
  k logs -n "$ns" job -c job
}

case "${1:-up}" in
  up) up ;;
  down) down ;;
  *) echo "usage: $0 [up|down]" >&2; exit 2 ;;
esac

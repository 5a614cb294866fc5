#!/usr/bin/env bash
# `make up`: a real single-node cluster here, the operator, and examples/hello.yaml run to the end.
# Installs and builds whatever is missing (Debian packages, Go binaries, images), all cached.
set -euo pipefail
cd "$(dirname "$0")/.."
: "${RDO_CACHE:=/var/cache/remote-docker-operator}"
: "${RDO_CLUSTER_DIR:=$PWD/.artifacts/cluster}"
PY=$RDO_CACHE/venv/bin/python
KUBECTL=$RDO_CACHE/bin/kubectl
export KUBECONFIG=$RDO_CLUSTER_DIR/admin.kubeconfig

step() { printf '\n==> %s\n' "$*"; }

step "Debian packages"; cluster/install-deps.sh
step "Kubernetes, etcd, kube-router, helm from the Go module proxy"; cluster/build-bins.sh
step "Images, cluster (logs in $RDO_CLUSTER_DIR/logs)"
"$PY" cluster/localcluster.py up --tier real --dir "$RDO_CLUSTER_DIR"
"$KUBECTL" apply --server-side -f crds/ >/dev/null
"$KUBECTL" wait --for=condition=Established crd/buildjobs.remotedocker.dev \
  crd/engineclasses.remotedocker.dev >/dev/null

step "Operator: the Helm chart, with the operator image built here"
"$RDO_CACHE/bin/helm" --kubeconfig "$KUBECONFIG" upgrade --install remote-docker-operator \
  charts/remote-docker-operator -n remote-docker-operator --create-namespace \
  --set image.repository=rdo.local/remote-docker-operator --set image.pullPolicy=Never \
  --set engineClass.spec.image=rdo.local/dind:26.1 \
  --set engineClass.spec.versionedImage.repository=rdo.local/dind \
  --set engineClass.spec.versionedImage.tagSuffix= \
  --set test.jobImage=rdo.local/job:1 --wait --timeout 180s
"$KUBECTL" -n remote-docker-operator get deployment remote-docker-operator

step "examples/hello.yaml"
"$KUBECTL" delete buildjob hello --ignore-not-found --wait >/dev/null
# Just after the API server starts, its admission policies may not resolve the EngineClass kind
# for a few seconds ("failed to find resource referenced by paramKind"): try again meanwhile.
for _ in $(seq 30); do "$KUBECTL" apply -f examples/hello.yaml && break; sleep 1; done
for _ in $(seq 300); do
  phase=$("$KUBECTL" get bj hello -o jsonpath='{.status.phase}')
  [ "$phase" = Running ] || [ "$phase" = Succeeded ] || [ "$phase" = Failed ] && break
  sleep 1
done
# Follow the job's log (its pod is named after the BuildJob, beside it) once its container has
# started (its init container waits for the engine).
for _ in $(seq 120); do
  "$KUBECTL" logs hello -c job -f 2>/dev/null && break
  sleep 0.5
done
"$KUBECTL" wait --for=jsonpath='{.status.phase}'=Succeeded bj/hello --timeout=120s >/dev/null || true

step "Result"
"$KUBECTL" get bj hello -o wide
"$KUBECTL" get bj hello -o jsonpath='{range .status.conditions[*]}{.type}={.status} ({.reason}){"\n"}{end}'
echo
echo "export KUBECONFIG=$KUBECONFIG   # to use the cluster; \`make down\` stops it all"
[ "$("$KUBECTL" get bj hello -o jsonpath='{.status.phase}')" = Succeeded ]

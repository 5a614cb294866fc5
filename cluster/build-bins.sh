#!/usr/bin/env bash
# Builds the cluster's binaries from the Go module proxy, cached by version under $RDO_CACHE/bin.
# Usage: cluster/build-bins.sh [group...]   groups: control-plane kwok node tools (the default), kind
#   control-plane  etcd kube-apiserver kube-controller-manager kube-scheduler kubectl
#   kwok           kwok (fake nodes for the integration tier)
#   node           kubelet kube-proxy kube-router containerd containerd-shim-runc-v2 ctr runc
#   tools          helm
#   kind           kind, only on request: no test runs it (docs/development.md says what was
#                  checked with it), and it adds a minute to a cold build
# A warm run (every binary already built) takes well under a second.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=versions.env
. "$here/versions.env"
: "${RDO_CACHE:=/var/cache/remote-docker-operator}"
bin="$RDO_CACHE/bin"
mkdir -p "$bin"
export GOFLAGS=-buildvcs=false CGO_ENABLED=0

# `go install mod@v` refuses modules whose go.mod replaces siblings with local paths (Kubernetes,
# etcd), so build them in a wrapper module that points each such sibling at its published version.
build_wrapped() { # module version sibling-version ldflags name=cmd-package...
  local module=$1 version=$2 sibling=$3 ldflags=$4; shift 4
  local missing=() spec
  for spec in "$@"; do [ -x "$bin/${spec%%=*}-$version" ] || missing+=("$spec"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  local mod="$RDO_CACHE/src/$(echo "$module" | tr / _)-$version"
  mkdir -p "$mod"
  if [ ! -f "$mod/go.mod" ]; then
    local gomod
    gomod=$(cd "$mod" && go mod download -json "$module@$version" | sed -n 's/.*"GoMod": "\(.*\)",/\1/p')
    {
      echo "module rdo.local/wrapper"
      # The module's own go directive: without one, go assumes 1.16 and walks the entire
      # (unpruned) module graph, thousands of go.mod downloads.
      grep -m1 '^go ' "$gomod"
      echo "require $module $version"
      sed -n 's#^[[:space:]]*\([^[:space:]]*\) => \.\.*/[^F].*#replace \1 => \1 '"$sibling"'#p' "$gomod"
    } >"$mod/go.mod"
    # -mod=mod below fills go.sum with just what the commands need (go mod tidy would fetch the
    # test dependencies of every package in the graph, hundreds of modules).
    touch "$mod/go.sum"
  fi
  # One `go build` for all of them: it links one binary while it compiles for the next, where
  # one build each would leave a core idle through every link.
  local out="$mod/out" pkgs=() name pkg file
  rm -rf "$out" && mkdir -p "$out"
  for spec in "${missing[@]}"; do pkgs+=("${spec#*=}"); echo "building ${spec%%=*} $version" >&2; done
  (cd "$mod" && go build -mod=mod -trimpath -ldflags "-s -w $ldflags" -o "$out/" "${pkgs[@]}")
  for spec in "${missing[@]}"; do
    name=${spec%%=*} pkg=${spec#*=}
    # go names a binary after its package's last element, a major version's (/v3) the one before.
    file=${pkg##*/}
    [[ $file =~ ^v[0-9]+$ ]] && { file=${pkg%/*}; file=${file##*/}; }
    mv "$out/$file" "$bin/$name-$version"
  done
  rm -rf "$out"
}

# Without version ldflags the Kubernetes binaries report v0.0.0, which breaks version skew checks.
k8s_ldflags() {
  local p out="" minor
  minor=$(echo "$K8S_VERSION" | cut -d. -f2)
  for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    out+=" -X $p.gitVersion=$K8S_VERSION -X $p.gitMajor=1 -X $p.gitMinor=$minor"
    out+=" -X $p.gitTreeState=clean -X $p.buildDate=1970-01-01T00:00:00Z"
  done
  echo "$out"
}

build_k8s() {
  local c pkgs=()
  for c in "$@"; do pkgs+=("$c=k8s.io/kubernetes/cmd/$c"); done
  build_wrapped k8s.io/kubernetes "$K8S_VERSION" "$K8S_STAGING_VERSION" "$(k8s_ldflags)" "${pkgs[@]}"
  for c in "$@"; do ln -sfn "$c-$K8S_VERSION" "$bin/$c"; done
}

go_install() { # name version package [ldflags [cache-tag [build-tags]]]
  local name=$1 version=$2 pkg=$3 ldflags=${4:-} tag=${5:-$2} tags=${6:-}
  if [ ! -x "$bin/$name-$tag" ]; then
    echo "building $name $version" >&2
    local tmp; tmp=$(mktemp -d)
    GOBIN="$tmp" go install -trimpath -tags "$tags" -ldflags "-s -w $ldflags" "$pkg@$version"
    mv "$tmp/$name" "$bin/$name-$tag"
    rm -rf "$tmp"
  fi
  ln -sfn "$name-$tag" "$bin/$name"
}

groups=("$@"); [ ${#groups[@]} -eq 0 ] && groups=(control-plane kwok node tools)
for g in "${groups[@]}"; do
  case "$g" in
    control-plane)
      build_wrapped go.etcd.io/etcd/server/v3 "$ETCD_VERSION" "$ETCD_VERSION" "" \
        etcd=go.etcd.io/etcd/server/v3
      ln -sfn "etcd-$ETCD_VERSION" "$bin/etcd"
      build_k8s kube-apiserver kube-controller-manager kube-scheduler kubectl ;;
    kwok) go_install kwok "$KWOK_VERSION" sigs.k8s.io/kwok/cmd/kwok ;;
    node)
      build_k8s kubelet kube-proxy
      # NetworkPolicy enforcement in firewall-only mode (see versions.env on why this version).
      go_install kube-router "$KUBE_ROUTER_VERSION" github.com/cloudnativelabs/kube-router/v2/cmd/kube-router
      # The container runtime (versions.env says why not Debian's).
      for c in containerd containerd-shim-runc-v2 ctr; do
        go_install "$c" "$CONTAINERD_VERSION" "github.com/containerd/containerd/v2/cmd/$c" \
          "-X github.com/containerd/containerd/v2/version.Version=$CONTAINERD_VERSION"
      done
      # runc applies seccomp profiles only when built with libseccomp (cgo; install-deps.sh).
      CGO_ENABLED=1 go_install runc "$RUNC_VERSION" github.com/opencontainers/runc \
        "-X main.version=${RUNC_VERSION#v}" "$RUNC_VERSION" seccomp ;;
    tools)
      # As Helm's Makefile does: without these, helm reports no version and assumes
      # Kubernetes v1.20 when rendering offline (and refuses charts needing newer).
      minor=$(echo "$K8S_VERSION" | cut -d. -f2)
      helm_ldflags="-X helm.sh/helm/v3/internal/version.version=$HELM_VERSION"
      for p in helm.sh/helm/v3/pkg/lint/rules helm.sh/helm/v3/pkg/chartutil; do
        helm_ldflags+=" -X $p.k8sVersionMajor=1 -X $p.k8sVersionMinor=$minor"
      done
      go_install helm "$HELM_VERSION" helm.sh/helm/v3/cmd/helm "$helm_ldflags" \
        "$HELM_VERSION-k8s1.$minor" ;;
    kind) go_install kind "$KIND_VERSION" sigs.k8s.io/kind ;;
    *) echo "unknown group $g" >&2; exit 2 ;;
  esac
done

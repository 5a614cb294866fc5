#!/usr/bin/env bash
# Writes user-namespace-engine.json from containerd's default profile at the version the local
# cluster runs (cluster/versions.env), for the capabilities the UserNamespace engine container has:
# containerd's defaults plus SYS_ADMIN and NET_ADMIN (builders.USER_NAMESPACE_ENGINE). For x86-64.
# The Rootless tier's engine, which adds no capability, uses it too: its launcher and dockerd make
# the calls those capabilities' rules let through (unshare, mount, setns) in a user namespace of
# their own, and a filter judges the call, not the capability it is made with.
#   seccomp/generate.sh [OUT]     (default: seccomp/user-namespace-engine.json, and its copy in the
#                                 chart, which installs it on nodes: seccompProfile.install)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=../cluster/versions.env
. "$here/../cluster/versions.env"
out=$(realpath -m "${1:-$here/user-namespace-engine.json}")
caps=(CAP_CHOWN CAP_DAC_OVERRIDE CAP_FSETID CAP_FOWNER CAP_MKNOD CAP_NET_RAW CAP_SETGID
  CAP_SETUID CAP_SETFCAP CAP_SETPCAP CAP_NET_BIND_SERVICE CAP_SYS_CHROOT CAP_KILL
  CAP_AUDIT_WRITE CAP_SYS_ADMIN CAP_NET_ADMIN)
mod=$(mktemp -d)
trap 'rm -rf "$mod"' EXIT
cp "$here/generate.go" "$mod/"
cd "$mod"
export GOFLAGS=-mod=mod GOARCH=amd64
go mod init rdo.local/seccomp >/dev/null 2>&1
go get "github.com/containerd/containerd/v2@$CONTAINERD_VERSION" >/dev/null 2>&1
go run . "${caps[@]}" >"$out.tmp"
mv "$out.tmp" "$out"
if [ $# -eq 0 ]; then
  cp "$out" "$here/../charts/remote-docker-operator/files/seccomp/user-namespace-engine.json"
fi

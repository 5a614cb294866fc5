#!/usr/bin/env bash
# Debian packages the local cluster and the image builds need; installs only what is missing.
set -euo pipefail
# containerd and runc are built (build-bins.sh); runc links libseccomp.
packages=(containernetworking-plugins iptables ipset conntrack debootstrap
          busybox-static gcc libc6-dev libseccomp-dev pkg-config)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
echo "installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get -o DPkg::Lock::Timeout=600 install -y -q "${missing[@]}" >/dev/null 2>&1 || {
  apt-get -o DPkg::Lock::Timeout=600 update -q >/dev/null
  apt-get -o DPkg::Lock::Timeout=600 install -y -q "${missing[@]}" >/dev/null
}

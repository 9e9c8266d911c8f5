#!/usr/bin/env bash
# shellcheck disable=SC2016  # the hooks' "$1" is expanded by mmdebstrap, not here
# Build (or reuse) one of the device lab's root filesystems and print its path.
#
#   bash tests/lab/rootfs.sh NAME          NAME: arm64-bookworm | arm64-trixie | systemd | amd64-trixie
#   bash tests/lab/rootfs.sh --path NAME   where NAME's cache folder is (built or not)
#
# The cache folder is .cache/lab/rootfs/NAME-KEY, KEY a digest of its inputs (architecture, suite,
# package list, mirrors, hooks): change any input and the next run builds a new one. A finished build is marked
# by a .lab-complete file, so an interrupted build is never reused.
#   arm64-*   Raspberry Pi OS-like system site: apt's numpy (1.24 on bookworm), the picamera2
#             dependencies Debian has (python3-av, python3-prctl) and python3-scipy standing in
#             for the Pi's apt-built simplejpeg (a C extension built against apt's numpy).
#             arm64-bookworm also boots, as Raspberry Pi OS does: systemd as PID 1 (under qemu-user), sudo.
#   systemd   amd64 bookworm that boots under systemd-nspawn -b (systemd as PID 1), with sudo.
#   amd64-trixie  Python 3.13 on x86 (a workstation without a TensorFlow wheel), for the converter.
set -euo pipefail
cd "$(dirname "$0")/../.."
only_path=0
if [ "${1:-}" = --path ]; then only_path=1; shift; fi
name=${1:?usage: rootfs.sh [--path] arm64-bookworm|arm64-trixie|systemd|amd64-trixie}
cache=${EDGE_RESNET_LAB_CACHE:-$PWD/.cache/lab}
MIRROR=http://deb.debian.org/debian
SECURITY=http://deb.debian.org/debian-security
OPTS_VERSION=2  # bump when the mmdebstrap options below change
PI_SITE=python3,python3-venv,python3-pip,ca-certificates,python3-numpy,python3-av,python3-prctl,python3-scipy

BOOTS=systemd,systemd-sysv,dbus,udev,sudo,procps,less
case "$name" in
  arm64-bookworm) arch=arm64 suite=bookworm include=$PI_SITE,$BOOTS ;;
  arm64-trixie) arch=arm64 suite=trixie include=$PI_SITE ;;
  systemd) arch=amd64 suite=bookworm
    include=systemd,systemd-sysv,dbus,udev,sudo,python3,python3-venv,python3-pip,ca-certificates,procps,less ;;
  amd64-trixie) arch=amd64 suite=trixie include=python3,python3-venv,python3-pip,ca-certificates ;;
  *) echo "rootfs.sh: unknown root filesystem '$name' (arm64-bookworm, arm64-trixie, systemd, amd64-trixie)" >&2; exit 2 ;;
esac

# the rootfs reaches PyPI through this machine's TLS-intercepting proxy: its CAs and pip config go in
hooks=(
  # (the bundle is copied rather than rebuilt: update-ca-certificates forks sed per certificate, minutes under qemu)
  --customize-hook='mkdir -p "$1/usr/local/share/ca-certificates" && cp -a /usr/local/share/ca-certificates/. "$1/usr/local/share/ca-certificates/" && cp /etc/ssl/certs/ca-certificates.crt "$1/etc/ssl/certs/ca-certificates.crt"'
  --customize-hook='if [ -f /etc/pip.conf ]; then cp /etc/pip.conf "$1/etc/pip.conf"; fi'
  --customize-hook='rm -f "$1/etc/resolv.conf"; cp /etc/resolv.conf "$1/etc/resolv.conf"'
)
if [ "$arch" = arm64 ]; then
  # Under qemu much of the build is Python byte-compiling every module of numpy, scipy and av in
  # emulation (py3compile in their postinst). It changes nothing the lab checks (Python compiles
  # on import), so py3compile is diverted to a no-op while apt runs and put back afterwards.
  hooks+=(
    --essential-hook='chroot "$1" dpkg-divert --quiet --local --rename --divert /usr/bin/py3compile.lab --add /usr/bin/py3compile && printf "#!/bin/sh\nexit 0\n" > "$1/usr/bin/py3compile" && chmod 755 "$1/usr/bin/py3compile"'
    --customize-hook='rm -f "$1/usr/bin/py3compile" && chroot "$1" dpkg-divert --quiet --local --rename --remove /usr/bin/py3compile'
  )
fi
if [ "$name" = systemd ] || [ "$name" = arm64-bookworm ]; then
  hooks+=(
    --customize-hook='echo lab-device > "$1/etc/hostname"'
    --customize-hook='chroot "$1" passwd -d root >/dev/null'
    # no getty on the container console: nobody logs in, the lab enters with nsenter
    --customize-hook='chroot "$1" systemctl mask console-getty.service getty@tty1.service >/dev/null 2>&1 || true'
  )
fi
hooks_text=$(printf '%s\n' "${hooks[@]}")
key=$(printf '%s\n' "$arch" "$suite" "$include" "$MIRROR" "$SECURITY" "$hooks_text" "$OPTS_VERSION" | sha256sum | cut -c1-12)
dir="$cache/rootfs/$name-$key"
if [ "$only_path" = 1 ]; then echo "$dir"; exit 0; fi
if [ -f "$dir/.lab-complete" ]; then echo "$dir"; exit 0; fi

command -v mmdebstrap >/dev/null || { echo "rootfs.sh: mmdebstrap is missing: bash tests/lab/host.sh installs it" >&2; exit 7; }
rm -rf "$dir" "$dir.tmp"
mkdir -p "$cache/rootfs"
sources="deb $MIRROR $suite main
deb $MIRROR $suite-updates main
deb $SECURITY $suite-security main"
start=$(date +%s)
echo "== lab: building root filesystem $name ($arch $suite) in $dir" >&2
# no fsync per file, no documentation or translations: less I/O, the same system
mmdebstrap --quiet --arch="$arch" --variant=apt --include="$include" "${hooks[@]}" \
  --dpkgopt=force-unsafe-io --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-include=/usr/share/doc/*/copyright' \
  --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/locale/*' --aptopt='Acquire::Languages "none"' \
  "$suite" "$dir.tmp" - <<<"$sources" >&2
mv "$dir.tmp" "$dir"
touch "$dir/.lab-complete"
echo "== lab: $name built in $(( $(date +%s) - start )) s ($(du -sm "$dir" | cut -f1) MB)" >&2
echo "$dir"

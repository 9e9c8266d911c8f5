#!/usr/bin/env bash
# Prepare this (Debian 12, root) machine for the device lab: mmdebstrap, systemd-nspawn, mosquitto,
# and qemu-user >= 10 from bookworm-backports registered with binfmt_misc. Debian 12's own qemu 7.2
# passes the host's x86 /proc/cpuinfo through and the interpreter's CPU probe crashes under it.
# Idempotent; exits non-zero with one line naming what is missing when it cannot prepare the host.
set -euo pipefail
SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
fail() { echo "lab: host: $*" >&2; exit 1; }

qemu_major() { qemu-aarch64-static --version 2>/dev/null | sed -n 's/.*version \([0-9]*\)\..*/\1/p' | head -n 1; }

need=()
command -v mmdebstrap >/dev/null || need+=(mmdebstrap)
command -v systemd-nspawn >/dev/null || need+=(systemd-container)
command -v mosquitto >/dev/null || [ -x /usr/sbin/mosquitto ] || need+=(mosquitto)
command -v update-ca-certificates >/dev/null || need+=(ca-certificates)
if [ ${#need[@]} -gt 0 ] || [ "$(qemu_major || echo 0)" -lt 10 ] 2>/dev/null || [ -z "$(qemu_major)" ]; then
  # shellcheck disable=SC1091
  if [ "$(. /etc/os-release && echo "$VERSION_CODENAME")" = bookworm ] \
     && ! grep -rqs 'bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/; then
    echo "== lab: adding bookworm-backports (qemu-user-static >= 10)"
    printf 'Types: deb\nURIs: http://deb.debian.org/debian\nSuites: bookworm-backports\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
      | $SUDO tee /etc/apt/sources.list.d/bookworm-backports.sources >/dev/null
  fi
  echo "== lab: installing ${need[*]} qemu-user-static (Debian packages)"
  $SUDO apt-get update -qq
  [ ${#need[@]} -eq 0 ] || DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
  # shellcheck disable=SC1091
  if [ "$(. /etc/os-release && echo "$VERSION_CODENAME")" = bookworm ]; then
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq -t bookworm-backports qemu-user-static >/dev/null
  else
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq qemu-user-static >/dev/null
  fi
fi
major=$(qemu_major)
if [ -z "$major" ] || [ "$major" -lt 10 ]; then fail "qemu-aarch64-static is version ${major:-none}; need >= 10 (apt-get install -t bookworm-backports qemu-user-static)"; fi

# binfmt_misc: mounted and aarch64 registered with the F flag (the interpreter is opened now, so it
# works inside chroots and containers that lack it)
if [ ! -e /proc/sys/fs/binfmt_misc/register ]; then
  $SUDO mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc || fail "cannot mount binfmt_misc (a container without it? run the lab on a VM or host)"
fi
conf=/usr/lib/binfmt.d/qemu-aarch64.conf
if [ ! -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ]; then
  [ -f "$conf" ] || fail "$conf is missing (reinstall qemu-user-static)"
  $SUDO sh -c "cat $conf > /proc/sys/fs/binfmt_misc/register" || fail "cannot register qemu-aarch64 with binfmt_misc"
fi
grep -q enabled /proc/sys/fs/binfmt_misc/qemu-aarch64 || echo 1 | $SUDO tee /proc/sys/fs/binfmt_misc/qemu-aarch64 >/dev/null
grep -q 'flags:.*F' /proc/sys/fs/binfmt_misc/qemu-aarch64 || fail "qemu-aarch64 is registered without the F flag: echo -1 > /proc/sys/fs/binfmt_misc/qemu-aarch64, then rerun"
echo "== lab: host ready (qemu $(qemu-aarch64-static --version | head -n 1 | awk '{print $3}'), $(systemd-nspawn --version | head -n 1))"

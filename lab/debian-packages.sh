#!/bin/sh
# The Debian packages the lab and the tests need, installed idempotently (make deps).
#
# The lab runs TCG guests, and QEMU before 9.0 loses some of a TCG guest's
# memory writes during live migration (README, "Supported versions"), so the
# lab needs QEMU >= 9.0 and libvirt >= 10.0: Debian 13 has them (QEMU 10.0,
# libvirt 11.3); on Debian 12 they come from bookworm-backports, which this
# enables. Nothing is installed when everything is there at a recent enough
# version. Exit status 0: all is in place; 1: it could not be put in place.
set -eu

QEMU_MIN=9.0
LIBVIRT_MIN=10.0
# prometheus: promtool checks the metrics and the shipped alert rules; systemd: systemd-analyze checks the units.
BASE="pkg-config busybox-static cpio iproute2 procps util-linux nftables prometheus systemd zsh"
VIRT="qemu-system-x86 qemu-utils libvirt-daemon-system libvirt-daemon-driver-qemu libvirt-clients libvirt-dev"
# libvirt's lock manager: virtlockd and the lockd plugin its QEMU driver loads (lock_manager = "lockd"),
# so a second copy of a running guest is refused on another host (docs/operations.md, "Never twice").
VIRT="$VIRT libvirt-daemon-lock libvirt-daemon-plugin-lockd"
BACKPORTS_LIST=/etc/apt/sources.list.d/ferry-bookworm-backports.list

say() { echo "debian-packages: $*"; }
fail() { echo "debian-packages: $*" >&2; exit 1; }

installed_version() {
    dpkg-query -W -f='${Status} ${Version}\n' "$1" 2>/dev/null | sed -n 's/^install ok installed //p'
}

at_least() {  # package, upstream version
    v=$(installed_version "$1")
    [ -n "$v" ] && dpkg --compare-versions "$(echo "$v" | sed 's/^[0-9]*://')" ge "$2"
}

. /etc/os-release
case "${VERSION_CODENAME:-}" in
    bookworm) SUITE=bookworm-backports ;;
    trixie | forky | sid) SUITE="" ;;
    *) fail "Debian 12 (bookworm) or 13 (trixie) is needed, this is ${PRETTY_NAME:-unknown}" ;;
esac
# The network driver is a package of its own from libvirt 10 on (in Debian 12's 9.0 it is part of libvirt-daemon).
VIRT="$VIRT libvirt-daemon-driver-network"

missing=""
for p in $BASE $VIRT; do
    [ -n "$(installed_version "$p")" ] || missing="$missing $p"
done
if [ -z "$missing" ] && at_least qemu-system-x86 "$QEMU_MIN" && at_least libvirt-daemon-system "$LIBVIRT_MIN"; then
    exit 0
fi
[ "$(id -u)" = 0 ] || fail "need root to install:$missing (QEMU >= $QEMU_MIN, libvirt >= $LIBVIRT_MIN)"

if [ -n "$SUITE" ] && ! grep -rqs "^deb .*debian.* $SUITE " /etc/apt/sources.list /etc/apt/sources.list.d/ \
    && ! grep -rqs "Suites:.*$SUITE" /etc/apt/sources.list.d/; then
    say "enabling $SUITE for QEMU >= $QEMU_MIN and libvirt >= $LIBVIRT_MIN"
    echo "deb http://deb.debian.org/debian $SUITE main" > "$BACKPORTS_LIST"
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
say "installing$missing and the virtualisation stack${SUITE:+ from $SUITE}"
apt-get install -y -q --no-install-recommends $BASE
apt-get install -y -q --no-install-recommends ${SUITE:+-t "$SUITE"} $VIRT

at_least qemu-system-x86 "$QEMU_MIN" || fail "QEMU is $(installed_version qemu-system-x86), the lab needs >= $QEMU_MIN"
at_least libvirt-daemon-system "$LIBVIRT_MIN" || fail "libvirt is $(installed_version libvirt-daemon-system), the lab needs >= $LIBVIRT_MIN"
say "QEMU $(installed_version qemu-system-x86), libvirt $(installed_version libvirt-daemon-system)"

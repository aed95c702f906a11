#!/usr/bin/env bash
# The tests drive real third-party NBD clients, the power-cut disk (test/helpers/power_cut.ts)
# runs a FUSE file system with Debian's Python and python3-fusepy, Prometheus scrapes a test
# cluster (promtool checks what it serves), the TLS test makes its certificates with openssl, and
# deploy/ is checked with systemd-analyze and virt-xml-validate (which runs xmllint), and headless
# chromium loads the MDS's status page. Install them
# when missing (as root, with apt-get), or stop with the one command that installs them.
set -euo pipefail

# Without recommends: Prometheus would bring node exporters and their collectors, qemu-utils
# block drivers for curl and iSCSI; the tests use none of them.
PACKAGES="qemu-utils libnbd-bin python3-libnbd fio python3-fusepy prometheus openssl systemd libvirt-clients libxml2-utils chromium"
missing=()
for tool in qemu-img qemu-io nbdinfo nbdcopy fio prometheus promtool openssl systemd-analyze virt-xml-validate xmllint chromium; do
  command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
if command -v fio >/dev/null 2>&1 && ! fio --enghelp=nbd >/dev/null 2>&1; then
  missing+=("fio-nbd-engine")
fi
# Debian's own Python: a pyenv python3 first on PATH does not see Debian's python3-fusepy, nor
# libnbd's binding (the tests drive it as a plain newstyle client).
if ! /usr/bin/python3 -c 'import fusepy' >/dev/null 2>&1; then
  missing+=("python3-fusepy")
fi
if ! /usr/bin/python3 -c 'import nbd' >/dev/null 2>&1; then
  missing+=("python3-libnbd")
fi
[ ${#missing[@]} -eq 0 ] && exit 0

echo "system tools missing for the tests: ${missing[*]}"
if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing: apt-get install -y --no-install-recommends $PACKAGES"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # shellcheck disable=SC2086
  apt-get install -y -qq --no-install-recommends $PACKAGES >/dev/null
  exit 0
fi
echo "run this once, then npm test again:"
echo "  sudo apt-get install -y --no-install-recommends $PACKAGES"
exit 1

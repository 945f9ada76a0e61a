#!/usr/bin/env bash
# apt_install.sh WHO PACKAGE...: install Debian packages that a test target needs
# (scripts/install_browser.sh, scripts/install_slurm.sh), or say how where this cannot:
# not root, or no apt-get. CI runs as root with the package registries.
set -euo pipefail

WHO="$1"; shift
if [ "$(id -u)" -ne 0 ]; then
    echo "$WHO: this is not root: install $* (sudo apt-get install --no-install-recommends $*) and run again" >&2
    exit 1
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "$WHO: there is no apt-get: install $* with this system's package manager" >&2
    exit 1
fi
echo "$WHO: installing Debian's $*:"
echo "+ apt-get update"
apt-get update
echo "+ apt-get install -y --no-install-recommends $*"
DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "$@"

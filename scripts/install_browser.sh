#!/usr/bin/env bash
# Install Debian's chromium for the headless-browser test of the labelling page
# (`make test-browser`). Nothing is done when /usr/bin/chromium is already there.
# CI runs as root with the package registries; elsewhere, ask an administrator or
# install the package yourself (`sudo apt-get install chromium`).
set -euo pipefail

CHROMIUM=/usr/bin/chromium

if [ -x "$CHROMIUM" ]; then
    echo "install_browser: $CHROMIUM is installed ($("$CHROMIUM" --version 2>/dev/null || echo 'version unknown'))"
    exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "install_browser: $CHROMIUM is missing and this is not root: install Debian's chromium" \
         "(sudo apt-get install --no-install-recommends chromium) and run again" >&2
    exit 1
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "install_browser: $CHROMIUM is missing and there is no apt-get: install chromium with this system's" \
         "package manager so that $CHROMIUM exists" >&2
    exit 1
fi
echo "install_browser: $CHROMIUM is missing; installing Debian's chromium:"
echo "+ apt-get update"
apt-get update
echo "+ apt-get install -y --no-install-recommends chromium"
DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends chromium
if [ ! -x "$CHROMIUM" ]; then
    echo "install_browser: the chromium package was installed but $CHROMIUM is still missing" >&2
    exit 1
fi
echo "install_browser: installed $("$CHROMIUM" --version 2>/dev/null || echo "$CHROMIUM")"

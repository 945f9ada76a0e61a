#!/usr/bin/env bash
# Install Debian's chromium for the headless-browser test of the labelling page
# (`make test-browser`). Nothing is done when /usr/bin/chromium is already there.
set -euo pipefail

CHROMIUM=/usr/bin/chromium

if [ -x "$CHROMIUM" ]; then
    echo "install_browser: $CHROMIUM is installed ($("$CHROMIUM" --version 2>/dev/null || echo 'version unknown'))"
    exit 0
fi
echo "install_browser: $CHROMIUM is missing"
bash "$(dirname "${BASH_SOURCE[0]}")/apt_install.sh" install_browser chromium
if [ ! -x "$CHROMIUM" ]; then
    echo "install_browser: the chromium package was installed but $CHROMIUM is still missing" >&2
    exit 1
fi
echo "install_browser: installed $("$CHROMIUM" --version 2>/dev/null || echo "$CHROMIUM")"

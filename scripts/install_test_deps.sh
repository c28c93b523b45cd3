#!/usr/bin/env bash
# System packages the test suite needs beyond `pip install -e '.[test]'`: Debian's Chromium,
# which tests/test_report.py drives headless through Playwright (executable /usr/bin/chromium;
# Playwright's own browser download cannot be used). Safe to run again: it installs only what
# is missing.
set -euo pipefail

if [ -x /usr/bin/chromium ]; then
    exit 0
fi
if [ "$(id -u)" -eq 0 ]; then
    as_root=()
else
    as_root=(sudo)
fi
"${as_root[@]}" apt-get update -qq
"${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium

#!/usr/bin/env bash
# The headless browser of the web demo's browser test (tests/test_web_app_browser.py): Debian's
# Chromium and its ChromeDriver, driven by Selenium. Nothing to do when both are installed. As root
# (CI, a fresh Debian machine) it installs them with apt-get; otherwise it says what to run, and the
# browser test fails with that message.
set -euo pipefail

if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then
    exit 0
fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "Installing Chromium and ChromeDriver for the browser test (apt-get) ..."
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends chromium chromium-driver >/dev/null
    chromium --version
    chromedriver --version
else
    echo "The browser test needs Chromium and ChromeDriver: on Debian or Ubuntu run" \
        "'sudo apt-get install chromium chromium-driver'." >&2
fi

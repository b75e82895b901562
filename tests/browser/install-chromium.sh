#!/usr/bin/env bash
# Test set-up for the browser tests: Debian's Chromium (driven by Playwright from requirements-test.txt, which
# never downloads a browser of its own) and an emoji font so the icon buttons render in screenshots.
# Does nothing when both are already installed.
set -euo pipefail
wanted=()
[ -x /usr/bin/chromium ] || wanted+=(chromium)
[ -e /usr/share/fonts/truetype/noto/NotoColorEmoji.ttf ] || wanted+=(fonts-noto-color-emoji)
[ ${#wanted[@]} -eq 0 ] && exit 0
if ! command -v apt-get >/dev/null; then
    echo "install-chromium.sh: no apt-get here; install Chromium yourself (browser tests will be skipped)" >&2
    exit 0
fi
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
echo "Installing ${wanted[*]} for the browser tests"
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${wanted[@]}" >/dev/null

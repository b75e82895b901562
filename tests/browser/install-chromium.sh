#!/usr/bin/env bash
# Test set-up for the browser tests: Debian's Chromium (driven by Playwright from requirements-test.txt, which
# never downloads a browser of its own) and an emoji font so the icon buttons render in screenshots.
# Installs with apt-get, so it needs root or sudo; does nothing when both are already there.
# CHROMIUM_PATH names a Chromium of your own instead (the browser tests read it too).
set -euo pipefail
wanted=()
[ -x "${CHROMIUM_PATH:-/usr/bin/chromium}" ] || wanted+=(chromium)
[ -e /usr/share/fonts/truetype/noto/NotoColorEmoji.ttf ] || wanted+=(fonts-noto-color-emoji)
[ ${#wanted[@]} -eq 0 ] && exit 0
if ! command -v apt-get >/dev/null; then
    echo "install-chromium.sh: no apt-get here; install Chromium yourself and set CHROMIUM_PATH" \
         "(browser tests will be skipped)" >&2
    exit 0
fi
sudo=()
if [ "$(id -u)" -ne 0 ]; then
    if ! command -v sudo >/dev/null; then
        echo "install-chromium.sh: installing ${wanted[*]} with apt-get needs root, and there is no sudo here." \
             "Run the test command as root, or install them yourself (apt-get install ${wanted[*]})." >&2
        exit 1
    fi
    sudo=(sudo)
    echo "install-chromium.sh: apt-get needs root; using sudo (it may ask for your password)"
fi
echo "Installing ${wanted[*]} for the browser tests"
"${sudo[@]}" apt-get update -qq
"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${wanted[@]}" >/dev/null

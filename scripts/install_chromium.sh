#!/usr/bin/env bash
# Headless Chromium for the browser test (tests/test_app.py), from Debian's packages.
#
#   bash scripts/install_chromium.sh     (or: make browser; .ci/run calls it)
#
# Does nothing when `chromium` is already on PATH. Otherwise installs Debian's `chromium`
# (about 120 MB to download, ~45 s here) with apt-get, as root or through sudo. Nothing is
# fetched at test time: Playwright drives this binary (its own browser download is not used).
# Exits 1 with a message where it cannot install (no apt-get, no root); the browser test
# then skips and says why.
set -euo pipefail

if command -v chromium >/dev/null 2>&1; then
  echo "chromium: $(command -v chromium) ($(chromium --version 2>/dev/null || echo '?'))"
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "install_chromium: no apt-get on this machine; install Chromium yourself (or set" \
    "AVJAX_CHROMIUM=/path/to/chromium); the browser test skips without it" >&2
  exit 1
fi
SUDO=()
if [ "$(id -u)" != 0 ]; then
  if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    SUDO=(sudo -n)
  else
    echo "install_chromium: needs root (or password-less sudo) for apt-get; the browser" \
      "test skips without Chromium" >&2
    exit 1
  fi
fi
export DEBIAN_FRONTEND=noninteractive
start=$(date +%s)
"${SUDO[@]}" apt-get update -qq
"${SUDO[@]}" apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >/dev/null
echo "chromium: $(command -v chromium) ($(chromium --version)), installed in $(($(date +%s) - start)) s"

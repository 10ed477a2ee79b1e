#!/usr/bin/env bash
# What the browser test of the web UI (node/tests/web_ui.rs) needs: Chromium
# from Debian's packages and playwright-core from npm at the version pinned in
# web-tests/package-lock.json (no browser download: it drives the system's).
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v node >/dev/null 2>&1 || missing+=(nodejs)
command -v npm >/dev/null 2>&1 || missing+=(npm)
if [ ${#missing[@]} -gt 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
(cd web-tests && npm ci --no-audit --no-fund --silent)
echo "browser test ready: $(chromium --version 2>/dev/null | head -1), playwright-core $(node -p 'require("./web-tests/node_modules/playwright-core/package.json").version')"

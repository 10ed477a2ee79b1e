#!/usr/bin/env bash
# Regenerates wire/src/generated/node_capnp.rs from schemas/node.capnp.
# Needs Debian's `capnp` compiler (apt-get install capnproto).
set -euo pipefail
cd "$(dirname "$0")/.."
command -v capnp >/dev/null || { echo "install capnproto first (apt-get install capnproto)" >&2; exit 1; }
QPC_REGEN_WIRE=1 cargo test --locked -p quicnprotochat-wire --test schema_drift -- --exact committed_generated_code_matches_schema
echo "regenerated wire/src/generated/node_capnp.rs"

#!/usr/bin/env bash
# Writes a new upgrade-fixture set (node database, two client profiles, wire
# messages) with today's code, under tests/fixtures/<date>-<commit>/. Sets are
# never rewritten: commit the new one beside the old ones; the test
# `upgrade_fixtures` opens them all with the code of every later day.
set -euo pipefail
cd "$(dirname "$0")/.."
commit=$(git rev-parse --short HEAD)
set_name="${1:-$(date -u +%Y-%m-%d)-$commit}"
QPC_FIXTURE_SET="$set_name" QPC_FIXTURE_COMMIT="$commit" \
  cargo test --locked -p quicnprotochat-tests --test upgrade_fixtures -- --ignored --exact write_fixture_set
echo "tests/fixtures/$set_name: check it in"

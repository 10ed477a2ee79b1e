#!/usr/bin/env bash
# Installs mdbook (from crates.io, built here) to build docs/ as a book:
#   scripts/install-mdbook.sh && mdbook build docs    # → target/book/index.html
set -euo pipefail
command -v mdbook >/dev/null 2>&1 || cargo install mdbook --locked --version "^0.5"

#!/usr/bin/env bash
# The image's Python environment (the Dockerfile's builder stage): exactly uv.lock's runtime packages, no dev group,
# rechka itself installed non-editable, into $UV_PROJECT_ENVIRONMENT. `--locked` stops if uv.lock is out of date
# with pyproject.toml instead of resolving anew. Extra arguments go to `uv sync`: the Dockerfile passes
# --no-install-project for its cached dependencies layer; tests/deploy passes --dry-run (the image itself cannot be
# built in CI), which proves the same command installs from the committed lock.
set -euo pipefail
cd "$(dirname "$0")/.."
exec uv sync --locked --no-dev --no-editable "$@"

#!/usr/bin/env bash
# Start the rechka server with its default models (GigaAM v2 CTC, PyanNet segmentation, resemblyzer, Silero VAD).
# Extra arguments go to `python -m server` (see `--help`), e.g. --port 8080 --device cuda.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh
export PATH="$HOME/.local/bin:$PATH"
# Fewer glibc malloc arenas: variable-length tensors fragment many arenas (see docs/benchmarks.md, long session).
export MALLOC_ARENA_MAX="${MALLOC_ARENA_MAX:-2}"
exec uv run --frozen python -m server "$@"

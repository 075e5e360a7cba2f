#!/usr/bin/env bash
# Set up .venv if needed, then run the whole test suite on the CPU. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")"
./setup.sh
set +e
.venv/bin/python -m pytest "$@"
rc=$?
set -e
# pytest exits 5 when it collected nothing: that is a broken suite, never a pass.
if [ "$rc" -eq 5 ]; then echo "run_tests: pytest collected no tests" >&2; exit 1; fi
exit "$rc"

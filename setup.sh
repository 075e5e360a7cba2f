#!/usr/bin/env bash
# Create .venv and install roi-consistency into it (editable, with the test extras).
# torch/torchvision are pinned first so pip takes the wheels already on this machine's disk; set
# TORCH_SPEC to use other versions (e.g. TORCH_SPEC="torch==2.11.0 torchvision==0.26.0" on a GPU box).
# Fast when nothing changed: a stamp records what was installed.
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-"torch==2.14.1 torchvision==0.29.1"}
stamp=.venv/.roi-setup-stamp
want="$(cat pyproject.toml) $TORCH_SPEC"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && .venv/bin/python -c "import roi_consistency, torch" 2>/dev/null; then
  exit 0
fi
[ -x .venv/bin/python ] || "$PY" -m venv .venv
echo "setup: installing $TORCH_SPEC and roi-consistency into .venv (a few minutes the first time)" >&2
.venv/bin/python -m pip install -q --upgrade pip 2>&1 | grep -v '^WARNING: Location' >&2 || true
# shellcheck disable=SC2086
.venv/bin/python -m pip install -q $TORCH_SPEC 2>&1 | grep -v '^WARNING: Location' >&2 || true
.venv/bin/python -m pip install -q -e '.[test]' 2>&1 | grep -v '^WARNING: Location' >&2 || true
.venv/bin/python -c "import roi_consistency, torch, torchvision" \
  || { echo "setup: installation failed; see the pip output above" >&2; exit 1; }
printf '%s' "$want" > "$stamp"

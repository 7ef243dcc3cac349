#!/usr/bin/env bash
# A non-editable install works from any folder: `pip install .` into a fresh venv, then a
# toy search from a temporary folder (configs must come from the installed package data,
# the environment and strategies from searchlab.envs / searchlab.strategies).
# searchlab's dependencies are borrowed from .venv (a path entry, so .venv's editable
# install of searchlab is NOT visible) to keep this to seconds; searchlab itself is built
# and installed from the repository like any user would.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python3 -m venv "$tmp/venv"
site=$("$tmp/venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
deps=$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
echo "$deps" > "$site/zz-searchlab-deps.pth"
"$tmp/venv/bin/python" -m pip install -q --disable-pip-version-check --no-deps "$repo"
cd "$tmp"
"$tmp/venv/bin/python" - <<'PY'
import searchlab, searchlab.config as c, gymnasium, sys
assert "site-packages" in searchlab.__file__, searchlab.__file__
assert "site-packages" in str(c.CONFIG_DIR), c.CONFIG_DIR
assert searchlab.ENV_ID in gymnasium.registry
print("installed:", searchlab.__file__, "configs:", c.CONFIG_DIR)
PY
MLFLOW_DISABLE_TELEMETRY=true "$tmp/venv/bin/searchlab" search task=toy strategy=evolution \
    budget=30 space=small quiet=true out="$tmp/out" run_dir="$tmp/runs" > "$tmp/log" 2>&1 \
    || { cat "$tmp/log"; exit 1; }
test -s "$tmp/out/results.json"
echo "install smoke: ok (a non-editable install ran a toy search from $tmp)"

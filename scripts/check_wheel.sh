#!/usr/bin/env bash
# The installed wheel, as a user gets it: build pixsearch's wheel, install it (not editable) with the default
# dependencies and the demo's into a clean venv, and run scripts/check_wheel.py with that venv's Python, outside the
# checkout: the demo indexes and searches the sample photos, then a server answers the page, its static files, /docs
# and a search. A file the wheel forgot (package data), or a default dependency that pulls torch or CUDA, fails here.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
start=$SECONDS

"$PYTHON" -m venv "$work/venv"
pip=("$work/venv/bin/pip" --disable-pip-version-check)
"${pip[@]}" wheel --quiet --no-deps -w "$work/dist" .
wheel="$(ls "$work"/dist/pixsearch-*.whl)"
"${pip[@]}" install --quiet "$wheel[demo]"
"${pip[@]}" install --quiet --no-deps foolbox==3.3.4
installed=$SECONDS

cp scripts/check_wheel.py "$work/"
(cd "$work" && PIXSEARCH_HOME="$work/home" venv/bin/python check_wheel.py)

echo "wheel $(du -h "$wheel" | cut -f1); clean venv with the default + demo dependencies: $(du -sh "$work/venv" | cut -f1)"
echo "largest packages:"
du -sm "$work"/venv/lib/python3*/site-packages/* | sort -rn | awk 'NR <= 8 {printf "  %5d MB  %s\n", $1, $2}' \
    | sed "s|$work/venv/lib/python3[^/]*/site-packages/||"
echo "wheel check: $((installed - start)) s to build and install, $((SECONDS - installed)) s to run"

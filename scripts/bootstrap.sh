#!/usr/bin/env bash
# Create .venv in the repository root and install attnprobe (editable) with its test extras.
# Idempotent: a second run only re-checks the install.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
python3 -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check -c constraints.txt -e ".[test]"

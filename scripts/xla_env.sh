#!/usr/bin/env bash
# Create (once) the torch_xla environment for the TPU-path CI stage, outside the clone, and print its path.
set -euo pipefail
ENV_DIR="${HUBKIT_XLA_ENV:-$HOME/.cache/hubkit-ci/xla-venv}"
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
STAMP="$ENV_DIR/.requirements.sha256"
WANT="$(sha256sum "$ROOT/requirements-xla.txt" | cut -d' ' -f1)"
if [[ ! -f "$STAMP" || "$(cat "$STAMP")" != "$WANT" ]]; then
    if [[ -e "$ENV_DIR" && ! -f "$STAMP" && -n "$(ls -A "$ENV_DIR" 2>/dev/null)" ]]; then
        echo "xla_env: $ENV_DIR exists and was not made by this script; refusing to replace it" >&2
        exit 1
    fi
    rm -rf "$ENV_DIR"
    python3 -m venv "$ENV_DIR"
    "$ENV_DIR/bin/python" -m pip install --quiet --upgrade pip >&2
    "$ENV_DIR/bin/pip" install --quiet -r "$ROOT/requirements-xla.txt" >&2
    echo "$WANT" > "$STAMP"
fi
echo "$ENV_DIR"

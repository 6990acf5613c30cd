# Sourced by the other scripts: make (once) and activate the project's virtual environment in .venv.
# Installs facesearch editable with its test extras (FACESEARCH_EXTRAS, default "dev"; CI adds "teacher");
# reinstalls when pyproject.toml changed or other extras are asked for.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${FACESEARCH_VENV:-$ROOT/.venv}"
PY="${PYTHON:-python3}"
if [ ! -x "$VENV/bin/python" ]; then
    echo "[env] creating $VENV (first time: about 2 minutes, ~5.7 GB with torch)" >&2
    "$PY" -m venv "$VENV"
fi
EXTRAS="${FACESEARCH_EXTRAS:-dev}"
stamp="$VENV/.facesearch-installed"
if [ ! -f "$stamp" ] || [ "$ROOT/pyproject.toml" -nt "$stamp" ] || [ "$(cat "$stamp")" != "$EXTRAS" ]; then
    echo "[env] installing facesearch[$EXTRAS] and its dependencies into $VENV" >&2
    "$VENV/bin/python" -m pip install --quiet --upgrade pip >/dev/null 2>&1 || true
    "$VENV/bin/python" -m pip install --quiet -e "$ROOT[$EXTRAS]" 2>&1 | grep -v "^WARNING: Location" >&2 || true
    "$VENV/bin/python" -c "import facesearch, torch, torchvision, facenet_pytorch, faiss, sqlalchemy, alembic, typer, sklearn, fastapi, fastapi_offline, uvicorn, playwright" \
        || { echo "[env] installation failed: see pip's output above" >&2; exit 1; }
    echo "$EXTRAS" > "$stamp"
fi
export PATH="$VENV/bin:$PATH"
cd "$ROOT"

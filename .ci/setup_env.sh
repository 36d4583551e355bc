#!/usr/bin/env bash
# Create (or reuse) one test environment under .venvs/NAME and install the package into it.
#   bash .ci/setup_env.sh captum08   -> captum 0.8 + numpy<2 + Insights (flask, flask-compress)
#   bash .ci/setup_env.sh latest     -> newest captum + numpy 2
set -euo pipefail
name=${1:?usage: setup_env.sh captum08|latest}
root=$(cd "$(dirname "$0")/.." && pwd)
venv="$root/.venvs/$name"
python3 -m venv "$venv"
py="$venv/bin/python"
"$py" -m pip install -q --upgrade pip setuptools wheel
# torch + torchvision from the registry: torchvision picks its matching torch (never the local 2.13.0+cpu wheel)
"$py" -m pip install -q --no-cache-dir torch torchvision
case "$name" in
  captum08) "$py" -m pip install -q -e "$root[dev,insights]" "captum==0.8.*" "numpy<2" ;;
  latest)   "$py" -m pip install -q -e "$root[dev,docs,quantus]" "captum>=0.9" "numpy>=2" ;;
  *) echo "unknown environment '$name' (valid: captum08, latest)" >&2; exit 2 ;;
esac
# the ELFA reference implementation, without its TensorFlow dependencies
"$py" -m pip install -q --no-deps elfa==0.0.8
"$py" - <<'PY'
import captum, numpy, torch, torchvision
print(f"env ok: torch {torch.__version__} torchvision {torchvision.__version__} captum {captum.__version__} numpy {numpy.__version__}")
PY

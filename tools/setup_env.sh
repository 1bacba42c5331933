#!/usr/bin/env bash
# One-command environment setup for attn_plugins (idempotent).
#
# Creates ./.venv (Python 3.11), installs the pinned stack and the package in editable mode.
# mmcv 2.1.0 has no wheel for torch 2.14, so it is built once from the sdist with compiled
# ops and cached in $ATTN_PLUGINS_CACHE (default ~/.cache/attn_plugins); later setups reuse it.
# A venv whose stamp matches this script and pyproject.toml is left untouched.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
VENV="$ROOT/.venv"
CACHE="${ATTN_PLUGINS_CACHE:-$HOME/.cache/attn_plugins}"
PY="${PYTHON:-python3.11}"
STAMP="$VENV/.attn_plugins_setup"
want=$(cat tools/setup_env.sh pyproject.toml | sha256sum | cut -c1-16)

if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ]; then
  echo "[setup] .venv is complete (stamp $want): nothing to do"
  exit 0
fi

log() { echo "[setup $(date +%H:%M:%S)] $*"; }
command -v "$PY" >/dev/null || { echo "[setup] $PY not found: Python 3.11 is required" >&2; exit 1; }
[ -x "$VENV/bin/python" ] || { log "creating $VENV"; "$PY" -m venv "$VENV"; }
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check)

log "base tooling (setuptools>=77,<81: torch needs >=77; mmcv/mmengine import pkg_resources)"
"${PIP[@]}" install -q "pip>=24" "setuptools>=77,<81" wheel ninja
log "torch 2.14.1 + torchvision 0.29.1 (local wheels)"
"${PIP[@]}" install -q torch==2.14.1 torchvision==0.29.1
log "mmengine, timm and friends"
"${PIP[@]}" install -q mmengine==0.10.7 "timm>=1.0,<1.1" "opencv-python<5" ftfy regex pyyaml \
  "numpy>=1.26,<2.3" pytest hypothesis onnx onnxruntime onnxscript matplotlib

# ---- mmcv 2.1.0 with compiled ops, built once and cached ----
cuda=$("$VENV/bin/python" -c "import torch; print(int(torch.cuda.is_available()))")
tag="torch2.14.1-$([ "$cuda" = 1 ] && echo cuda || echo cpu)"
wheel_dir="$CACHE/mmcv-2.1.0-$tag"
if ! "$VENV/bin/python" -c "import mmcv, mmcv.ops; assert mmcv.__version__ == '2.1.0'" 2>/dev/null; then
  if ! ls "$wheel_dir"/mmcv-2.1.0-*.whl >/dev/null 2>&1; then
    log "building mmcv 2.1.0 with ops ($tag); about 12 min on 2 CPU cores (longer with CUDA)"
    src=$(mktemp -d)
    "${PIP[@]}" download -q --no-deps --no-binary :all: --no-build-isolation -d "$src" mmcv==2.1.0
    tar -xzf "$src"/mmcv-2.1.0.tar.gz -C "$src"
    # torch 2.14 headers require C++20
    sed -i -E 's/-std=c\+\+1[47]/-std=c++20/g' "$src/mmcv-2.1.0/setup.py"
    mkdir -p "$wheel_dir"
    (cd "$src/mmcv-2.1.0" && MMCV_WITH_OPS=1 FORCE_CUDA="$cuda" MAX_JOBS="${MAX_JOBS:-$(nproc)}" \
      "${PIP[@]}" wheel -q --no-deps --no-build-isolation -w "$wheel_dir" .)
    rm -rf "$src"
  else
    log "reusing cached mmcv wheel in $wheel_dir"
  fi
  "${PIP[@]}" install -q --no-deps "$wheel_dir"/mmcv-2.1.0-*.whl
  "${PIP[@]}" install -q addict packaging pyyaml yapf  # mmcv runtime deps
fi

log "mmdet 3.3.0, mmsegmentation 1.2.2"
"${PIP[@]}" install -q mmdet==3.3.0 mmsegmentation==1.2.2 pycocotools shapely scipy terminaltables prettytable
log "mmaction2 1.2.0 (video) + einops, decord, importlib_metadata<9 (9+ needs lazy_importer); h5py (gaze data)"
"${PIP[@]}" install -q --no-deps mmaction2==1.2.0
"${PIP[@]}" install -q einops decord "importlib_metadata<9" h5py
# mmaction2 1.2.0's PyPI package lacks mmaction/models/localizers/drn, which its
# localizers/__init__.py imports: install a placeholder that raises a clear error if DRN is built.
drn_dir=$("$VENV/bin/python" -c "import importlib.util, os; print(os.path.join(os.path.dirname(importlib.util.find_spec('mmaction').origin), 'models', 'localizers', 'drn'))")
if [ ! -f "$drn_dir/drn.py" ] || grep -q "attn_plugins" "$drn_dir/drn.py"; then
  mkdir -p "$drn_dir" && cp tools/mmaction_drn/__init__.py tools/mmaction_drn/drn.py "$drn_dir/"
fi
log "attn_plugins (editable)"
"${PIP[@]}" install -q --no-deps --no-build-isolation -e .
"$VENV/bin/python" -c "import mmcv.ops, mmdet, mmseg, mmaction.models, h5py, timm, attn_plugins" \
  || { echo "[setup] import check failed" >&2; exit 1; }
echo "$want" > "$STAMP"
log "done: $VENV"

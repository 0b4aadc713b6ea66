#!/usr/bin/env bash
# Fetches the ONNX backend node tests (model + TensorProto inputs/outputs) from the pinned
# onnx wheel on PyPI into target/onnx-node-tests. Idempotent; needs python3 with pip.
set -euo pipefail
ONNX_VERSION=1.20.0
root=$(cd "$(dirname "$0")/.." && pwd)
dest="$root/target/onnx-node-tests"
stamp="$dest/.onnx-$ONNX_VERSION"
[ -f "$stamp" ] && exit 0
wheels="$root/target/wheels"
mkdir -p "$wheels"
python3 -m pip download --quiet --no-deps --only-binary=:all: "onnx==$ONNX_VERSION" -d "$wheels"
whl=$(ls "$wheels"/onnx-"$ONNX_VERSION"-*.whl | head -n 1)
rm -rf "$dest.tmp"
python3 - "$whl" "$dest.tmp" <<'PY'
import sys, zipfile
whl, out = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(whl) as z:
    names = [n for n in z.namelist() if n.startswith("onnx/backend/test/data/node/")]
    z.extractall(out, names)
print(f"extracted {len(names)} files")
PY
rm -rf "$dest"
mv "$dest.tmp" "$dest"
touch "$stamp"

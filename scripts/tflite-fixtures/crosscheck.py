#!/usr/bin/env python3
"""Cross-checks Kiln's evaluator against LiteRT on float TFLite models, e.g. the one-builtin
models tests/tflite_ops.rs leaves in $TMPDIR/kiln-tflite-ops-<pid>/*.bin:

    python3 scripts/tflite-fixtures/crosscheck.py /tmp/kiln-tflite-ops-<pid>

Feeds each model the same standard-normal inputs in LiteRT (reference kernels) and in
`kiln eval` (target/release/kiln), and prints the largest difference relative to each
output's range. A development aid: the tests compare against loops written from the
operator definitions, this checks those readings against TFLite itself.
"""
import glob
import os
import subprocess
import sys

import numpy as np
from ai_edge_litert.interpreter import Interpreter, OpResolverType

kiln = os.path.join(os.path.dirname(__file__), "..", "..", "target", "release", "kiln")
folder = sys.argv[1]
for path in sorted(glob.glob(os.path.join(folder, "*.bin")) + glob.glob(os.path.join(folder, "*.tflite"))):
    it = Interpreter(model_path=path, experimental_op_resolver_type=OpResolverType.BUILTIN_REF)
    it.allocate_tensors()
    rng = np.random.default_rng(1)
    args = []
    for i, d in enumerate(it.get_input_details()):
        x = rng.standard_normal(d["shape"]).astype(np.float32)
        it.set_tensor(d["index"], x)
        np.save(os.path.join(folder, f"in{i}.npy"), x)
        args += ["--input", os.path.join(folder, f"in{i}.npy")]
    it.invoke()
    outs = [it.get_tensor(o["index"]) for o in it.get_output_details()]
    for i in range(len(outs)):
        args += ["--output", os.path.join(folder, f"out{i}.npy")]
    r = subprocess.run([kiln, "eval", path] + args, capture_output=True, text=True)
    name = os.path.basename(path)
    if r.returncode:
        print(f"{name}: kiln failed: {r.stderr.strip()[-300:]}")
        continue
    worst = max(
        float(np.abs(np.load(os.path.join(folder, f"out{i}.npy")) - o).max() / max(np.abs(o).max(), 1e-6))
        for i, o in enumerate(outs)
    )
    print(f"{name}: {worst:.2e} of the output range from LiteRT")

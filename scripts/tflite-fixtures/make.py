#!/usr/bin/env python3
"""TFLite's reference outputs for Kiln's int8 builtin fixtures (tests/tflite_int8.rs).

For each tests/tflite_int8/NAME.tflite, runs LiteRT with its reference kernels
(BUILTIN_REF, the arithmetic TFLite Micro reproduces) on NAME.in0.npy, NAME.in1.npy, ...
and writes NAME.out.npy. Regenerate the models and inputs first:

    KILN_WRITE_TFLITE_FIXTURES=1 cargo test -p kiln-tests --test tflite_int8
    python3 scripts/tflite-fixtures/make.py      # needs ai-edge-litert (tested with 2.3.0)
"""
import glob
import os

import numpy as np
from ai_edge_litert.interpreter import Interpreter, OpResolverType

root = os.path.join(os.path.dirname(__file__), "..", "..", "tests", "tflite_int8")
for path in sorted(glob.glob(os.path.join(root, "*.tflite"))):
    name = path[: -len(".tflite")]
    it = Interpreter(model_path=path, experimental_op_resolver_type=OpResolverType.BUILTIN_REF)
    it.allocate_tensors()
    for i, d in enumerate(it.get_input_details()):
        it.set_tensor(d["index"], np.load(f"{name}.in{i}.npy"))
    it.invoke()
    out = it.get_tensor(it.get_output_details()[0]["index"])
    np.save(f"{name}.out.npy", out)
    print(os.path.basename(name), out.shape, out.dtype)

#!/usr/bin/env python3
"""ONNX Runtime's own int8 figures for a model folder made by train.py, for comparison with
Kiln: quantize_static (QDQ, per-channel int8 weights, int8 activations, min-max on the
calib/ samples), then on the ref/ inputs plus up to 50 calib/ inputs the max and mean
absolute difference from the float model, and the int8 accuracy on eval/.

    venv/bin/python scripts/train-digits/ort_int8.py tests/models/digits_cnn
"""
import os
import sys
import tempfile

import numpy as np
import onnxruntime as ort
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

d = sys.argv[1]
model = os.path.join(d, "model.onnx")
calib = np.load(os.path.join(d, "calib", "input_0.npy"))
name = ort.InferenceSession(model).get_inputs()[0].name


class Reader(CalibrationDataReader):
    def __init__(self):
        self.it = iter(calib[:, None])

    def get_next(self):
        x = next(self.it, None)
        return None if x is None else {name: x}


with tempfile.TemporaryDirectory() as tmp:
    q = os.path.join(tmp, "int8.onnx")
    quantize_static(model, q, Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QInt8, weight_type=QuantType.QInt8)
    fs, qs = ort.InferenceSession(model), ort.InferenceSession(q)
    run = lambda s, x: s.run(None, {name: x})[0]
    inputs = []
    k = 0
    while os.path.isdir(os.path.join(d, "ref", f"test_data_set_{k}")):
        inputs.append(np.load(os.path.join(d, "ref", f"test_data_set_{k}", "input_0.npy")))
        k += 1
    inputs += [x[None] for x in calib[:50]]
    diffs = np.concatenate([np.abs(run(qs, x) - run(fs, x)).ravel() for x in inputs])
    ev = np.load(os.path.join(d, "eval", "input_0.npy"))
    labels = np.load(os.path.join(d, "eval", "labels.npy"))
    acc_f = np.mean([run(fs, x[None]).argmax() == l for x, l in zip(ev, labels)])
    acc_q = np.mean([run(qs, x[None]).argmax() == l for x, l in zip(ev, labels)])
print(f"| ORT quantize_static QDQ, all quantisable ops | - | max abs {diffs.max():.3g}, mean abs {diffs.mean():.3g}, "
      f"accuracy {acc_q:.4f} (float {acc_f:.4f}) |")

#!/usr/bin/env python3
"""Quantized copies of repo models made by ONNX Runtime, with ONNX Runtime's outputs, for
Kiln's QDQ/QOperator import tests. For each model folder given:

    <model>/ort/qdq_s8.onnx   quantize_static, QDQ, int8 activations, int8 weights per channel
    <model>/ort/qdq_u8.onnx   quantize_static, QDQ, uint8 activations, int8 weights per channel
    <model>/ort/qop_u8.onnx   quantize_static, QOperator, uint8 activations, int8 weights per channel
    <model>/ort/qdq_s16.onnx  (KWS only) quantize_static, QDQ, int16 symmetric activations,
                              int8 weights per channel (ONNX Runtime writes these Q/DQ in its
                              com.microsoft domain)
    <model>/ort/nbits4.onnx   (models with MatMul) MatMulNBitsQuantizer, QOperator: com.microsoft
                              MatMulNBits, 4-bit asymmetric weights in blocks of 32 along K
    <model>/ort/qdq_block4.onnx  the same quantizer in QDQ form: blocked int4 DequantizeLinear
                              (opset 21), symmetric
    <model>/ort/qdq_s8_block32.onnx  (models with MatMul) qdq_s8 with each 2-D weight re-quantized
                              int8 symmetric in blocks of 32 along K (blocked DequantizeLinear,
                              opset 21): int8 activations with blocked weights
    <model>/ort/dyn.onnx      quantize_dynamic (int8 weights; uint8 where the model has Conv, as
                              ONNX Runtime's CPU ConvInteger takes only uint8 weights)
    <model>/ort/<variant>_out_<k>.npy   ONNX Runtime's (CPU) output 0 on ref/test_data_set_<k>

Calibration: min-max on up to 64 samples of calib/input_0.npy (single-input models).
Pinned versions in requirements.txt; run from the repo root:

    python3 -m venv venv && venv/bin/pip install -r scripts/qdq-fixtures/requirements.txt
    venv/bin/python scripts/qdq-fixtures/make.py tests/models/digits_cnn
"""
import os
import sys

import numpy as np
import onnx
import onnxruntime as ort
from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat,
                                      QuantType, quantize_dynamic, quantize_static)
from onnxruntime.quantization.matmul_nbits_quantizer import (DefaultWeightOnlyQuantConfig,
                                                              MatMulNBitsQuantizer)
from onnxruntime.quantization.shape_inference import quant_pre_process

VARIANTS = {
    "qdq_s8": (QuantFormat.QDQ, QuantType.QInt8),
    "qdq_u8": (QuantFormat.QDQ, QuantType.QUInt8),
    "qop_u8": (QuantFormat.QOperator, QuantType.QUInt8),
}


def blocked_copy(src, dst, block):
    """`src` with every per-column int8 DequantizeLinear of a 2-D weight [K, N] replaced by a
    symmetric int8 one with a scale per `block` rows of K and column."""
    m = onnx.load(src)
    inits = {i.name: i for i in m.graph.initializer}
    for n in m.graph.node:
        if n.op_type != "DequantizeLinear" or n.input[0] not in inits:
            continue
        q = onnx.numpy_helper.to_array(inits[n.input[0]])
        axis = next((a.i for a in n.attribute if a.name == "axis"), 1)
        if q.ndim != 2 or axis != 1:
            continue
        s = onnx.numpy_helper.to_array(inits[n.input[1]])
        w = q.astype(np.float32) * s.astype(np.float32)
        k, cols = w.shape
        nb = (k + block - 1) // block
        sb = np.zeros((nb, cols), np.float32)
        for b in range(nb):
            sb[b] = np.maximum(np.abs(w[b * block:(b + 1) * block]).max(axis=0), 1e-8) / 127.0
        full = np.repeat(sb, block, axis=0)[:k]
        qb = np.clip(np.round(w / full), -127, 127).astype(np.int8)
        for name, arr in [(n.input[0], qb), (n.input[1], sb), (n.input[2], np.zeros((nb, cols), np.int8))]:
            inits[name].CopyFrom(onnx.numpy_helper.from_array(arr, name))
        del n.attribute[:]
        n.attribute.extend([onnx.helper.make_attribute("axis", 0), onnx.helper.make_attribute("block_size", block)])
    for o in m.opset_import:
        if o.domain in ("", "ai.onnx"):
            o.version = max(o.version, 21)
    onnx.save(m, dst)


def main(d):
    model = os.path.join(d, "model.onnx")
    out = os.path.join(d, "ort")
    os.makedirs(out, exist_ok=True)
    calib = np.load(os.path.join(d, "calib", "input_0.npy"))[:64]
    sess = ort.InferenceSession(model)
    inp = sess.get_inputs()[0]
    shape = [1] + list(calib.shape[1:])
    pre = os.path.join(out, "pre.onnx")
    # fixes the symbolic batch so the quantizer sees static shapes
    quant_pre_process(model, pre, skip_optimization=False, skip_onnx_shape=False, skip_symbolic_shape=False)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter(calib)

        def get_next(self):
            x = next(self.it, None)
            return None if x is None else {inp.name: x.reshape(shape).astype(np.float32)}

    refs = []
    k = 0
    while os.path.isdir(os.path.join(d, "ref", f"test_data_set_{k}")):
        refs.append(np.load(os.path.join(d, "ref", f"test_data_set_{k}", "input_0.npy")))
        k += 1
    has_conv = any(n.op_type == "Conv" for n in onnx.load(pre).graph.node)
    extra = [("qdq_s16", (QuantFormat.QDQ, QuantType.QInt16))] if d.rstrip("/").endswith("kws_dscnn") else []
    for name, (fmt, act) in list(VARIANTS.items()) + extra + [("dyn", (None, None))]:
        path = os.path.join(out, f"{name}.onnx")
        if act == QuantType.QInt16:
            quantize_static(pre, path, Reader(), quant_format=fmt, per_channel=True,
                            activation_type=act, weight_type=QuantType.QInt8,
                            calibrate_method=CalibrationMethod.MinMax,
                            extra_options={"ActivationSymmetric": True})
        elif fmt is None:
            quantize_dynamic(pre, path, weight_type=QuantType.QUInt8 if has_conv else QuantType.QInt8)
        else:
            quantize_static(pre, path, Reader(), quant_format=fmt, per_channel=True,
                            activation_type=act, weight_type=QuantType.QInt8,
                            calibrate_method=CalibrationMethod.MinMax)
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        s = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
        for k, x in enumerate(refs):
            y = s.run(None, {inp.name: x.astype(np.float32)})[0]
            np.save(os.path.join(out, f"{name}_out_{k}.npy"), y)
        print(f"{path}: {os.path.getsize(path)} bytes")
    if os.path.exists(os.path.join(out, "qdq_s8.onnx")) and any(
            n.op_type == "MatMul" for n in onnx.load(model).graph.node):
        path = os.path.join(out, "qdq_s8_block32.onnx")
        blocked_copy(os.path.join(out, "qdq_s8.onnx"), path, 32)
        # unoptimized: ONNX Runtime's QGemm fusion takes no blocked zero points
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        s = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
        for k, x in enumerate(refs):
            y = s.run(None, {inp.name: x.astype(np.float32)})[0]
            np.save(os.path.join(out, f"qdq_s8_block32_out_{k}.npy"), y)
        print(f"{path}: {os.path.getsize(path)} bytes")
    # on the model as given: the pre-processed one has its MatMul+Add fused into Gemm
    if any(n.op_type == "MatMul" for n in onnx.load(model).graph.node):
        for name, fmt, sym in [("nbits4", QuantFormat.QOperator, False), ("qdq_block4", QuantFormat.QDQ, True)]:
            path = os.path.join(out, f"{name}.onnx")
            cfg = DefaultWeightOnlyQuantConfig(block_size=32, is_symmetric=sym, quant_format=fmt)
            q = MatMulNBitsQuantizer(onnx.load(model), algo_config=cfg)
            q.process()
            q.model.save_model_to_file(path)
            s = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
            for k, x in enumerate(refs):
                y = s.run(None, {inp.name: x.astype(np.float32)})[0]
                np.save(os.path.join(out, f"{name}_out_{k}.npy"), y)
            print(f"{path}: {os.path.getsize(path)} bytes")
    os.remove(pre)


if __name__ == "__main__":
    for d in sys.argv[1:]:
        main(d)

#!/usr/bin/env python3
"""Quantization-aware training of the digits CNN (tests/models/digits_cnn) and export as a
QDQ ONNX model, for Kiln's QAT import test. Plain numpy like train.py, fixed seed.

    venv/bin/python scripts/train-digits/qat.py scripts/train-digits/data tests/models/digits_cnn [4]

Starts from the float model's weights (DIR/model.onnx) and fine-tunes with fake
quantization in the forward pass and straight-through gradients:
- input: int8 with scale 1/255, zero point -128 (pixels scaled to [0, 1]);
- weights: int8 symmetric per output channel (scale max|w| / 127), or with a last argument
  `4`, 4-bit (scale max|w| / 7) exported as ONNX INT4 tensors (opset 21);
- activations (ReLU output, logits): int8 asymmetric per tensor from ranges tracked by an
  exponential moving average during training;
- biases: int32 at input scale x weight scale.
Writes DIR/qat/model.onnx (DIR/qat4/ for 4-bit weights; QuantizeLinear/DequantizeLinear
around every quantized value, integer weights and biases behind DequantizeLinear) and
ACCURACY beside it (the held-out accuracy of the fake-quantized network, and ONNX Runtime's
on the exported model).
"""
import os
import sys

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

data_dir, model_dir = sys.argv[1], sys.argv[2]
WBITS = int(sys.argv[3]) if len(sys.argv) > 3 else 8
QMAX = (1 << (WBITS - 1)) - 1
images = np.load(os.path.join(data_dir, "images_uint8.npy")).astype(np.float32) / 16.0
labels = np.load(os.path.join(data_dir, "labels.npy")).astype(np.int64)
rng = np.random.default_rng(0)
perm = rng.permutation(len(labels))
test_idx, train_idx = perm[:360], perm[360:]  # the split of train.py
x_all = images[:, None, :, :]

init = {t.name: numpy_helper.to_array(t) for t in onnx.load(os.path.join(model_dir, "model.onnx")).graph.initializer}
params = [init["w1"].copy(), init["b1"].copy(), init["w2"].copy(), init["b2"].copy()]


def act_params(lo, hi):
    """int8 asymmetric scale and zero point covering [lo, hi] and 0 (as Kiln's calibration)."""
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    s = np.float32((hi - lo) / 255.0) if hi > lo else np.float32(1e-6)
    zp = int(np.clip(np.round(-128 - lo / s), -128, 127))
    return s, zp


def fq(x, s, zp):
    """Fake-quantizes to int8 with (s, zp), rounding half to even as QuantizeLinear does."""
    q = np.clip(np.round(x / s) + zp, -128, 127)
    return ((q - zp) * s).astype(np.float32)


def weight_scales(w):
    a = np.abs(w.reshape(w.shape[0], -1)).max(1)
    return np.where(a > 0, a / QMAX, 1.0).astype(np.float32)


def fq_weight(w):
    s = weight_scales(w).reshape((-1,) + (1,) * (w.ndim - 1))
    return (np.clip(np.round(w / s), -QMAX, QMAX) * s).astype(np.float32)


def patches(x):
    n = x.shape[0]
    p = np.pad(x[:, 0], ((0, 0), (1, 1), (1, 1)))
    cols = np.empty((n, 8, 8, 9), np.float32)
    for ky in range(3):
        for kx in range(3):
            cols[:, :, :, ky * 3 + kx] = p[:, ky:ky + 8, kx:kx + 8]
    return cols.reshape(n, 64, 9)


X_S, X_ZP = np.float32(1 / 255), -128
ranges = {"r": [0.0, 1.0], "l": [-1.0, 1.0]}


def forward(x, params, train):
    w1, b1, w2, b2 = params
    sw1, sw2 = weight_scales(w1), weight_scales(w2)
    xq = fq(x, X_S, X_ZP)
    cols = patches(xq)
    w1q = fq_weight(w1)
    b1q = (np.round(b1 / (X_S * sw1)) * (X_S * sw1)).astype(np.float32)
    conv = cols @ w1q.reshape(8, 9).T + b1q
    conv = conv.transpose(0, 2, 1).reshape(-1, 8, 8, 8)
    relu = np.maximum(conv, 0)
    if train:
        ranges["r"][1] = 0.9 * ranges["r"][1] + 0.1 * float(relu.max())
    sr, zr = act_params(0.0, ranges["r"][1])
    rq = fq(relu, sr, zr)
    r = rq.reshape(-1, 8, 4, 2, 4, 2)
    pool = r.max(axis=(3, 5))
    flat = pool.reshape(-1, 128)
    w2q = fq_weight(w2)
    b2q = (np.round(b2 / (sr * sw2)) * (sr * sw2)).astype(np.float32)
    logits = flat @ w2q.T + b2q
    if train:
        ranges["l"][0] = 0.9 * ranges["l"][0] + 0.1 * float(logits.min())
        ranges["l"][1] = 0.9 * ranges["l"][1] + 0.1 * float(logits.max())
    sl, zl = act_params(*ranges["l"])
    lq = fq(logits, sl, zl)
    z = lq - lq.max(axis=1, keepdims=True)
    e = np.exp(z)
    prob = e / e.sum(axis=1, keepdims=True)
    return prob, (cols, conv, relu, r, pool, flat, w1q, w2q)


# ranges from the float model before fine-tuning
_, (_, conv, relu, _, _, _, _, _) = forward(x_all[train_idx], params, False)
ranges["r"][1] = float(relu.max())
p0, _ = forward(x_all[train_idx], params, False)
m = [np.zeros_like(p) for p in params]
v = [np.zeros_like(p) for p in params]
lr, step = 0.0005, 0
for epoch in range(15):
    order = rng.permutation(train_idx)
    for i in range(0, len(order), 32):
        idx = order[i:i + 32]
        x, y = x_all[idx], labels[idx]
        prob, (cols, conv, relu, r, pool, flat, w1q, w2q) = forward(x, params, True)
        n = len(idx)
        dlogits = prob.copy()
        dlogits[np.arange(n), y] -= 1
        dlogits /= n
        # straight-through: the fake quantizers pass gradients unchanged
        dw2 = dlogits.T @ flat
        db2 = dlogits.sum(0)
        dflat = dlogits @ w2q
        dpool = dflat.reshape(-1, 8, 4, 1, 4, 1)
        mask = r == pool.reshape(-1, 8, 4, 1, 4, 1)
        drelu = (mask * dpool).reshape(-1, 8, 8, 8)
        dconv = drelu * (conv > 0)
        dc = dconv.reshape(-1, 8, 64).transpose(0, 2, 1)
        dw1 = np.einsum("npk,npc->kc", dc, cols).reshape(8, 1, 3, 3)
        db1 = dc.sum((0, 1))
        step += 1
        for j, (p, g) in enumerate(zip(params, [dw1, db1, dw2, db2])):
            m[j] = 0.9 * m[j] + 0.1 * g
            v[j] = 0.999 * v[j] + 0.001 * g * g
            mh = m[j] / (1 - 0.9**step)
            vh = v[j] / (1 - 0.999**step)
            params[j] = (p - lr * mh / (np.sqrt(vh) + 1e-8)).astype(np.float32)

prob, _ = forward(x_all[test_idx], params, False)
acc_fq = (prob.argmax(1) == labels[test_idx]).mean()
print(f"QAT fake-quantized test accuracy: {acc_fq:.4f}")

# ---- export as QDQ ----
w1, b1, w2, b2 = params
sw1, sw2 = weight_scales(w1), weight_scales(w2)
sr, zr = act_params(0.0, ranges["r"][1])
sl, zl = act_params(*ranges["l"])
w1i = np.clip(np.round(w1 / sw1.reshape(-1, 1, 1, 1)), -QMAX, QMAX).astype(np.int8)
w2i = np.clip(np.round(w2 / sw2.reshape(-1, 1)), -QMAX, QMAX).astype(np.int8)
sb1, sb2 = (X_S * sw1).astype(np.float32), (sr * sw2).astype(np.float32)
b1i = np.round(b1 / sb1).astype(np.int32)
b2i = np.round(b2 / sb2).astype(np.int32)
f32 = lambda v: np.array(v, np.float32)
i8 = lambda v: np.array(v, np.int8)
def weight(a, n):
    """int8, or ONNX INT4 (two values to a byte) for 4-bit weights."""
    if WBITS == 8:
        return numpy_helper.from_array(a, n)
    return helper.make_tensor(n, TensorProto.INT4, a.shape, a.flatten().tolist())


inits = [weight(w1i, "w1_q"), weight(np.zeros(8, np.int8), "w1_zp"), weight(w2i, "w2_q"),
         weight(np.zeros(10, np.int8), "w2_zp")] + [
    numpy_helper.from_array(a, n)
    for a, n in [
        (f32(X_S), "x_s"), (i8(X_ZP), "x_zp"), (f32(sr), "r_s"), (i8(zr), "r_zp"), (f32(sl), "l_s"), (i8(zl), "l_zp"),
        (sw1, "w1_s"), (b1i, "b1_q"), (sb1, "b1_s"), (np.zeros(8, np.int32), "b1_zp"),
        (sw2, "w2_s"), (b2i, "b2_q"), (sb2, "b2_s"), (np.zeros(10, np.int32), "b2_zp"),
    ]
]
Q = lambda i, o, s, z: helper.make_node("QuantizeLinear", [i, s, z], [o], name=o)
DQ = lambda i, o, s, z, **kw: helper.make_node("DequantizeLinear", [i, s, z], [o], name=o, **kw)
nodes = [
    Q("x", "x_q", "x_s", "x_zp"), DQ("x_q", "x_d", "x_s", "x_zp"),
    DQ("w1_q", "w1", "w1_s", "w1_zp", axis=0), DQ("b1_q", "b1", "b1_s", "b1_zp", axis=0),
    helper.make_node("Conv", ["x_d", "w1", "b1"], ["c"], name="conv", pads=[1, 1, 1, 1], kernel_shape=[3, 3]),
    helper.make_node("Relu", ["c"], ["r"], name="relu"),
    Q("r", "r_q", "r_s", "r_zp"), DQ("r_q", "r_d", "r_s", "r_zp"),
    helper.make_node("MaxPool", ["r_d"], ["p"], name="pool", kernel_shape=[2, 2], strides=[2, 2]),
    Q("p", "p_q", "r_s", "r_zp"), DQ("p_q", "p_d", "r_s", "r_zp"),
    helper.make_node("Flatten", ["p_d"], ["f"], name="flatten"),
    DQ("w2_q", "w2", "w2_s", "w2_zp", axis=0), DQ("b2_q", "b2", "b2_s", "b2_zp", axis=0),
    helper.make_node("Gemm", ["f", "w2", "b2"], ["l"], name="dense", transB=1),
    Q("l", "l_q", "l_s", "l_zp"), DQ("l_q", "l_d", "l_s", "l_zp"),
    helper.make_node("Softmax", ["l_d"], ["y"], name="softmax", axis=1),
]
graph = helper.make_graph(
    nodes,
    "digits_cnn_qat",
    [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 8, 8])],
    [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])],
    inits,
)
opset = 13 if WBITS == 8 else 21  # INT4 tensors need opset 21
model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="kiln train-digits qat")
model.ir_version = 8 if WBITS == 8 else 10
onnx.checker.check_model(model)
out = os.path.join(model_dir, "qat" if WBITS == 8 else f"qat{WBITS}")
os.makedirs(out, exist_ok=True)
path = os.path.join(out, "model.onnx")
onnx.save(model, path)
s = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
acc_ort = np.mean([s.run(None, {"x": x_all[i:i + 1]})[0].argmax() == labels[i] for i in test_idx])
print(f"ONNX Runtime on the exported QDQ model: {acc_ort:.4f}")
with open(os.path.join(out, "ACCURACY"), "w") as f:
    f.write(f"fake-quantized {acc_fq:.6f}\nonnxruntime {acc_ort:.6f}\n")

#!/usr/bin/env python3
"""Trains the small digits CNN that Kiln's int8 tests run (tests/models/digits_cnn) and
exports it to ONNX. Plain numpy (forward and backward written out), a fixed seed, so the
same versions (requirements.txt) give the same bytes.

    python3 -m venv venv && venv/bin/pip install -r scripts/train-digits/requirements.txt
    venv/bin/python scripts/train-digits/train.py DATA_DIR OUT_DIR

DATA_DIR holds images_uint8.npy [1797, 8, 8] (pixels 0..16) and labels.npy [1797] (the
scikit-learn digits set). Net: Conv 3x3 x8 (pad 1) -> ReLU -> MaxPool 2 -> Gemm 128->10
-> Softmax, on [1, 1, 8, 8] inputs scaled to [0, 1].
"""
import os
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

data_dir, out = sys.argv[1], sys.argv[2]
images = np.load(os.path.join(data_dir, "images_uint8.npy")).astype(np.float32) / 16.0
labels = np.load(os.path.join(data_dir, "labels.npy")).astype(np.int64)
rng = np.random.default_rng(0)
perm = rng.permutation(len(labels))
test_idx, train_idx = perm[:360], perm[360:]
x_all = images[:, None, :, :]  # N, 1, 8, 8


def patches(x):
    """im2col for 3x3, pad 1: [N, 64, 9]."""
    n = x.shape[0]
    p = np.pad(x[:, 0], ((0, 0), (1, 1), (1, 1)))
    cols = np.empty((n, 8, 8, 9), np.float32)
    for ky in range(3):
        for kx in range(3):
            cols[:, :, :, ky * 3 + kx] = p[:, ky:ky + 8, kx:kx + 8]
    return cols.reshape(n, 64, 9)


def forward(x, params):
    w1, b1, w2, b2 = params
    cols = patches(x)
    conv = cols @ w1.reshape(8, 9).T + b1  # N, 64, 8
    conv = conv.transpose(0, 2, 1).reshape(-1, 8, 8, 8)
    relu = np.maximum(conv, 0)
    r = relu.reshape(-1, 8, 4, 2, 4, 2)
    pool = r.max(axis=(3, 5))  # N, 8, 4, 4
    flat = pool.reshape(-1, 128)
    logits = flat @ w2.T + b2
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    prob = e / e.sum(axis=1, keepdims=True)
    return prob, (cols, conv, relu, r, pool, flat)


w1 = (rng.standard_normal((8, 1, 3, 3)) * np.sqrt(2 / 9)).astype(np.float32)
b1 = np.zeros(8, np.float32)
w2 = (rng.standard_normal((10, 128)) * np.sqrt(1 / 128)).astype(np.float32)
b2 = np.zeros(10, np.float32)
params = [w1, b1, w2, b2]
m = [np.zeros_like(p) for p in params]
v = [np.zeros_like(p) for p in params]
lr, step = 0.01, 0
for epoch in range(40):
    order = rng.permutation(train_idx)
    for i in range(0, len(order), 32):
        idx = order[i:i + 32]
        x, y = x_all[idx], labels[idx]
        prob, (cols, conv, relu, r, pool, flat) = forward(x, params)
        n = len(idx)
        dlogits = prob.copy()
        dlogits[np.arange(n), y] -= 1
        dlogits /= n
        dw2 = dlogits.T @ flat
        db2 = dlogits.sum(0)
        dflat = dlogits @ params[2]
        dpool = dflat.reshape(-1, 8, 4, 1, 4, 1)
        mask = r == pool.reshape(-1, 8, 4, 1, 4, 1)
        drelu = (mask * dpool).reshape(-1, 8, 8, 8)
        dconv = drelu * (conv > 0)
        dc = dconv.reshape(-1, 8, 64).transpose(0, 2, 1)  # N, 64, 8
        dw1 = np.einsum("npk,npc->kc", dc, cols).reshape(8, 1, 3, 3)
        db1 = dc.sum((0, 1))
        grads = [dw1, db1, dw2, db2]
        step += 1
        for j, (p, g) in enumerate(zip(params, grads)):
            m[j] = 0.9 * m[j] + 0.1 * g
            v[j] = 0.999 * v[j] + 0.001 * g * g
            mh = m[j] / (1 - 0.9**step)
            vh = v[j] / (1 - 0.999**step)
            params[j] = (p - lr * mh / (np.sqrt(vh) + 1e-8)).astype(np.float32)

prob, _ = forward(x_all[test_idx], params)
acc = (prob.argmax(1) == labels[test_idx]).mean()
print(f"float test accuracy: {acc:.4f} on {len(test_idx)} held-out images")

w1, b1, w2, b2 = params
nodes = [
    helper.make_node("Conv", ["x", "w1", "b1"], ["c"], name="conv", pads=[1, 1, 1, 1], kernel_shape=[3, 3]),
    helper.make_node("Relu", ["c"], ["r"], name="relu"),
    helper.make_node("MaxPool", ["r"], ["p"], name="pool", kernel_shape=[2, 2], strides=[2, 2]),
    helper.make_node("Flatten", ["p"], ["f"], name="flatten"),
    helper.make_node("Gemm", ["f", "w2", "b2"], ["l"], name="dense", transB=1),
    helper.make_node("Softmax", ["l"], ["y"], name="softmax", axis=1),
]
graph = helper.make_graph(
    nodes,
    "digits_cnn",
    [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 8, 8])],
    [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])],
    [numpy_helper.from_array(a, n) for a, n in [(w1, "w1"), (b1, "b1"), (w2, "w2"), (b2, "b2")]],
)
model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], producer_name="kiln train-digits")
model.ir_version = 8
onnx.checker.check_model(model)
os.makedirs(out, exist_ok=True)
onnx.save(model, os.path.join(out, "model.onnx"))
for d in ["calib", "eval"]:
    os.makedirs(os.path.join(out, d), exist_ok=True)
np.save(os.path.join(out, "calib", "input_0.npy"), x_all[train_idx[:200]])
np.save(os.path.join(out, "eval", "input_0.npy"), x_all[test_idx])
np.save(os.path.join(out, "eval", "labels.npy"), labels[test_idx])
for k in range(3):
    d = os.path.join(out, "ref", f"test_data_set_{k}")
    os.makedirs(d, exist_ok=True)
    x = x_all[test_idx[k:k + 1]]
    np.save(os.path.join(d, "input_0.npy"), x)
    np.save(os.path.join(d, "output_0.npy"), forward(x, params)[0].astype(np.float32))
with open(os.path.join(out, "ACCURACY"), "w") as f:
    f.write(f"{acc:.6f}\n")

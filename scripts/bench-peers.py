#!/usr/bin/env python3
"""Kiln against its peers on the host, one thread, batch 1, in one interleaved run.

    scripts/bench-peers.py [--rounds 5] [--runs 200] [--models kws,vww,ic,ad,sww]
                           [--modes fp16,hybrid] [--shared ../shared/models]
                           [--kiln target/release/kiln]

Per round every configuration is timed once (median microseconds over --runs inferences),
in turn, so drift in the machine's speed touches all of them alike; the table gives the
median over rounds and the ratios the host-speed issue asks for. Peers (install with
`pip install onnxruntime ai-edge-litert`): ONNX Runtime on the float model (and on the
int8 QDQ model), LiteRT with XNNPACK on the MLPerf Tiny `.tflite` files (looked up in
--shared, `<model>/source/`). Kiln: `kiln bench` on native objects (portable default and
`--target-cpu native`) and on C (`cc -O3 -march=native`); `--modes` adds Kiln's fp16 and
hybrid builds (`native`) and their speed against float (`--models silero` adds Silero VAD,
which has no LiteRT file). Python call overhead adds a few microseconds to the peers'
figures. A measuring aid, not a test.
"""
import argparse
import os
import re
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

MODELS = {
    "kws": ("mlperf_tiny_kws_dscnn", "kws_ref_model_float32.tflite", "kws_ref_model.tflite"),
    "vww": ("mlperf_tiny_vww_mobilenetv1_025", "vww_96_float.tflite", "vww_96_int8.tflite"),
    "ic": ("mlperf_tiny_ic_resnet8", "pretrainedResnet.tflite", "pretrainedResnet_quant.tflite"),
    "ad": ("mlperf_tiny_ad_fc_autoencoder", "ad01_fp32.tflite", "ad01_int8.tflite"),
    "sww": ("mlperf_tiny_sww_dscnn", None, "str_ww_ref_model.tflite"),
    "silero": ("silero_vad_16k", None, None),
}


def timed(fn, runs):
    fn()
    t = []
    for _ in range(runs):
        a = time.perf_counter()
        fn()
        t.append((time.perf_counter() - a) * 1e6)
    return statistics.median(t)


def ort_runner(path, runs):
    import numpy as np
    import onnxruntime as ort

    o = ort.SessionOptions()
    o.intra_op_num_threads = 1
    o.inter_op_num_threads = 1
    s = ort.InferenceSession(path, o, providers=["CPUExecutionProvider"])
    feed = {}
    for i in s.get_inputs():
        shape = [d if isinstance(d, int) else 1 for d in i.shape]
        dt = {"tensor(float)": np.float32, "tensor(int64)": np.int64}.get(i.type, np.int8)
        feed[i.name] = np.zeros(shape, dt)
    return lambda: timed(lambda: s.run(None, feed), runs)


def litert_runner(path, runs):
    import numpy as np
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=path, num_threads=1)
    it.allocate_tensors()
    for d in it.get_input_details():
        it.set_tensor(d["index"], np.zeros(d["shape"], d["dtype"]))
    return lambda: timed(it.invoke, runs)


def kiln_runner(kiln, model, runs, args):
    cmd = [kiln, "bench", model, "--runs", str(runs), *args]

    def go():
        out = subprocess.run(cmd, capture_output=True, text=True)
        m = re.search(r"median ([0-9.]+) us", out.stdout)
        if not m:
            raise RuntimeError(f"{' '.join(cmd)}: {out.stderr.strip()}")
        return float(m.group(1))

    return go


def configs(key, a):
    name, ftfl, qtfl = MODELS[key]
    d = os.path.join(ROOT, "tests", "models", name)
    src = os.path.join(a.shared, name, "source")
    fp32 = os.path.join(d, "model.onnx")
    qdq = os.path.join(d, "model_int8_qdq_tflite.onnx")
    if os.path.exists(qdq):
        int8 = [qdq, "--quantize", "int8"]
    elif os.path.isdir(os.path.join(d, "calib")):
        int8 = [fp32, "--quantize", "int8", "--calibrate", os.path.join(d, "calib")]
    else:
        int8 = None
    c = {}
    if os.path.exists(fp32):
        c["ORT fp32"] = lambda: ort_runner(fp32, a.runs)
    if os.path.exists(qdq):
        c["ORT int8"] = lambda: ort_runner(qdq, a.runs)
    if qtfl and os.path.exists(os.path.join(src, qtfl)):
        c["LiteRT int8"] = lambda: litert_runner(os.path.join(src, qtfl), a.runs)
    if ftfl and os.path.exists(os.path.join(src, ftfl)):
        c["LiteRT fp32"] = lambda: litert_runner(os.path.join(src, ftfl), a.runs)
    k = lambda m, *x: (lambda: kiln_runner(a.kiln, m[0], a.runs, [*m[1:], *x]))
    if os.path.exists(fp32):
        c["Kiln fp32"] = k([fp32], "--emit", "object")
        c["Kiln fp32 native"] = k([fp32], "--emit", "object", "--target-cpu", "native")
        c["Kiln C fp32 -O3 native"] = k([fp32], "--emit", "c", "--cflags", "-O3 -march=native")
    if int8:
        c["Kiln int8"] = k(int8, "--emit", "object")
        c["Kiln int8 native"] = k(int8, "--emit", "object", "--target-cpu", "native")
    modes = [m for m in a.modes.split(",") if m]
    for mode, q in [("fp16", "fp16"), ("hybrid", "dynamic")]:
        if mode in modes and os.path.exists(fp32):
            c[f"Kiln {mode} native"] = k([fp32], "--quantize", q, "--emit", "object", "--target-cpu", "native")
    return c


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--models", default="kws,vww,ic,ad,sww")
    ap.add_argument("--modes", default="", help="extra Kiln builds: fp16,hybrid")
    ap.add_argument("--shared", default=os.path.join(ROOT, "..", "shared", "models"))
    ap.add_argument("--kiln", default=os.path.join(ROOT, "target", "release", "kiln"))
    a = ap.parse_args()
    keys = a.models.split(",")
    runners = {}
    for key in keys:
        for label, make in configs(key, a).items():
            try:
                runners[(key, label)] = make()
            except Exception as e:  # a missing peer is reported, not fatal
                print(f"{key} {label}: skipped ({e})", file=sys.stderr)
    times = {k: [] for k in runners}
    for r in range(a.rounds):
        for k, run in runners.items():
            times[k].append(run())
        print(f"round {r + 1}/{a.rounds} done", file=sys.stderr)
    med = {k: statistics.median(v) for k, v in times.items()}
    labels = []
    for k in runners:
        if k[1] not in labels:
            labels.append(k[1])
    print("median us per inference (1 thread, batch 1)\n")
    print("| model | " + " | ".join(labels) + " |")
    print("|---" * (len(labels) + 1) + "|")
    for key in keys:
        cells = [f"{med[(key, l)]:.1f}" if (key, l) in med else "-" for l in labels]
        print(f"| {key} | " + " | ".join(cells) + " |")
    print("\nratios (above 1: Kiln faster)\n")
    pairs = [
        ("Kiln int8 native / LiteRT int8", "LiteRT int8", "Kiln int8 native"),
        ("Kiln int8 / LiteRT int8", "LiteRT int8", "Kiln int8"),
        ("Kiln fp32 native / ORT fp32", "ORT fp32", "Kiln fp32 native"),
        ("Kiln int8 native / Kiln fp32 native", "Kiln fp32 native", "Kiln int8 native"),
        ("Kiln C -O3 native / Kiln fp32 native", "Kiln fp32 native", "Kiln C fp32 -O3 native"),
        ("Kiln fp16 native / Kiln fp32 native", "Kiln fp32 native", "Kiln fp16 native"),
        ("Kiln hybrid native / Kiln fp32 native", "Kiln fp32 native", "Kiln hybrid native"),
    ]
    pairs = [p for p in pairs if any((key, p[2]) in med for key in keys)]
    print("| model | " + " | ".join(p[0] for p in pairs) + " |")
    print("|---" * (len(pairs) + 1) + "|")
    for key in keys:
        cells = []
        for _, peer, ours in pairs:
            if (key, peer) in med and (key, ours) in med:
                cells.append(f"{med[(key, peer)] / med[(key, ours)]:.2f}")
            else:
                cells.append("-")
        print(f"| {key} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()

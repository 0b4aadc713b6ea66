#!/usr/bin/env python3
"""Per-layer instruction counts of a Kiln C build on a simulated Cortex-M.

    scripts/profile-cortexm.py MODEL [--cpu cortex-m4] [--layers] [-- KILN_COMPILE_ARGS...]

Compiles MODEL with `kiln compile --emit c --target <cpu>` (extra arguments after `--`, e.g.
`--quantize int8`), links a harness that runs `<prefix>_run` once on a zero input and counts
instructions with the shared `cortexm-cc`/`cortexm-run` (QEMU, exact counts). With
`--layers`, each kernel call is wrapped in a bench region through the generated file's
`KILN_LAYER_BEGIN`/`KILN_LAYER_END` hooks (one build per layer) and a table is printed.
A measuring aid, not a test: CI's benchmark is the `mcu` test.
"""
import argparse
import os
import re
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOLS = os.environ.get("KILN_SHARED_TOOLS", os.path.join(ROOT, "..", "shared", "tools"))

HARNESS = r"""
#include "bench.h"
#include "m.h"
static unsigned char arena[M_ARENA_SIZE] __attribute__((aligned(16)));
static IN_T in0[M_INPUT0_COUNT];
static OUT_T out0[M_OUTPUT0_COUNT];
int main(void) {
    bench_stdout_init();
    BENCH_BEGIN(1);
    int r = m_run(in0, out0, arena);
    BENCH_END(1);
    printf("ret %d\n", r);
    return r;
}
"""


def run(cmd, **kw):
    r = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if r.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{r.stdout}\n{r.stderr}")
    return r.stdout


def count(work, cpu, defines):
    elf = os.path.join(work, "p.elf")
    run([os.path.join(TOOLS, "cortexm-cc"), "--cpu", cpu, "-O2", "-std=gnu99", *defines,
         "-I", work, "-o", elf, os.path.join(work, "main.c"), os.path.join(work, "m.c")])
    out = run([os.path.join(TOOLS, "cortexm-run"), elf])
    region = re.search(r"region 1: insns=(\d+)", out)
    flash = re.search(r"flash: (\d+) bytes", out)
    return int(region.group(1)) if region else 0, int(flash.group(1)) if flash else 0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--cpu", default="cortex-m4")
    ap.add_argument("--layers", action="store_true")
    ap.add_argument("--kiln", default=os.path.join(ROOT, "target", "release", "kiln"))
    ap.add_argument("rest", nargs="*")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="kiln-prof-") as work:
        run([a.kiln, "compile", a.model, "--emit", "c", "--target", a.cpu, "--prefix", "m",
             "-o", work, *a.rest])
        h = open(os.path.join(work, "m.h")).read()
        sig = re.search(r"int m_run\(const (\w+) \*\w+, (\w+) \*", h)
        harness = HARNESS.replace("IN_T", sig.group(1)).replace("OUT_T", sig.group(2))
        open(os.path.join(work, "main.c"), "w").write(harness)
        total, flash = count(work, a.cpu, [])
        print(f"{os.path.basename(os.path.dirname(a.model))} {a.cpu}: {total} instructions, flash {flash} B")
        if not a.layers:
            return
        src = open(os.path.join(work, "m.c")).read()
        ops = {int(k): op for op, k in re.findall(r"\((\w+)\): [^\n]*\n(?:static void|KILN_KERNEL) k(\d+)\(", src)}
        layers = sorted({int(k) for k in re.findall(r"KILN_LAYER_BEGIN\((\d+)\)", src)})
        for k in layers:
            d = ["-include", "bench.h", f"-DKILN_LAYER_BEGIN(k)=if ((k) == {k}) BENCH_BEGIN(2)",
                 f"-DKILN_LAYER_END(k)=if ((k) == {k}) BENCH_END(2)"]
            count(work, a.cpu, d)
            out = run([os.path.join(TOOLS, "cortexm-run"), os.path.join(work, "p.elf")])
            r = re.search(r"region 2: insns=(\d+)", out)
            n = int(r.group(1)) if r else 0
            print(f"  k{k:<3} {ops.get(k, '?'):<12} {n:>10}  {100.0 * n / max(total, 1):5.1f}%")


if __name__ == "__main__":
    main()

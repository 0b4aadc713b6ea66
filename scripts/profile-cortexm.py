#!/usr/bin/env python3
"""Per-layer instruction counts of a Kiln C build on a simulated Cortex-M.

    scripts/profile-cortexm.py MODEL [--cpu cortex-m4] [--layers | --rust] [-- KILN_COMPILE_ARGS...]

Compiles MODEL with `kiln compile --emit c --target <cpu>` (extra arguments after `--`, e.g.
`--quantize int8`), links a harness that runs `<prefix>_run` once on a zero input and counts
instructions with the shared `cortexm-cc`/`cortexm-run` (QEMU, exact counts). With
`--layers`, each kernel call is wrapped in a bench region through the generated file's
`KILN_LAYER_BEGIN`/`KILN_LAYER_END` hooks (one build per layer) and a table is printed.
With `--rust`, the Rust-source build instead (a `no_std` staticlib over `kiln-runtime` with
`arm-dsp`, built by cargo for thumbv7em-none-eabihf) runs under the same harness, whole model
only. A measuring aid, not a test: CI's benchmark is the `mcu` test.
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


RUST_LIB = r"""#![no_std]
include!("../model.rs");

#[panic_handler]
fn panic(_: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn m_run(x: *const IN_T, y: *mut OUT_T, arena: *mut u8) -> i32 {
    let (x, y) = unsafe { (&*(x as *const [IN_T; model::INPUT0_COUNT]), &mut *(y as *mut [OUT_T; model::OUTPUT0_COUNT])) };
    match model::run(x, y, unsafe { &mut *(arena as *mut model::Arena) }) {
        Ok(()) => 0,
        Err(e) => e,
    }
}
"""

RUST_TOML = """[package]
name = "modelrs"
version = "0.0.0"
edition = "2024"
publish = false

[lib]
crate-type = ["staticlib"]

[dependencies]
kiln-runtime = { path = "RUNTIME", features = ["arm-dsp"] }

[profile.release]
panic = "abort"
opt-level = 2
codegen-units = 1

[workspace]
"""

RUST_TYPES = {"int8_t": "i8", "uint8_t": "u8", "int16_t": "i16", "float": "f32", "int32_t": "i32"}


def rust_lib(work, a, sig):
    """Builds the Rust-source build of the model as `libmodelrs.a`; returns its arena size."""
    run([a.kiln, "compile", a.model, "--emit", "rust", "--target", a.cpu, "--prefix", "model",
         "-o", work, *a.rest])
    lib = RUST_LIB.replace("IN_T", RUST_TYPES[sig.group(1)]).replace("OUT_T", RUST_TYPES[sig.group(2)])
    os.makedirs(os.path.join(work, "src"))
    open(os.path.join(work, "src", "lib.rs"), "w").write(lib)
    open(os.path.join(work, "Cargo.toml"), "w").write(RUST_TOML.replace("RUNTIME", os.path.join(ROOT, "runtime")))
    target = os.path.join(ROOT, "target", "rust-cortex-m")
    run(["cargo", "build", "--release", "--quiet", "--offline", "--target", "thumbv7em-none-eabihf"],
        cwd=work, env={**os.environ, "CARGO_TARGET_DIR": target, "RUSTFLAGS": f"-C target-cpu={a.cpu} " + os.environ.get("KILN_RUSTFLAGS", "")})
    size = re.search(r"ARENA_SIZE: usize = (\d+);", open(os.path.join(work, "model.rs")).read())
    return os.path.join(target, "thumbv7em-none-eabihf", "release", "libmodelrs.a"), int(size.group(1))


def count(work, cpu, defines, sources=("m.c",)):
    elf = os.path.join(work, "p.elf")
    run([os.path.join(TOOLS, "cortexm-cc"), "--cpu", cpu, "-O2", "-std=gnu99", *defines,
         "-I", work, "-o", elf, os.path.join(work, "main.c"), *[os.path.join(work, f) for f in sources]])
    out = run([os.path.join(TOOLS, "cortexm-run"), elf])
    region = re.search(r"region 1: insns=(\d+)", out)
    flash = re.search(r"flash: (\d+) bytes", out)
    return int(region.group(1)) if region else 0, int(flash.group(1)) if flash else 0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--cpu", default="cortex-m4")
    ap.add_argument("--layers", action="store_true")
    ap.add_argument("--rust", action="store_true")
    ap.add_argument("--kiln", default=os.path.join(ROOT, "target", "release", "kiln"))
    ap.add_argument("rest", nargs="*")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="kiln-prof-") as work:
        run([a.kiln, "compile", a.model, "--emit", "c", "--target", a.cpu, "--prefix", "m",
             "-o", work, *a.rest])
        h = open(os.path.join(work, "m.h")).read()
        sig = re.search(r"int m_run\(const (\w+) \*\w+, (\w+) \*", h)
        harness = HARNESS.replace("IN_T", sig.group(1)).replace("OUT_T", sig.group(2))
        name = os.path.basename(os.path.dirname(a.model))
        if a.rust:
            lib, arena = rust_lib(work, a, sig)
            harness = harness.replace("M_ARENA_SIZE", str(arena))
            open(os.path.join(work, "main.c"), "w").write(harness)
            total, flash = count(work, a.cpu, [], (lib,))
            print(f"{name} {a.cpu} Rust source: {total} instructions, flash {flash} B")
            return
        open(os.path.join(work, "main.c"), "w").write(harness)
        total, flash = count(work, a.cpu, [])
        print(f"{name} {a.cpu}: {total} instructions, flash {flash} B")
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

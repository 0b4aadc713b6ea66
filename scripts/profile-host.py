#!/usr/bin/env python3
"""Where a native object's time goes on the host, per kernel (one kernel per graph node).

    scripts/profile-host.py MODEL [--runs 3000] [--kiln target/release/kiln] [-- KILN_COMPILE_ARGS...]

Compiles MODEL with `kiln compile --emit object` (extra arguments after `--`, e.g.
`--quantize int8 --target-cpu native`), links a harness that runs `<prefix>_run` --runs
times on zero inputs, samples it with `perf record` and prints each kernel's share of the
samples (kernel symbols are `<prefix>_k<N>_<op>`, N in schedule order; the machine code
they call, `<prefix>_code<N>`, is listed after them). A measuring aid,
not a test: host times are noisy, so compare shares and the peer ratios of
`scripts/bench-peers.py`, never absolute times across runs.
"""
import argparse
import contextlib
import os
import re
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

HARNESS = r"""
#include "m.h"
#include <stdlib.h>
static unsigned char arena[M_ARENA_SIZE] __attribute__((aligned(16)));
BUFFERS
int main(int argc, char **argv) {
    int runs = argc > 1 ? atoi(argv[1]) : 1;
    for (int r = 0; r < runs; r++)
        if (m_run(ARGS arena)) return 3;
    return 0;
}
"""


def run(cmd, **kw):
    r = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if r.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{r.stdout}\n{r.stderr}")
    return r.stdout


def keep_or_temp(keep):
    if keep is None:
        return tempfile.TemporaryDirectory()
    os.makedirs(keep, exist_ok=True)
    return contextlib.nullcontext(os.path.abspath(keep))


def main():
    argv = sys.argv[1:]
    extra = []
    if "--" in argv:
        i = argv.index("--")
        argv, extra = argv[:i], argv[i + 1:]
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("--runs", type=int, default=3000)
    ap.add_argument("--kiln", default=os.path.join(ROOT, "target", "release", "kiln"))
    ap.add_argument("--keep", metavar="DIR", help="work in DIR and keep the object, harness and "
                    "perf.data there (for `perf annotate -i DIR/perf.data m_k3_qconv`)")
    a = ap.parse_args(argv)
    with keep_or_temp(a.keep) as d:
        run([a.kiln, "compile", a.model, "--emit", "object", "--prefix", "m", "-o", d] + extra)
        header = open(os.path.join(d, "m.h")).read()
        sig = re.search(r"int m_run\(([^)]*)\);", header)
        if sig is None:
            sys.exit("no m_run in the header")
        # one zeroed static buffer per pointer parameter but the arena, sized from the header
        params = [p.strip() for p in sig.group(1).split(",")][:-1]
        bufs, args = [], []
        ins = outs = 0
        for p in params:
            ty = re.match(r"(?:const )?(\w+) \*", p).group(1)
            if p.startswith("const"):
                count, ins = f"M_INPUT{ins}_COUNT", ins + 1
            else:
                count, outs = f"M_OUTPUT{outs}_COUNT", outs + 1
            bufs.append(f"static {ty} b{len(bufs)}[{count}];")
            args.append(f"b{len(args)},")
        src = HARNESS.replace("BUFFERS", "\n".join(bufs)).replace("ARGS", " ".join(args))
        open(os.path.join(d, "h.c"), "w").write(src)
        exe = os.path.join(d, "h")
        run(["cc", "-O2", "-I", d, os.path.join(d, "h.c"), os.path.join(d, "m.o"), "-o", exe])
        data = os.path.join(d, "perf.data")
        run(["perf", "record", "-q", "-o", data, exe, str(a.runs)])
        rep = run(["perf", "report", "-i", data, "--no-children", "--sort", "sym", "--stdio"])
    rows = []
    for line in rep.splitlines():
        m = re.match(r"\s*([\d.]+)%\s+\[\.\]\s+(\S+)", line)
        if m:
            rows.append((float(m.group(1)), m.group(2)))
    kern = [(p, s) for p, s in rows if re.match(r"m_k\d+_", s)]
    kern.sort(key=lambda r: int(re.match(r"m_k(\d+)_", r[1]).group(1)))
    print(f"{'kernel':<28} {'share':>7}")
    for p, s in kern:
        print(f"{s[2:]:<28} {p:>6.1f}%")
    # hand-encoded machine code the kernels call (`<prefix>_code<N>`, x86-64 AVX2)
    code = [(p, s) for p, s in rows if re.match(r"m_code\d+$", s)]
    for p, s in code:
        print(f"{s[2:]:<28} {p:>6.1f}%")
    other = sum(p for p, s in rows if (p, s) not in kern and (p, s) not in code)
    print(f"{'(outside kernels)':<28} {other:>6.1f}%")


if __name__ == "__main__":
    main()

//! `kiln bench`: one tool for every latency figure. The evaluator is timed in-process; a
//! compiled model (native object, or C source built with the same compiler) is linked into a
//! small C timing loop with the system `cc` (-O2 unless told otherwise) and run on this machine, so the number
//! includes nothing but the generated code.

use crate::compile::{CompileOptions, Emit, compile, parse_target, write_files};
use kiln_backends::header::c_type;
use kiln_ir::{Graph, Tensor};
use std::path::Path;

/// Median and minimum microseconds per inference over `runs` timed runs.
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    pub median_us: f64,
    pub min_us: f64,
    pub runs: usize,
}

fn summarize(mut t: Vec<f64>) -> Timing {
    t.sort_by(|a, b| a.total_cmp(b));
    Timing {
        median_us: t[t.len() / 2],
        min_us: t[0],
        runs: t.len(),
    }
}

pub fn bench_eval(g: &Graph, inputs: &[Tensor], runs: usize) -> Result<Timing, kiln_ir::IrError> {
    kiln_ir::eval::run(g, inputs)?;
    let mut times = Vec::with_capacity(runs);
    for _ in 0..runs.max(1) {
        let t = std::time::Instant::now();
        std::hint::black_box(kiln_ir::eval::run(g, inputs)?);
        times.push(t.elapsed().as_secs_f64() * 1e6);
    }
    Ok(summarize(times))
}

/// How a benchmark builds the model: the CPU features a native object may assume
/// (`--target-cpu`), and the C compiler's flags for C source.
#[derive(Clone, Debug)]
pub struct BuildFlags {
    pub cpu: Option<String>,
    pub cflags: Vec<String>,
}

impl Default for BuildFlags {
    fn default() -> Self {
        BuildFlags {
            cpu: None,
            cflags: vec!["-O2".into()],
        }
    }
}

/// Compiles `g` for the host (`Emit::Object` or `Emit::C`), links a timing harness, runs it
/// in `work`.
pub fn bench_object(g: &Graph, inputs: &[Tensor], runs: usize, work: &Path) -> Result<Timing, String> {
    bench_compiled(g, inputs, runs, work, Emit::Object, &BuildFlags::default())
}

/// As [`bench_object`] for any host-runnable emit kind (object or C).
pub fn bench_compiled(
    g: &Graph,
    inputs: &[Tensor],
    runs: usize,
    work: &Path,
    emit: Emit,
    flags: &BuildFlags,
) -> Result<Timing, String> {
    if emit == Emit::RustSource {
        return Err("benchmarks time native objects and C; Rust source is timed in its crate".into());
    }
    let opts = CompileOptions {
        emit,
        target: parse_target("host")
            .map_err(|e| e.to_string())?
            .with_cpu(flags.cpu.as_deref()),
        prefix: "bench_model".into(),
        static_arena: false,
    };
    let out = compile(g, &opts, "bench").map_err(|e| e.to_string())?;
    write_files(work, &out.files, &[]).map_err(|e| e.to_string())?;
    let mut c = String::from(
        "#define _POSIX_C_SOURCE 199309L\n#include \"bench_model.h\"\n#include <stdio.h>\n#include <stdlib.h>\n#include <time.h>\n",
    );
    c.push_str("static void rd(const char *p, void *b, size_t n) { FILE *f = fopen(p, \"rb\"); if (!f || fread(b, 1, n, f) != n) exit(2); fclose(f); }\n");
    c.push_str("static int cmp(const void *a, const void *b) { double x = *(const double *)a, y = *(const double *)b; return (x > y) - (x < y); }\n");
    for (i, &v) in g.inputs().iter().enumerate() {
        c.push_str(&format!(
            "static {} in{i}[BENCH_MODEL_INPUT{i}_COUNT + 1];\n",
            c_type(g.value(v).ty.dtype.scalar)
        ));
    }
    for (i, &v) in g.outputs().iter().enumerate() {
        c.push_str(&format!(
            "static {} out{i}[BENCH_MODEL_OUTPUT{i}_COUNT + 1];\n",
            c_type(g.value(v).ty.dtype.scalar)
        ));
    }
    c.push_str(&format!("static _Alignas(16) unsigned char arena[BENCH_MODEL_ARENA_SIZE + 16];\nstatic double t[{}];\nint main(int argc, char **argv) {{\n  (void)argc;\n", runs.max(1)));
    for i in 0..g.inputs().len() {
        c.push_str(&format!(
            "  rd(argv[{}], in{i}, sizeof(in{i}[0]) * BENCH_MODEL_INPUT{i}_COUNT);\n",
            i + 1
        ));
    }
    let mut args: Vec<String> = (0..g.inputs().len()).map(|i| format!("in{i}")).collect();
    args.extend((0..g.outputs().len()).map(|i| format!("out{i}")));
    args.push("arena".into());
    let call = format!("bench_model_run({})", args.join(", "));
    c.push_str(&format!(
        "  if ({call}) return 3;\n  for (int r = 0; r < {n}; r++) {{\n    struct timespec a, b;\n    clock_gettime(CLOCK_MONOTONIC, &a);\n    {call};\n    clock_gettime(CLOCK_MONOTONIC, &b);\n    t[r] = (b.tv_sec - a.tv_sec) * 1e6 + (b.tv_nsec - a.tv_nsec) / 1e3;\n  }}\n  qsort(t, {n}, sizeof t[0], cmp);\n  printf(\"%.3f %.3f\\n\", t[{n} / 2], t[0]);\n  return 0;\n}}\n",
        n = runs.max(1)
    ));
    std::fs::write(work.join("bench.c"), c).map_err(|e| e.to_string())?;
    let exe = work.join("bench");
    let mut cc = std::process::Command::new("cc");
    cc.arg("-std=c11").args(&flags.cflags).arg(work.join("bench.c"));
    if emit == Emit::C {
        cc.arg(work.join("bench_model.c")).arg("-lm");
    } else {
        cc.arg("-L").arg(work).arg("-lbench_model");
    }
    let cc = cc
        .arg("-o")
        .arg(&exe)
        .output()
        .map_err(|e| format!("cannot run cc: {e}"))?;
    if !cc.status.success() {
        return Err(format!("cc failed: {}", String::from_utf8_lossy(&cc.stderr)));
    }
    let mut cmd = std::process::Command::new(&exe);
    for (i, t) in inputs.iter().enumerate() {
        let p = work.join(format!("in{i}.bin"));
        std::fs::write(&p, t.data.to_le_bytes()).map_err(|e| e.to_string())?;
        cmd.arg(p);
    }
    let run = cmd.output().map_err(|e| e.to_string())?;
    if run.status.code() == Some(3) && emit == Emit::Object {
        return Err(format!(
            "the model did not run: this CPU lacks a feature the object assumes (--target-cpu {})",
            flags.cpu.as_deref().unwrap_or("default")
        ));
    }
    if !run.status.success() {
        return Err(format!("benchmark run failed: {}", run.status));
    }
    let text = String::from_utf8_lossy(&run.stdout);
    let v: Vec<f64> = text.split_whitespace().filter_map(|s| s.parse().ok()).collect();
    match v[..] {
        [median_us, min_us] => Ok(Timing {
            median_us,
            min_us,
            runs,
        }),
        _ => Err(format!("unexpected benchmark output `{text}`")),
    }
}

//! The C backend on an 8-bit AVR: small float models built here are compiled for the
//! ATmega328P (32 KB flash, 2 KB RAM), built with `avr-gcc -std=c99 -Wall -Wextra -Werror
//! -pedantic`, run in simavr through Kiln's own driver (`tests/avr/sim.c`), and their outputs
//! compared with the evaluator. avr-libc's float routines round + - * / correctly but flush
//! subnormals, and `exp` comes from the shared approximation, so the bound is a few ULP
//! (stated below); the test also prints cycles per inference, flash and RAM, and checks that
//! the weights stayed in flash. Skipped without the toolchain (`scripts/setup-embedded.sh`)
//! unless `KILN_REQUIRE_AVR` is set.

use kiln::compile::{CompileOptions, Emit, compile, parse_target, write_files};
use kiln::{ImportOptions, PipelineOptions};
use kiln_ir::{Graph, Tensor};
use kiln_tests::{attr_i, attr_ints, compare, fixed, model, node, repo, tensor, write_model};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Relative and absolute bound against the evaluator (see the module docs).
const RTOL: f64 = 4e-6;
const ATOL: f64 = 1e-7;

fn has(cmd: &str, arg: &str) -> bool {
    Command::new(cmd).arg(arg).output().is_ok_and(|o| o.status.success())
}

/// Whether avr-gcc and libsimavr are installed; panics if they must be and are not.
fn available() -> bool {
    let ok = has("avr-gcc", "--version") && Path::new("/usr/include/simavr/sim_avr.h").exists();
    if !ok && std::env::var_os("KILN_REQUIRE_AVR").is_some() {
        panic!("KILN_REQUIRE_AVR is set but avr-gcc or libsimavr is missing: run scripts/setup-embedded.sh");
    }
    if !ok {
        eprintln!("skipping: avr-gcc or libsimavr missing (scripts/setup-embedded.sh installs them)");
    }
    ok
}

fn sh(cmd: &mut Command) -> Result<String, String> {
    let o = cmd.output().map_err(|e| format!("{cmd:?}: {e}"))?;
    if !o.status.success() {
        return Err(format!(
            "{cmd:?} failed ({}):\n{}{}",
            o.status,
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&o.stdout).into_owned())
}

/// Builds the simulator driver once per test process.
fn simulator(dir: &Path) -> Result<PathBuf, String> {
    let exe = dir.join("kiln-avr-sim");
    sh(Command::new("cc")
        .args(["-O2", "-w", "-I/usr/include/simavr", "-o"])
        .arg(&exe)
        .arg(repo().join("tests/avr/sim.c"))
        .arg("-lsimavr"))?;
    Ok(exe)
}

/// Deterministic weights in [-1, 1).
fn lcg(seed: u32, n: usize) -> Vec<f32> {
    let mut s = seed;
    (0..n)
        .map(|_| {
            s = s.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (s >> 8) as f32 / (1u32 << 23) as f32 - 1.0
        })
        .collect()
}

/// Conv 3x3 (3 filters, pad 1) -> Relu -> MaxPool 2x2 -> Flatten -> Gemm 10 -> Softmax.
fn conv_net() -> Graph {
    let m = model(
        vec![
            node(
                "Conv",
                "conv",
                &["x", "w1", "b1"],
                &["c"],
                vec![attr_ints("pads", &[1, 1, 1, 1])],
            ),
            node("Relu", "relu", &["c"], &["r"], vec![]),
            node(
                "MaxPool",
                "pool",
                &["r"],
                &["p"],
                vec![attr_ints("kernel_shape", &[2, 2]), attr_ints("strides", &[2, 2])],
            ),
            node("Flatten", "flat", &["p"], &["f"], vec![]),
            node("Gemm", "fc", &["f", "w2", "b2"], &["l"], vec![attr_i("transB", 1)]),
            node("Softmax", "softmax", &["l"], &["y"], vec![attr_i("axis", 1)]),
        ],
        vec![fixed("x", &[1, 1, 8, 8])],
        vec![fixed("y", &[1, 10])],
        vec![
            tensor("w1", &[3, 1, 3, 3], lcg(1, 27)),
            tensor("b1", &[3], lcg(2, 3)),
            tensor("w2", &[10, 48], lcg(3, 480)),
            tensor("b2", &[10], lcg(4, 10)),
        ],
        13,
    );
    load("conv", &m)
}

/// MatMul 16x24 + bias -> Tanh -> MatMul 24x8 -> Sigmoid, with a residual-style Mul/Sub.
fn mlp() -> Graph {
    let m = model(
        vec![
            node("MatMul", "dense1", &["x", "w1"], &["h"], vec![]),
            node("Add", "bias1", &["h", "b1"], &["hb"], vec![]),
            node("Tanh", "tanh", &["hb"], &["t"], vec![]),
            node("MatMul", "dense2", &["t", "w2"], &["o"], vec![]),
            node("Sigmoid", "sigmoid", &["o"], &["s"], vec![]),
            node("Mul", "scale", &["s", "k"], &["sk"], vec![]),
            node("Sub", "shift", &["sk", "s"], &["y"], vec![]),
        ],
        vec![fixed("x", &[1, 16])],
        vec![fixed("y", &[1, 8])],
        vec![
            tensor("w1", &[16, 24], lcg(5, 384)),
            tensor("b1", &[24], lcg(6, 24)),
            tensor("w2", &[24, 8], lcg(7, 192)),
            tensor("k", &[8], lcg(8, 8)),
        ],
        13,
    );
    load("mlp", &m)
}

fn load(tag: &str, m: &kiln::onnx::proto::ModelProto) -> Graph {
    let p = write_model(&format!("avr-{tag}"), m);
    kiln::load(&p, &ImportOptions::default(), &PipelineOptions::default(), |_, _| {})
        .unwrap()
        .graph
}

/// A bare-metal program: inputs from flash, one timed `<prefix>_run`, then the output
/// bytes and the peak stack depth (from painting free RAM) in hex on the GPIOR0 console.
fn harness(g: &Graph, inputs: &[Tensor]) -> String {
    let mut c = String::from(
        "#include <avr/io.h>\n#include <avr/interrupt.h>\n#include <avr/pgmspace.h>\n#include <avr/sleep.h>\n#include <string.h>\n#include \"model.h\"\n",
    );
    for (i, t) in inputs.iter().enumerate() {
        let v: Vec<String> = t.data.to_le_bytes().iter().map(|b| format!("{b}")).collect();
        c += &format!(
            "static const uint8_t in{i}_rom[] PROGMEM = {{{}}};\nstatic uint8_t in{i}[sizeof in{i}_rom];\n",
            v.join(",")
        );
    }
    for (i, &v) in g.outputs().iter().enumerate() {
        c += &format!("static uint8_t out{i}[{}];\n", g.value(v).ty.bytes());
    }
    c += "static uint8_t arena[MODEL_ARENA_SIZE] __attribute__((aligned(MODEL_ARENA_ALIGN)));\n";
    c += "extern uint8_t __heap_start;\n";
    c += "static void put(char ch) { GPIOR0 = (uint8_t)ch; }\n";
    c += "static void hex(uint16_t v, int digits) { while (digits--) put(\"0123456789abcdef\"[(v >> (4 * digits)) & 15]); }\n";
    c += "int main(void) {\n  volatile uint8_t *p;\n";
    c += "  for (p = &__heap_start; p < (volatile uint8_t *)SP - 32; ++p) *p = 0xa5;\n";
    for i in 0..inputs.len() {
        c += &format!("  memcpy_P(in{i}, in{i}_rom, sizeof in{i});\n");
    }
    let mut args: Vec<String> = (0..inputs.len()).map(|i| format!("(const void *)in{i}")).collect();
    args.extend((0..g.outputs().len()).map(|i| format!("(void *)out{i}")));
    c += &format!(
        "  GPIOR1 = 1;\n  int rc = model_run({}, arena);\n  GPIOR1 = 2;\n",
        args.join(", ")
    );
    c += "  put('K'); put('\\n'); hex((uint16_t)rc, 2); put('\\n');\n";
    for i in 0..g.outputs().len() {
        c += &format!("  for (size_t i = 0; i < sizeof out{i}; ++i) hex(out{i}[i], 2);\n  put('\\n');\n");
    }
    c += "  for (p = &__heap_start; *p == 0xa5; ++p) {}\n  hex((uint16_t)(RAMEND + 1 - (uint16_t)p), 4);\n  put('\\n');\n";
    c += "  cli();\n  sleep_cpu();\n  return 0;\n}\n";
    c
}

struct Run {
    outputs: Vec<Tensor>,
    cycles: u64,
    stack: usize,
    flash: usize,
    ram: usize,
    data: usize,
}

fn run_on_avr(name: &str, g: &Graph, inputs: &[Tensor], sim: &Path, dir: &Path) -> Result<Run, String> {
    let dir = dir.join(name);
    let opts = CompileOptions {
        emit: Emit::C,
        target: parse_target("atmega328p").map_err(|e| e.to_string())?,
        prefix: "model".into(),
    };
    let out = compile(g, &opts, name).map_err(|e| e.to_string())?;
    write_files(&dir, &out.files).map_err(|e| e.to_string())?;
    std::fs::write(dir.join("main.c"), harness(g, inputs)).map_err(|e| e.to_string())?;
    let cc = |std: &str, src: &str, obj: &str, pedantic: bool| {
        let mut c = Command::new("avr-gcc");
        c.current_dir(&dir)
            .args(["-mmcu=atmega328p", "-Os", std, "-Wall", "-Wextra", "-Werror"]);
        if pedantic {
            c.arg("-pedantic");
        }
        c.args(["-c", src, "-o", obj]);
        sh(&mut c)
    };
    cc("-std=c99", "model.c", "model.o", true)?;
    cc("-std=gnu99", "main.c", "main.o", false)?;
    sh(Command::new("avr-gcc").current_dir(&dir).args([
        "-mmcu=atmega328p",
        "main.o",
        "model.o",
        "-lm",
        "-o",
        "prog.elf",
    ]))?;
    let sizes = sh(Command::new("avr-size").arg("-A").arg(dir.join("prog.elf")))?;
    let section = |s: &str| {
        sizes
            .lines()
            .find(|l| l.split_whitespace().next() == Some(s))
            .and_then(|l| l.split_whitespace().nth(1)?.parse::<usize>().ok())
            .unwrap_or(0)
    };
    let (text, data, bss) = (section(".text"), section(".data"), section(".bss"));
    let o = Command::new(sim)
        .args(["atmega328p", "2000000000"])
        .arg(dir.join("prog.elf"))
        .output()
        .map_err(|e| e.to_string())?;
    let stdout = String::from_utf8_lossy(&o.stdout).into_owned();
    if !o.status.success() {
        return Err(format!(
            "simavr: {} ({})\n{stdout}",
            o.status,
            String::from_utf8_lossy(&o.stderr)
        ));
    }
    let body = stdout
        .split("K\n")
        .nth(1)
        .ok_or_else(|| format!("no output marker:\n{stdout}"))?;
    let lines: Vec<&str> = body.lines().collect();
    if lines.first() != Some(&"00") {
        return Err(format!("model_run returned {:?}", lines.first()));
    }
    let bytes = |s: &str| -> Vec<u8> {
        (0..s.len() / 2)
            .map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap_or(0))
            .collect()
    };
    let mut outputs = Vec::new();
    for (i, &v) in g.outputs().iter().enumerate() {
        let ty = &g.value(v).ty;
        let d = kiln_ir::Data::from_le_bytes(ty.dtype.scalar, &bytes(lines.get(1 + i).unwrap_or(&"")))
            .ok_or("bad output size")?;
        outputs.push(Tensor::new(ty.shape.clone(), d));
    }
    let num = |key: &str| {
        stdout
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|s| s.trim().parse::<u64>().ok())
            .unwrap_or(0)
    };
    let stack = usize::from_str_radix(lines.get(1 + g.outputs().len()).unwrap_or(&"0"), 16).unwrap_or(0);
    Ok(Run {
        outputs,
        cycles: num("region:"),
        stack,
        flash: text + data,
        ram: data + bss,
        data,
    })
}

#[test]
fn small_models_run_on_a_simulated_atmega328p() {
    if !available() {
        return;
    }
    let dir = std::env::temp_dir().join(format!("kiln-avr-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let sim = simulator(&dir).unwrap();
    let mut failures = Vec::new();
    for (name, g) in [("conv", conv_net()), ("mlp", mlp())] {
        let res = (|| -> Result<String, String> {
            let mut worst = 0f64;
            let mut last = None;
            for seed in 0..3u32 {
                let inputs: Vec<Tensor> = g
                    .inputs()
                    .iter()
                    .map(|&v| {
                        let ty = &g.value(v).ty;
                        Tensor::from_vec(ty.shape.clone(), lcg(100 + seed, ty.numel()))
                    })
                    .collect();
                let want = kiln_ir::eval::run(&g, &inputs).map_err(|e| e.to_string())?;
                let run = run_on_avr(&format!("{name}-{seed}"), &g, &inputs, &sim, &dir)?;
                for (i, (got, w)) in run.outputs.iter().zip(&want).enumerate() {
                    let (r, a) = compare(got, w, RTOL, ATOL).map_err(|e| format!("input {seed}: output {i}: {e}"))?;
                    if r > 1.0 {
                        return Err(format!(
                            "input {seed}: output {i} differs from the evaluator by {a:e} ({r:.1}x the bound)\n got {:?}\nwant {:?}",
                            got.to_f64_vec(),
                            w.to_f64_vec()
                        ));
                    }
                    worst = worst.max(r);
                }
                // Weights must not be copied to RAM: .data holds only a few bytes of libc.
                if run.data > 64 {
                    return Err(format!(".data is {} bytes: constants were placed in RAM", run.data));
                }
                last = Some(run);
            }
            let r = last.expect("three runs");
            Ok(format!(
                "{} cycles/inference ({:.2} ms at 16 MHz), flash {} B, static RAM {} B + stack {} B; worst {worst:.3} of the bound",
                r.cycles,
                r.cycles as f64 / 16e3,
                r.flash,
                r.ram,
                r.stack
            ))
        })();
        match res {
            Ok(s) => println!("atmega328p {name}: {s}"),
            Err(e) => failures.push(format!("{name}: {e}")),
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    assert!(failures.is_empty(), "AVR failures:\n{}", failures.join("\n"));
}

#[test]
fn a_model_too_big_for_the_part_is_refused_with_numbers() {
    // 100x100 float weights (40 KB) cannot fit 32 KB of flash.
    let m = model(
        vec![node("MatMul", "big", &["x", "w"], &["y"], vec![])],
        vec![fixed("x", &[1, 100])],
        vec![fixed("y", &[1, 100])],
        vec![tensor("w", &[100, 100], lcg(9, 10_000))],
        13,
    );
    let g = load("big", &m);
    let opts = CompileOptions {
        emit: Emit::C,
        target: parse_target("atmega328p").unwrap(),
        prefix: "model".into(),
    };
    let e = compile(&g, &opts, "big").err().expect("must not fit").to_string();
    assert!(
        e.contains("atmega328p") && e.contains("40000") && e.contains("32768"),
        "{e}"
    );
    // The same model fits the ATmega2560's 256 KB.
    let opts = CompileOptions {
        target: parse_target("atmega2560").unwrap(),
        ..opts
    };
    assert!(compile(&g, &opts, "big").is_ok());
    // Unknown part names list the known ones.
    let e = parse_target("atmega9999").expect_err("unknown").to_string();
    assert!(e.contains("atmega328p") && e.contains("cortex-m4"), "{e}");
}

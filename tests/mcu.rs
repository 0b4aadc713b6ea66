//! The C backend on microcontrollers: small float models built here are compiled to C for
//! the ATmega328P (8-bit AVR, 32 KB flash, 2 KB RAM; `avr-gcc`, run in simavr) and a
//! Cortex-M4F (`arm-none-eabi-gcc`, run on QEMU's mps2-an386 counting instructions), both
//! through `kiln::onchip`, the same code `kiln bench --target` measures with. The model
//! source is built with `-std=c99 -Wall -Wextra
//! -Werror -pedantic`; outputs are compared with the evaluator. Both parts round + - * /
//! correctly, avr-libc flushes subnormals, and exp comes from the shared approximation, so
//! the bound is a few ULP (stated below). Each run prints cycles (AVR) or instructions
//! (Cortex-M) per inference, flash, static RAM and peak stack, and the test checks that
//! weights stay in flash. The Cortex-M4F runs every model a second time from the Rust
//! source backend, built as a `no_std` staticlib for `thumbv7em-none-eabihf` and linked into
//! the same C harness. Skipped without the toolchains (`scripts/setup-embedded.sh`) unless
//! `KILN_REQUIRE_MCU` is set.

use kiln::compile::{CompileOptions, Emit, compile, parse_target, write_files};
use kiln::onchip::{self, Measurement as Run, ModelCode, RunOptions, Tools};
use kiln::{ImportOptions, PipelineOptions};
use kiln_ir::{Graph, Tensor};
use kiln_tests::{attr_i, attr_ints, compare, fixed, model, node, repo, tensor, write_model};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Relative and absolute bound against the evaluator (see the module docs).
const RTOL: f64 = 4e-6;
const ATOL: f64 = 1e-7;

/// Whether a target's toolchain is installed; panics if it must be and is not.
fn available(what: &str, ok: Result<(), String>) -> bool {
    match ok {
        Ok(()) => true,
        Err(e) if std::env::var_os("KILN_REQUIRE_MCU").is_some() => {
            panic!("KILN_REQUIRE_MCU is set but the {what} toolchain is missing: {e}")
        }
        Err(e) => {
            eprintln!("skipping: {e}");
            false
        }
    }
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

/// Too big for the ATmega328P (44 KB of weights): MatMul 100x64 -> Relu -> MatMul 64x64 ->
/// Relu -> MatMul 64x10.
fn wide() -> Graph {
    let m = model(
        vec![
            node("MatMul", "dense1", &["x", "w1"], &["h"], vec![]),
            node("Relu", "relu1", &["h"], &["r"], vec![]),
            node("MatMul", "dense2", &["r", "w2"], &["h2"], vec![]),
            node("Relu", "relu2", &["h2"], &["r2"], vec![]),
            node("MatMul", "dense3", &["r2", "w3"], &["y"], vec![]),
        ],
        vec![fixed("x", &[1, 100])],
        vec![fixed("y", &[1, 10])],
        vec![
            tensor("w1", &[100, 64], lcg(10, 6400)),
            tensor("w2", &[64, 64], lcg(11, 4096)),
            tensor("w3", &[64, 10], lcg(12, 640)),
        ],
        13,
    );
    load("wide", &m)
}

/// The dense network of the AVR benchmark: Gemm 64 -> 32 -> Relu -> Gemm 32 -> 10
/// (2,368 multiply-adds).
fn dense_64_32_10() -> Graph {
    let m = model(
        vec![
            node("Gemm", "fc1", &["x", "w1", "b1"], &["h"], vec![attr_i("transB", 1)]),
            node("Relu", "relu", &["h"], &["r"], vec![]),
            node("Gemm", "fc2", &["r", "w2", "b2"], &["y"], vec![attr_i("transB", 1)]),
        ],
        vec![fixed("x", &[1, 64])],
        vec![fixed("y", &[1, 10])],
        vec![
            tensor("w1", &[32, 64], lcg(20, 2048).iter().map(|v| v * 0.25).collect()),
            tensor("b1", &[32], lcg(21, 32).iter().map(|v| v * 0.1).collect()),
            tensor("w2", &[10, 32], lcg(22, 320).iter().map(|v| v * 0.35).collect()),
            tensor("b2", &[10], lcg(23, 10).iter().map(|v| v * 0.1).collect()),
        ],
        13,
    );
    load("dense", &m)
}

fn load(tag: &str, m: &kiln::onnx::proto::ModelProto) -> Graph {
    let p = write_model(&format!("avr-{tag}"), m);
    kiln::load(&p, &ImportOptions::default(), &PipelineOptions::default(), |_, _| {})
        .unwrap()
        .graph
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Part {
    /// An AVR part simavr knows, by its avr-gcc `-mmcu` name.
    Avr(&'static str),
    CortexM4,
    /// The Cortex-M4F again, the model emitted as Rust source and built as a `no_std`
    /// staticlib for `thumbv7em-none-eabihf` behind a C-ABI `model_run`.
    CortexM4Rust,
    /// A Cortex-M3 (Armv7-M, no DSP extension, soft float) on QEMU's mps2-an385.
    CortexM3,
}

impl Part {
    fn name(self) -> &'static str {
        match self {
            Part::Avr(mcu) => mcu,
            Part::CortexM4 => "cortex-m4",
            Part::CortexM4Rust => "cortex-m4-rust",
            Part::CortexM3 => "cortex-m3",
        }
    }

    /// The simulated part it runs on.
    fn chip(self) -> onchip::Part {
        match self {
            Part::Avr(mcu) => onchip::Part::parse(mcu).expect("a known AVR part"),
            Part::CortexM4 | Part::CortexM4Rust => onchip::Part::CortexM4,
            Part::CortexM3 => onchip::Part::CortexM3,
        }
    }
}

/// Builds `g` as Rust source into a `no_std` staticlib `<dir>/libmodelrs.a` exporting
/// `model_run` with the C backend's signature, plus the matching `model.h`.
fn rust_staticlib(g: &Graph, name: &str, dir: &Path) -> Result<(), String> {
    let opts = CompileOptions {
        emit: Emit::RustSource,
        target: parse_target("cortex-m4").map_err(|e| e.to_string())?,
        prefix: "model".into(),
        static_arena: false,
    };
    let out = compile(g, &opts, name).map_err(|e| e.to_string())?;
    write_files(dir, &out.files, &[]).map_err(|e| e.to_string())?;
    let plan = kiln::compile::plan_rust(g, &opts.target).map_err(|e| e.to_string())?;
    let api = kiln_backends::header::Api::new(g, &plan, "model", name);
    std::fs::write(dir.join("model.h"), kiln_backends::header::c_header(&api)).map_err(|e| e.to_string())?;
    let ty = |v: kiln_ir::ValueId| kiln_backends::header::rust_type(g.value(v).ty.dtype.scalar);
    let mut params = Vec::new();
    let mut args = Vec::new();
    for (i, &v) in g.inputs().iter().enumerate() {
        params.push(format!("in{i}: *const {}", ty(v)));
        args.push(format!("&*(in{i} as *const [{}; model::INPUT{i}_COUNT])", ty(v)));
    }
    for (i, &v) in g.outputs().iter().enumerate() {
        params.push(format!("out{i}: *mut {}", ty(v)));
        args.push(format!("&mut *(out{i} as *mut [{}; model::OUTPUT{i}_COUNT])", ty(v)));
    }
    params.push("arena: *mut u8".into());
    args.push("&mut *(arena as *mut model::Arena)".into());
    let lib = format!(
        "#![no_std]\ninclude!(\"../model.rs\");\n\n#[panic_handler]\nfn panic(_: &core::panic::PanicInfo) -> ! {{\n    loop {{}}\n}}\n\n/// # Safety\n/// The buffers `model.h` describes.\n#[unsafe(no_mangle)]\npub unsafe extern \"C\" fn model_run({}) -> i32 {{\n    match unsafe {{ model::run({}) }} {{\n        Ok(()) => 0,\n        Err(e) => e,\n    }}\n}}\n",
        params.join(", "),
        args.join(", ")
    );
    std::fs::create_dir_all(dir.join("src")).map_err(|e| e.to_string())?;
    std::fs::write(dir.join("src/lib.rs"), lib).map_err(|e| e.to_string())?;
    std::fs::write(
        dir.join("Cargo.toml"),
        format!(
            "[package]\nname = \"modelrs\"\nversion = \"0.0.0\"\nedition = \"2024\"\npublish = false\n\n[lib]\ncrate-type = [\"staticlib\"]\n\n[dependencies]\nkiln-runtime = {{ path = {:?}, features = [\"arm-dsp\"] }}\n\n[profile.release]\npanic = \"abort\"\nopt-level = 2\ncodegen-units = 1\n\n[workspace]\n",
            repo().join("runtime").display().to_string()
        ),
    )
    .map_err(|e| e.to_string())?;
    let _ = std::fs::copy(repo().join("Cargo.lock"), dir.join("Cargo.lock"));
    let target_dir = repo().join("target/rust-cortex-m");
    // Every build here is the crate `modelrs` in one shared target directory: tests running
    // in parallel must not copy each other's library between `cargo build` and the copy.
    static BUILD: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one_at_a_time = BUILD.lock().unwrap_or_else(|e| e.into_inner());
    sh(Command::new(env!("CARGO"))
        .current_dir(dir)
        .args([
            "build",
            "--release",
            "--quiet",
            "--offline",
            "--target",
            "thumbv7em-none-eabihf",
        ])
        .env("CARGO_TARGET_DIR", &target_dir)
        .env("RUSTFLAGS", "-D warnings -C target-cpu=cortex-m4"))?;
    std::fs::copy(
        target_dir.join("thumbv7em-none-eabihf/release/libmodelrs.a"),
        dir.join("libmodelrs.a"),
    )
    .map_err(|e| e.to_string())?;
    Ok(())
}

/// Builds `g` for `part`, runs `model_run` once and reads back what it printed.
fn run_on(part: Part, name: &str, g: &Graph, inputs: &[Tensor], tools: &Tools, dir: &Path) -> Result<Run, String> {
    run_entry(part, name, g, inputs, false, tools, dir)
}

/// As `run_on`, or with `int` through `model_run_int` on integer `inputs`.
fn run_entry(
    part: Part,
    name: &str,
    g: &Graph,
    inputs: &[Tensor],
    int: bool,
    tools: &Tools,
    dir: &Path,
) -> Result<Run, String> {
    let dir = dir.join(format!("{}-{name}", part.name()));
    let code = if part == Part::CortexM4Rust {
        rust_staticlib(g, name, &dir)?;
        ModelCode::Library("libmodelrs.a".into())
    } else {
        ModelCode::C
    };
    let opts = RunOptions { int, per_layer: false };
    onchip::run(part.chip(), g, inputs, &code, opts, tools, &dir).map_err(|e| e.to_string())
}

/// Runs both nets on three inputs each on `part` and checks them against the evaluator.
/// A shipped model quantized to int8 on its calib/ data, its integer tensors exposed as
/// outputs, with its first reference input.
fn int8_model(name: &'static str) -> (&'static str, Graph, Vec<Vec<Tensor>>) {
    quantized_model(name, name, Default::default())
}

/// A shipped model with every product in 16x8 (`--int16 all`).
/// An int8 build with 4-bit weights (packed in flash, unpacked as read).
/// The int8 build of [`wide`], calibrated on pseudo-random data: bias-free products after a
/// ReLU, so the dense kernels subtract a nonzero input zero point at run time (nothing to
/// fold it into).
fn wide_int8(dir: &Path) -> (&'static str, Graph, Vec<Vec<Tensor>>) {
    let g = wide();
    let calib = dir.join("wide-calib");
    std::fs::create_dir_all(&calib).unwrap();
    kiln::npy::write(
        &calib.join("input_0.npy"),
        &Tensor::from_vec(vec![16, 100], lcg(40, 1600)),
    )
    .unwrap();
    let q = kiln::quantize::quantize_int8(&g, &calib, &Default::default(), |_, _| {}).unwrap();
    let q = kiln_tests::expose_integers(&q.graph);
    let sets = random_inputs(&q);
    ("wide_int8", q, sets)
}

/// An int8 net that takes every AVR product path: a 5x5 convolution over three channels
/// (buffer offsets past `LDD`'s 63, so streamed rows), a depthwise 3x3 (fixed offsets, pair
/// groups) and a 576-input dense layer whose sums need 32 bits (the generic kernel).
fn avr_paths_int8(dir: &Path) -> (&'static str, Graph, Vec<Vec<Tensor>>) {
    let m = model(
        vec![
            node(
                "Conv",
                "c5x5",
                &["x", "w1", "b1"],
                &["c"],
                vec![attr_ints("pads", &[2, 2, 2, 2])],
            ),
            node("Relu", "r1", &["c"], &["r"], vec![]),
            node(
                "Conv",
                "dw",
                &["r", "w2", "b2"],
                &["d"],
                vec![attr_ints("pads", &[1, 1, 1, 1]), attr_i("group", 4)],
            ),
            node("Relu", "r2", &["d"], &["e"], vec![]),
            node("Flatten", "flat", &["e"], &["f"], vec![]),
            node("Gemm", "fc", &["f", "w3", "b3"], &["y"], vec![attr_i("transB", 1)]),
        ],
        vec![fixed("x", &[1, 3, 12, 12])],
        vec![fixed("y", &[1, 4])],
        vec![
            tensor("w1", &[4, 3, 5, 5], lcg(50, 300)),
            tensor("b1", &[4], lcg(51, 4)),
            tensor("w2", &[4, 1, 3, 3], lcg(52, 36)),
            tensor("b2", &[4], lcg(53, 4)),
            tensor("w3", &[4, 576], lcg(54, 2304)),
            tensor("b3", &[4], lcg(55, 4)),
        ],
        13,
    );
    let g = load("paths", &m);
    let calib = dir.join("paths-calib");
    std::fs::create_dir_all(&calib).unwrap();
    kiln::npy::write(
        &calib.join("input_0.npy"),
        &Tensor::from_vec(vec![8, 3, 12, 12], lcg(56, 3456)),
    )
    .unwrap();
    let q = kiln::quantize::quantize_int8(&g, &calib, &Default::default(), |_, _| {}).unwrap();
    let q = kiln_tests::expose_integers(&q.graph);
    let sets = random_inputs(&q);
    ("avr_paths_int8", q, sets)
}

/// An int8 net over a 1-D signal: a strided 5-tap convolution over two channels into a
/// dense layer (the AVR convolution on `[N, C, W]` inputs).
fn avr_conv1d_int8(dir: &Path) -> (&'static str, Graph, Vec<Vec<Tensor>>) {
    let m = model(
        vec![
            node(
                "Conv",
                "c1d",
                &["x", "w1", "b1"],
                &["c"],
                vec![attr_ints("pads", &[2, 2]), attr_ints("strides", &[2])],
            ),
            node("Relu", "r", &["c"], &["r1"], vec![]),
            node("Flatten", "flat", &["r1"], &["f"], vec![]),
            node("Gemm", "fc", &["f", "w2", "b2"], &["y"], vec![attr_i("transB", 1)]),
        ],
        vec![fixed("x", &[1, 2, 16])],
        vec![fixed("y", &[1, 3])],
        vec![
            tensor("w1", &[3, 2, 5], lcg(60, 30)),
            tensor("b1", &[3], lcg(61, 3)),
            tensor("w2", &[3, 24], lcg(62, 72)),
            tensor("b2", &[3], lcg(63, 3)),
        ],
        13,
    );
    let g = load("conv1d", &m);
    let calib = dir.join("conv1d-calib");
    std::fs::create_dir_all(&calib).unwrap();
    kiln::npy::write(
        &calib.join("input_0.npy"),
        &Tensor::from_vec(vec![8, 2, 16], lcg(64, 256)),
    )
    .unwrap();
    let q = kiln::quantize::quantize_int8(&g, &calib, &Default::default(), |_, _| {}).unwrap();
    let q = kiln_tests::expose_integers(&q.graph);
    let sets = random_inputs(&q);
    ("avr_conv1d_int8", q, sets)
}

fn w4_model(name: &'static str, label: &'static str) -> (&'static str, Graph, Vec<Vec<Tensor>>) {
    let opts = kiln::quantize::QuantOptions {
        weight_bits: Some(4),
        ..Default::default()
    };
    quantized_model(name, label, opts)
}

fn int16_model(name: &'static str, label: &'static str) -> (&'static str, Graph, Vec<Vec<Tensor>>) {
    let opts = kiln::quantize::QuantOptions {
        int16: vec!["all".into()],
        ..Default::default()
    };
    quantized_model(name, label, opts)
}

fn quantized_model(
    name: &'static str,
    label: &'static str,
    qopts: kiln::quantize::QuantOptions,
) -> (&'static str, Graph, Vec<Vec<Tensor>>) {
    let dir = repo().join("tests/models").join(name);
    let mut opts = ImportOptions::default();
    if name.starts_with("rapidocr") {
        opts.input_shapes.insert("x".into(), vec![1, 3, 48, 192]);
    }
    let m = kiln::load(&dir.join("model.onnx"), &opts, &PipelineOptions::default(), |_, _| {}).unwrap();
    let q = kiln::quantize::quantize_int8(&m.graph, &dir.join("calib"), &qopts, |_, _| {}).unwrap();
    let g = kiln_tests::expose_integers(&q.graph);
    let set = dir.join("ref/test_data_set_0");
    let inputs = (0..g.inputs().len())
        .map(|i| kiln::npy::read(&set.join(format!("input_{i}.npy"))).unwrap())
        .collect();
    (label, g, vec![inputs])
}

/// A shipped float model with float16 weights (`--quantize fp16`), with its first reference
/// input.
fn fp16_model(name: &'static str, label: &'static str) -> (&'static str, Graph, Vec<Vec<Tensor>>) {
    data_free_model(name, label, |g| kiln::quantize::fp16::to_fp16(g).unwrap().graph)
}

/// A shipped float model in hybrid int8 (`--quantize dynamic`) with its first reference
/// input, and its hybrid ops alone (`label` + `_islands`) on the inputs the evaluator gives
/// them, whose results must match bit for bit.
fn dynamic_models(name: &'static str, label: &'static str) -> [(&'static str, Graph, Vec<Vec<Tensor>>); 2] {
    let whole = data_free_model(name, label, |g| {
        kiln::quantize::dynamic::to_dynamic(g, &[]).unwrap().graph
    });
    let (ig, sets) = kiln_tests::islands(&whole.1, &whole.2);
    let islands: &'static str = Box::leak(format!("{label}_islands").into_boxed_str());
    [whole, (islands, ig, sets)]
}

fn data_free_model(
    name: &'static str,
    label: &'static str,
    convert: impl Fn(&Graph) -> Graph,
) -> (&'static str, Graph, Vec<Vec<Tensor>>) {
    let dir = repo().join("tests/models").join(name);
    let m = kiln::load(
        &dir.join("model.onnx"),
        &ImportOptions::default(),
        &PipelineOptions::default(),
        |_, _| {},
    )
    .unwrap();
    let g = convert(&m.graph);
    let set = dir.join("ref/test_data_set_0");
    let inputs = (0..g.inputs().len())
        .map(|i| kiln::npy::read(&set.join(format!("input_{i}.npy"))).unwrap())
        .collect();
    (label, g, vec![inputs])
}

fn with_inputs(name: &str, g: Graph) -> (&str, Graph, Vec<Vec<Tensor>>) {
    let sets = random_inputs(&g);
    (name, g, sets)
}

/// Three pseudo-random input sets in [-1, 1).
fn random_inputs(g: &Graph) -> Vec<Vec<Tensor>> {
    (0..3u32)
        .map(|seed| {
            g.inputs()
                .iter()
                .map(|&v| {
                    let ty = &g.value(v).ty;
                    Tensor::from_vec(ty.shape.clone(), lcg(100 + seed, ty.numel()))
                })
                .collect()
        })
        .collect()
}

/// Runs each model on each of its input sets on `part` and checks it against the evaluator
/// (integer outputs, and every output of an `_islands` model, bit for bit).
fn check_part(part: Part, models: &[(&str, Graph, Vec<Vec<Tensor>>)], tools: &Tools) {
    let dir = std::env::temp_dir().join(format!("kiln-mcu-{}-{}", part.name(), std::process::id()));
    let mut failures = Vec::new();
    for (name, g, sets) in models {
        let res = (|| -> Result<String, String> {
            let mut worst = 0f64;
            let mut last = None;
            for (seed, inputs) in sets.iter().enumerate() {
                let want = kiln_ir::eval::run(g, inputs).map_err(|e| e.to_string())?;
                let run = run_on(part, &format!("{name}-{seed}"), g, inputs, tools, &dir)?;
                let (rtol, atol) = if name.ends_with("_islands") {
                    (0.0, 0.0)
                } else {
                    (RTOL, ATOL)
                };
                for (i, (got, w)) in run.outputs.iter().zip(&want).enumerate() {
                    let (r, a) = compare(got, w, rtol, atol).map_err(|e| format!("input {seed}: output {i}: {e}"))?;
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
            let r = last.ok_or("no input sets")?;
            let cost = match part {
                Part::Avr(_) => format!("{} cycles/inference ({:.2} ms at 16 MHz)", r.cost, r.cost as f64 / 16e3),
                Part::CortexM4 | Part::CortexM4Rust | Part::CortexM3 => format!("{} instructions/inference", r.cost),
            };
            Ok(format!(
                "{cost}, flash {} B, static RAM {} B + stack {} B; worst {worst:.3} of the bound",
                r.flash, r.ram, r.stack
            ))
        })();
        match res {
            Ok(s) => println!("{} {name}: {s}", part.name()),
            Err(e) => failures.push(format!("{name}: {e}")),
        }
    }
    if failures.is_empty() {
        let _ = std::fs::remove_dir_all(&dir);
    }
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        part.name(),
        failures.join("\n")
    );
}

#[test]
fn small_models_run_on_a_simulated_atmega328p() {
    let Some((tools, dir)) = avr_tools("avr-tools") else {
        return;
    };
    check_part(
        Part::Avr("atmega328p"),
        &[
            with_inputs("conv", conv_net()),
            with_inputs("mlp", mlp()),
            int8_model("digits_cnn"),
            w4_model("digits_cnn", "digits_w4"),
        ],
        &tools,
    );
    let mut big = vec![
        with_inputs("wide", wide()),
        wide_int8(&dir),
        avr_paths_int8(&dir),
        avr_conv1d_int8(&dir),
        fp16_model("digits_cnn", "digits_fp16"),
        int16_model("digits_cnn", "digits_16x8"),
    ];
    big.extend(dynamic_models("digits_cnn", "digits_dynamic"));
    check_part(Part::Avr("atmega2560"), &big, &tools);
    let _ = std::fs::remove_dir_all(&dir);
}

/// The tools of `parts` built into a fresh folder named by `tag` (returned, for the caller
/// to remove), or `None` when they are missing and not required.
fn tools(tag: &str, parts: &[onchip::Part]) -> Option<(Tools, PathBuf)> {
    let what = if parts[0].is_avr() { "AVR" } else { "Cortex-M" };
    let ok = parts
        .iter()
        .try_for_each(|&p| Tools::check(p))
        .map_err(|e| e.to_string());
    if !available(what, ok) {
        return None;
    }
    let dir = std::env::temp_dir().join(format!("kiln-{tag}-{}", std::process::id()));
    Some((Tools::build(parts, &dir).unwrap(), dir))
}

fn avr_tools(tag: &str) -> Option<(Tools, PathBuf)> {
    tools(tag, &[onchip::Part::Atmega328p])
}

fn cortex_m_tools(tag: &str) -> Option<(Tools, PathBuf)> {
    tools(tag, &[onchip::Part::CortexM4])
}

#[test]
fn small_models_run_on_a_cortex_m4_in_qemu() {
    let Some((tools, dir)) = cortex_m_tools("cm-tools") else {
        return;
    };
    let mut models = vec![
        with_inputs("conv", conv_net()),
        with_inputs("mlp", mlp()),
        with_inputs("wide", wide()),
        wide_int8(&dir),
        avr_paths_int8(&dir),
        avr_conv1d_int8(&dir),
        fp16_model("digits_cnn", "digits_fp16"),
        fp16_model("mlperf_tiny_kws_dscnn", "kws_fp16"),
    ];
    models.extend(dynamic_models("digits_cnn", "digits_dynamic"));
    models.extend(dynamic_models("mlperf_tiny_kws_dscnn", "kws_dynamic"));
    models.push(int16_model("digits_cnn", "digits_16x8"));
    models.push(int16_model("mlperf_tiny_kws_dscnn", "kws_16x8"));
    models.push(w4_model("mlperf_tiny_kws_dscnn", "kws_w4"));
    // The int8 builds of the shipped models, on their first reference input, integer
    // results compared byte for byte.
    for m in [
        "digits_cnn",
        "mlperf_tiny_ad_fc_autoencoder",
        "mlperf_tiny_kws_dscnn",
        "mlperf_tiny_sww_dscnn",
        "mlperf_tiny_ic_resnet8",
        "mlperf_tiny_vww_mobilenetv1_025",
        "rapidocr_cls_mobile_v2",
        "silero_vad_16k",
    ] {
        models.push(int8_model(m));
    }
    check_part(Part::CortexM4, &models, &tools);
    // The same builds as Rust source.
    let has_target = Command::new("rustc")
        .args(["--print", "target-libdir", "--target", "thumbv7em-none-eabihf"])
        .output()
        .ok()
        .and_then(|o| std::fs::read_dir(String::from_utf8_lossy(&o.stdout).trim()).ok())
        .is_some_and(|mut d| d.any(|e| e.is_ok_and(|e| e.file_name().to_string_lossy().starts_with("libcore-"))));
    let has_target = has_target
        .then_some(())
        .ok_or_else(|| "no thumbv7em-none-eabihf standard library (scripts/setup-embedded.sh adds it)".to_string());
    if available("Rust thumbv7em-none-eabihf", has_target) {
        check_part(Part::CortexM4Rust, &models, &tools);
    }
    let _ = std::fs::remove_dir_all(&dir);
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
        static_arena: false,
    };
    let e = compile(&g, &opts, "big").err().expect("must not fit").to_string();
    assert!(
        e.contains("atmega328p") && e.contains("40000") && e.contains("32768"),
        "{e}"
    );
    // The ATmega2560's 256 KB would hold it, but not as one AVR object (at most 32767 bytes).
    let opts = CompileOptions {
        target: parse_target("atmega2560").unwrap(),
        ..opts
    };
    let e = compile(&g, &opts, "big").err().expect("object too large").to_string();
    assert!(e.contains("`w`") && e.contains("40000") && e.contains("32767"), "{e}");
    // The three-layer net of 44 KB fits the ATmega2560 but not the ATmega328P.
    assert!(compile(&wide(), &opts, "wide").is_ok());
    let opts = CompileOptions {
        target: parse_target("atmega328p").unwrap(),
        ..opts
    };
    assert!(compile(&wide(), &opts, "wide").is_err());
    // Unknown part names list the known ones.
    let e = parse_target("atmega9999").expect_err("unknown").to_string();
    assert!(e.contains("atmega328p") && e.contains("cortex-m4"), "{e}");
}

/// The numbers after `key` on its line of a committed benchmark baseline.
fn baseline_row(baseline: &str, key: &str) -> Option<Vec<u64>> {
    baseline.lines().find_map(|l| {
        let rest = l.strip_prefix(key)?.strip_prefix(' ')?;
        rest.split_whitespace().map(|x| x.parse().ok()).collect()
    })
}

/// The int8 `.tflite` file of MLPerf Tiny model `m`, built as `kiln compile` builds it by
/// default, run on the Cortex-M4 (C) on every reference set: the first run, and whether
/// every output is TFLite's reference bytes.
fn tflite_file_run(m: &str, tools: &Tools, dir: &Path) -> Result<(Run, bool), String> {
    let file = match m {
        "mlperf_tiny_kws_dscnn" => "kws_ref_model.tflite",
        "mlperf_tiny_vww_mobilenetv1_025" => "vww_96_int8.tflite",
        "mlperf_tiny_ic_resnet8" => "pretrainedResnet_quant.tflite",
        "mlperf_tiny_ad_fc_autoencoder" => "ad01_int8.tflite",
        other => return Err(format!("no .tflite file known for {other}")),
    };
    let mdir = repo().join("tests/models").join(m);
    let model = kiln::load(
        &mdir.join("source").join(file),
        &ImportOptions::default(),
        &PipelineOptions::default(),
        |_, _| {},
    )
    .map_err(|e| e.to_string())?;
    let mode = kiln::quantize::Mode::default_for(&model.graph);
    let g = kiln::quantize::apply(&model.graph, &model.producer, &mode, &Default::default(), |_, _| {})
        .map_err(|e| e.to_string())?
        .graph;
    // every reference set; the first run's figures are the benchmark's
    let mut first = None;
    let mut exact = true;
    for k in (0..).take_while(|k| mdir.join(format!("ref_int8/test_data_set_{k}")).is_dir()) {
        let set = mdir.join(format!("ref_int8/test_data_set_{k}"));
        let input = kiln::npy::read(&set.join("input_0.npy")).unwrap();
        let want = kiln::npy::read(&set.join("output_0.npy")).unwrap();
        let run = run_on(Part::CortexM4, &format!("{m}-file{k}"), &g, &[input], tools, dir)?;
        exact &= run.outputs[0].to_i64_vec() == want.to_i64_vec();
        first.get_or_insert(run);
    }
    Ok((first.ok_or("no reference sets")?, exact))
}

/// The official MLPerf Tiny int8 models (`model_int8_qdq_tflite.onnx`, compiled as
/// `kiln compile --quantize int8`) on a Cortex-M4 (DSP kernels) and a Cortex-M3 (plain C):
/// outputs byte for byte the evaluator's (and with TFLite's numerics on the Cortex-M4,
/// TFLite's reference bytes), and instructions per inference against the
/// committed baseline `tests/mcu/bench-cortexm.txt` (exact counts, so a regression of more
/// than 5% fails). `KILN_UPDATE_BENCH=1` rewrites the baseline.
#[test]
fn official_int8_models_instruction_benchmark() {
    let Some((tools, dir)) = cortex_m_tools("cm-bench") else {
        return;
    };
    let baseline_path = repo().join("tests/mcu/bench-cortexm.txt");
    let baseline = std::fs::read_to_string(&baseline_path).unwrap_or_default();
    let want = |key: &str| baseline_row(&baseline, key)?.first().copied();
    let mut lines = vec![
        "# part model instructions/inference (tests/mcu.rs official_int8_models_instruction_benchmark)".to_string(),
    ];
    let mut failures = Vec::new();
    for m in [
        "mlperf_tiny_kws_dscnn",
        "mlperf_tiny_vww_mobilenetv1_025",
        "mlperf_tiny_ic_resnet8",
        "mlperf_tiny_ad_fc_autoencoder",
    ] {
        let mdir = repo().join("tests/models").join(m);
        let model = kiln::load(
            &mdir.join("model_int8_qdq_tflite.onnx"),
            &ImportOptions::default(),
            &PipelineOptions::default(),
            |_, _| {},
        )
        .unwrap();
        let g = kiln::quantize::qdq::quantize_model(&model.graph, None, &Default::default())
            .unwrap()
            .graph;
        let input = kiln::npy::read(&mdir.join("ref_int8_onnx/test_data_set_0/input_0.npy")).unwrap();
        let inputs = vec![input];
        let want_out = kiln_ir::eval::run(&g, &inputs).unwrap();
        let mut m4 = [0u64; 2]; // C, Rust source
        for part in [Part::CortexM4, Part::CortexM4Rust, Part::CortexM3] {
            let key = format!("{} {}", part.name(), m.trim_start_matches("mlperf_tiny_"));
            match run_on(part, m, &g, &inputs, &tools, &dir) {
                Ok(run) => {
                    for (got, w) in run.outputs.iter().zip(&want_out) {
                        if got.data.to_le_bytes() != w.data.to_le_bytes() {
                            failures.push(format!("{key}: output differs from the evaluator"));
                        }
                    }
                    println!("{key}: {} instructions, flash {} B", run.cost, run.flash);
                    if let Some(base) = want(&key)
                        && run.cost * 100 > base * 105
                    {
                        failures.push(format!(
                            "{key}: {} instructions, baseline {base} (+5% allowed)",
                            run.cost
                        ));
                    }
                    lines.push(format!("{key} {}", run.cost));
                    match part {
                        Part::CortexM4 => m4[0] = run.cost,
                        Part::CortexM4Rust => m4[1] = run.cost,
                        _ => {}
                    }
                }
                Err(e) => failures.push(format!("{key}: {e}")),
            }
        }
        // TFLite's numerics on the Cortex-M4 (C): TFLite's reference bytes (`ref_int8/`)
        {
            let opts = kiln::quantize::QuantOptions {
                numerics: Some(kiln_ir::op::Numerics::Tflite),
                ..Default::default()
            };
            let gt = kiln::quantize::qdq::quantize_model(&model.graph, None, &opts)
                .unwrap()
                .graph;
            let tin = kiln::npy::read(&mdir.join("ref_int8/test_data_set_0/input_0.npy")).unwrap();
            let twant = kiln::npy::read(&mdir.join("ref_int8/test_data_set_0/output_0.npy")).unwrap();
            let key = format!("cortex-m4-tflite {}", m.trim_start_matches("mlperf_tiny_"));
            match run_on(Part::CortexM4, &format!("{m}-tflite"), &gt, &[tin], &tools, &dir) {
                Ok(run) => {
                    if run.outputs[0].to_i64_vec() != twant.to_i64_vec() {
                        failures.push(format!("{key}: output is not TFLite's reference bytes"));
                    }
                    println!("{key}: {} instructions, flash {} B", run.cost, run.flash);
                    if let Some(base) = want(&key)
                        && run.cost * 100 > base * 105
                    {
                        failures.push(format!(
                            "{key}: {} instructions, baseline {base} (+5% allowed)",
                            run.cost
                        ));
                    }
                    lines.push(format!("{key} {}", run.cost));
                }
                Err(e) => failures.push(format!("{key}: {e}")),
            }
        }
        // The `.tflite` file itself (TFLite numerics by default): TFLite's bytes, and no more
        // instructions than its ONNX QDQ conversion above
        if let Some(qdq_cost) = lines.last().and_then(|l| l.rsplit(' ').next()?.parse::<u64>().ok()) {
            let key = format!("cortex-m4-tflite-file {}", m.trim_start_matches("mlperf_tiny_"));
            match tflite_file_run(m, &tools, &dir) {
                Ok((run, exact)) => {
                    if !exact {
                        failures.push(format!("{key}: output is not TFLite's reference bytes"));
                    }
                    println!("{key}: {} instructions, flash {} B", run.cost, run.flash);
                    if run.cost > qdq_cost {
                        failures.push(format!(
                            "{key}: {} instructions, more than the ONNX QDQ conversion's {qdq_cost}",
                            run.cost
                        ));
                    }
                    lines.push(format!("{key} {}", run.cost));
                }
                Err(e) => failures.push(format!("{key}: {e}")),
            }
        }
        // The Rust-source build stays within 1.3x of the C build's instructions.
        if m4[0] > 0 && m4[1] * 10 > m4[0] * 13 {
            failures.push(format!(
                "{m}: Rust source {} instructions, {:.2}x the C build's {} (1.3x allowed)",
                m4[1],
                m4[1] as f64 / m4[0] as f64,
                m4[0]
            ));
        }
    }
    if std::env::var_os("KILN_UPDATE_BENCH").is_some() {
        std::fs::write(&baseline_path, lines.join("\n") + "\n").unwrap();
    }
    // KILN_KEEP_BENCH=1 keeps the programs (`<tmp>/kiln-avr-bench-<pid>`) for profiling
    if std::env::var_os("KILN_KEEP_BENCH").is_none() {
        let _ = std::fs::remove_dir_all(&dir);
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Int8 builds on a simulated ATmega328P through `model_run_int` (the integer entry point,
/// so no soft-float boundary): the dense 64 -> 32 -> 10 network, the digits CNN and its 4-bit
/// build. Outputs byte for byte the evaluator's; cycles, flash and RAM (static + stack)
/// against the committed baseline `tests/mcu/bench-avr.txt` (exact, so more than 5% over
/// fails; `KILN_UPDATE_BENCH=1` rewrites it), and cycles within issue 16's targets. Prints
/// cycles per kernel.
#[test]
fn avr_int8_cycle_benchmark() {
    let Some((tools, dir)) = avr_tools("avr-bench") else {
        return;
    };
    let dense = {
        let g = dense_64_32_10();
        let calib = dir.join("dense-calib");
        std::fs::create_dir_all(&calib).unwrap();
        kiln::npy::write(
            &calib.join("input_0.npy"),
            &Tensor::from_vec(vec![32, 64], lcg(41, 2048)),
        )
        .unwrap();
        let q = kiln::quantize::quantize_int8(&g, &calib, &Default::default(), |_, _| {}).unwrap();
        let sets = random_inputs(&q.graph);
        ("dense_64_32_10", q.graph, sets)
    };
    let digits = |label: &'static str, bits: Option<u8>| {
        let mdir = repo().join("tests/models/digits_cnn");
        let m = kiln::load(
            &mdir.join("model.onnx"),
            &ImportOptions::default(),
            &PipelineOptions::default(),
            |_, _| {},
        )
        .unwrap();
        let opts = kiln::quantize::QuantOptions {
            weight_bits: bits,
            ..Default::default()
        };
        let q = kiln::quantize::quantize_int8(&m.graph, &mdir.join("calib"), &opts, |_, _| {}).unwrap();
        let input = kiln::npy::read(&mdir.join("ref/test_data_set_0/input_0.npy")).unwrap();
        (label, q.graph, vec![vec![input]])
    };
    // (model, multiply-adds, issue 16's cycle target)
    let models = [
        (dense, 2368u64, Some(40_000u64)),
        (digits("digits_cnn", None), 5888, Some(150_000)),
        (digits("digits_w4", Some(4)), 5888, Some(195_000)),
    ];
    let baseline_path = repo().join("tests/mcu/bench-avr.txt");
    let baseline = std::fs::read_to_string(&baseline_path).unwrap_or_default();
    let want = |key: &str| baseline_row(&baseline, key);
    let mut lines = vec!["# part model cycles flash ram+stack (tests/mcu.rs avr_int8_cycle_benchmark)".to_string()];
    let mut failures = Vec::new();
    let part = Part::Avr("atmega328p");
    for ((name, g, sets), macs, target) in models {
        let key = format!("atmega328p {name}");
        let (inputs, want_out) = onchip::int_ports(&g, &sets[0]).unwrap().expect("an integer boundary");
        let run = match run_entry(part, name, &g, &inputs, true, &tools, &dir) {
            Ok(r) => r,
            Err(e) => {
                failures.push(format!("{key}: {e}"));
                continue;
            }
        };
        for (got, w) in run.outputs.iter().zip(&want_out) {
            if got.data.to_le_bytes() != w.data.to_le_bytes() {
                failures.push(format!(
                    "{key}: output differs from the evaluator: {:?} vs {:?}",
                    got.to_f64_vec(),
                    w.to_f64_vec()
                ));
            }
        }
        let ram = run.ram + run.stack;
        let per_layer: Vec<String> = run.layers.iter().map(|l| format!("k{} {}", l.kernel, l.cost)).collect();
        println!(
            "{key}: {} cycles ({:.1} per MAC), flash {} B, RAM {} B + stack {} B; per kernel: {}",
            run.cost,
            run.cost as f64 / macs as f64,
            run.flash,
            run.ram,
            run.stack,
            per_layer.join(", ")
        );
        let got = [run.cost, run.flash as u64, ram as u64];
        if let Some(base) = want(&key) {
            for ((what, g), b) in ["cycles", "flash", "RAM"].iter().zip(got).zip(base) {
                if g * 100 > b * 105 {
                    failures.push(format!("{key}: {what} {g}, baseline {b} (+5% allowed)"));
                }
            }
        }
        if let Some(target) = target
            && run.cost > target
        {
            failures.push(format!("{key}: {} cycles, issue 16's target {target}", run.cost));
        }
        lines.push(format!("{key} {} {} {ram}", run.cost, run.flash));
    }
    if std::env::var_os("KILN_UPDATE_BENCH").is_some() {
        std::fs::write(&baseline_path, lines.join("\n") + "\n").unwrap();
    }
    // KILN_KEEP_BENCH=1 keeps the programs (`<tmp>/kiln-avr-bench-<pid>`) for profiling
    if std::env::var_os("KILN_KEEP_BENCH").is_none() {
        let _ = std::fs::remove_dir_all(&dir);
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

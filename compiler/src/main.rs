//! `kiln`, the command-line driver. Argument parsing and reporting live here; all compiler
//! work is in the library so `build.rs` users get the same behaviour.

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use kiln::onnx::proto::ModelProto;
use kiln::{ImportOptions, PipelineOptions};
use kiln_ir::{Graph, ValueDef, analysis};
use prost::Message;
use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};

#[derive(Parser)]
#[command(name = "kiln", version, about = "Ahead-of-time compiler from ONNX to static code")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(clap::Args, Clone, Default)]
struct ShapeArgs {
    /// Pin an input's shape: NAME=D0,D1,... (repeatable).
    #[arg(long = "input-shape", value_name = "NAME=DIMS")]
    input_shape: Vec<String>,
    /// Freeze an input to the value in a .npy file, compiling it in as a constant (repeatable).
    #[arg(long = "bind", value_name = "NAME=FILE")]
    bind: Vec<String>,
}

#[derive(Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
enum QuantMode {
    /// Keep the model in float.
    #[default]
    None,
    /// Full integer: int8 weights and activations, calibrated on --calibrate data.
    Int8,
    /// Reduced float: Conv/Gemm/MatMul weights as float16, f32 arithmetic (no data needed).
    Fp16,
    /// Hybrid: Conv/Gemm/MatMul weights as int8, activations quantized at run time, float
    /// everywhere else (no data needed).
    Dynamic,
}

#[derive(clap::Args, Clone, Default)]
struct QuantArgs {
    /// Quantization mode. Default: a model that carries its own quantization (QDQ,
    /// QOperator) becomes integer code with its parameters (as `int8` without data), any
    /// other stays float; `none` keeps such a model as the float arithmetic its ops define.
    #[arg(long, value_enum)]
    quantize: Option<QuantMode>,
    /// Calibration data: a directory with input_K.npy per graph input, samples on axis 0.
    #[arg(long, value_name = "DIR")]
    calibrate: Option<PathBuf>,
    /// Leave these nodes (by name) or op types in float (repeatable).
    #[arg(long = "keep-float", value_name = "NODE|OPTYPE")]
    keep_float: Vec<String>,
    /// Run these Conv/Gemm/MatMul nodes (by name), op types, or `all` of them with int16
    /// activations and int8 weights (16x8), for accuracy-sensitive layers (repeatable).
    #[arg(long = "int16", value_name = "NODE|OPTYPE|all")]
    int16: Vec<String>,
    /// How activation ranges are chosen from the calibration data.
    #[arg(long = "calibration-method", value_enum, default_value = "auto")]
    method: MethodArg,
    /// One weight scale per tensor instead of one per output channel.
    #[arg(long = "per-tensor-weights")]
    per_tensor_weights: bool,
    /// Reuse (or create) a calibration cache file.
    #[arg(long = "calibration-cache", value_name = "FILE")]
    calibration_cache: Option<PathBuf>,
    /// Width of Conv/Gemm/MatMul weights in a full-integer build: 8, or 4 or 2 (symmetric
    /// per channel, stored packed two or four to a byte).
    #[arg(long = "weight-bits", value_parser = ["8", "4", "2"])]
    weight_bits: Option<String>,
    /// Mixed precision: the lowest output SQNR (dB, against float on the calibration data)
    /// allowed; each Conv/Gemm/MatMul gets the smallest of 4-bit weights, int8, 16x8 or
    /// float that stays within it (the choice per layer is printed).
    #[arg(long = "accuracy-budget", value_name = "DB")]
    accuracy_budget: Option<f64>,
    /// With a model that carries its own quantization (QDQ, QOperator): fail instead of
    /// leaving any part of it in float.
    #[arg(long = "strict-integer")]
    strict_integer: bool,
    /// Tail percentile kept by `--calibration-method percentile`.
    #[arg(long, default_value_t = 99.999)]
    percentile: f64,
    /// Whose integer arithmetic to reproduce bit for bit: ONNX Runtime's or TFLite's
    /// reference kernels' (TFLite Micro, CMSIS-NN). Default: the model's origin when it
    /// carries its own quantization (TFLite's for a tf2onnx conversion), else onnx.
    #[arg(long, value_enum)]
    numerics: Option<NumericsArg>,
    /// Scale the channels of each activation that feeds a depthwise convolution to a common
    /// range (int8); `auto`: only when it lowers the error on held-out calibration samples.
    #[arg(long, value_enum, default_value = "off")]
    equalize: Switch,
    /// Move each product's bias so its channel means match float on the calibration data
    /// (int8); `auto`: only when it lowers the error on held-out calibration samples.
    #[arg(long = "bias-correction", value_enum, default_value = "off")]
    bias_correction: Switch,
    /// Round weights to the steps that minimize each layer's output error on the calibration
    /// data, not to the nearest; `auto`: only when it lowers the error on held-out
    /// calibration samples. Default: on with 4- and 2-bit weights, off at 8 bits.
    #[arg(long = "weight-rounding", value_enum)]
    weight_rounding: Option<Switch>,
}

/// A refinement off, on, or left to held-out calibration data.
#[derive(Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
enum Switch {
    #[default]
    Off,
    On,
    Auto,
}

impl Switch {
    fn get(self) -> kiln::quantize::refine::Refine {
        use kiln::quantize::refine::Refine;
        match self {
            Switch::Off => Refine::Off,
            Switch::On => Refine::On,
            Switch::Auto => Refine::Auto,
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum NumericsArg {
    Onnx,
    Tflite,
}

#[derive(Clone, Copy, Default, clap::ValueEnum)]
enum MethodArg {
    /// Try each method; keep the one whose int8 outputs best match float on the data.
    #[default]
    Auto,
    Minmax,
    Percentile,
    Entropy,
    Mse,
}

#[derive(Clone, Copy, PartialEq, clap::ValueEnum)]
enum EmitArg {
    Object,
    C,
    /// Rust source (a module using the `kiln-runtime` crate).
    Rust,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum BenchEmit {
    Eval,
    Object,
    /// The C backend's source, built with the system `cc -O2`.
    C,
}

#[derive(Subcommand)]
enum Cmd {
    /// Summarize a model: ops, parameters, MACs and activation sizes per layer.
    Inspect {
        model: PathBuf,
        #[command(flatten)]
        shapes: ShapeArgs,
    },
    /// Run a model on .npy inputs with the reference evaluator.
    Eval {
        model: PathBuf,
        #[command(flatten)]
        shapes: ShapeArgs,
        #[command(flatten)]
        quant: QuantArgs,
        /// Input .npy files, in graph input order.
        #[arg(long = "input", required = true)]
        inputs: Vec<PathBuf>,
        /// Output .npy files, in graph output order.
        #[arg(long = "output", required = true)]
        outputs: Vec<PathBuf>,
    },
    /// Accuracy and size of a quantized build against the float model: SQNR per layer on the
    /// calibration data, weight bytes, and end-to-end agreement (accuracy too when the
    /// evaluation folder has labels.npy).
    Report {
        model: PathBuf,
        #[command(flatten)]
        shapes: ShapeArgs,
        #[command(flatten)]
        quant: QuantArgs,
        /// Evaluation data, laid out like calibration data (default: the calibration data).
        #[arg(long, value_name = "DIR")]
        eval: Option<PathBuf>,
    },
    /// Print the IR after import and the pass pipeline.
    Dump {
        model: PathBuf,
        #[command(flatten)]
        shapes: ShapeArgs,
        #[command(flatten)]
        quant: QuantArgs,
        /// Also print the IR after this pass (repeatable).
        #[arg(long = "print-after")]
        print_after: Vec<String>,
        /// Stop the pipeline after this pass.
        #[arg(long = "stop-after")]
        stop_after: Option<String>,
    },
    /// Time inference with the reference evaluator; prints the median per inference.
    Bench {
        model: PathBuf,
        #[command(flatten)]
        shapes: ShapeArgs,
        #[command(flatten)]
        quant: QuantArgs,
        /// Input .npy files in graph order (default: a fixed pseudo-random input).
        #[arg(long = "input")]
        inputs: Vec<PathBuf>,
        /// Timed runs (after one warm-up run), 1 to 1,000,000.
        #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
        runs: u32,
        /// What to time: the reference evaluator, or the model compiled to a native object.
        #[arg(long, value_enum, default_value = "eval")]
        emit: BenchEmit,
        /// CPU features the native object may assume (as for `compile`).
        #[arg(long = "target-cpu")]
        target_cpu: Option<String>,
        /// C compiler flags for `--emit c` (default: -O2), e.g. "-O3 -march=native".
        #[arg(long, allow_hyphen_values = true)]
        cflags: Option<String>,
    },
    /// Compile a model: `--emit object` writes <prefix>.o, lib<prefix>.a, <prefix>.h, <prefix>.rs;
    /// `--emit c` writes <prefix>.c and <prefix>.h; `--emit rust` writes <prefix>.rs.
    Compile {
        model: PathBuf,
        #[command(flatten)]
        shapes: ShapeArgs,
        #[command(flatten)]
        quant: QuantArgs,
        /// What to emit.
        #[arg(long, value_enum, default_value = "object")]
        emit: EmitArg,
        /// Target triple (e.g. x86_64-unknown-linux-gnu, aarch64-unknown-linux-gnu) or `host`.
        #[arg(long, default_value = "host")]
        target: String,
        /// CPU features a native object may assume beyond the portable default (x86-64-v2 on
        /// x86-64): `native` (this machine's), an x86-64 level (x86-64-v3, x86-64-v4) and/or
        /// `+feature` items, comma-separated (e.g. `x86-64-v3,+avx512vnni`, `+dotprod`). The
        /// object checks them on its first run and returns an error code on a CPU without them.
        #[arg(long = "target-cpu")]
        target_cpu: Option<String>,
        /// Symbol prefix (default: from the model file name).
        #[arg(long)]
        prefix: Option<String>,
        /// Output directory.
        #[arg(short = 'o', long = "out-dir", default_value = ".")]
        out_dir: PathBuf,
        /// Also write the generated Cranelift IR to <prefix>.clif.
        #[arg(long)]
        clif: bool,
    },
    /// List supported ONNX operators and TFLite builtins.
    Ops {
        /// Print SUPPORTED_OPS.md.
        #[arg(long)]
        markdown: bool,
    },
}

fn import_options(s: &ShapeArgs) -> Result<ImportOptions> {
    let mut input_shapes = HashMap::new();
    for spec in &s.input_shape {
        let (name, dims) = spec
            .split_once('=')
            .with_context(|| format!("--input-shape `{spec}`: expected NAME=D0,D1,..."))?;
        let dims = dims
            .split(',')
            .filter(|d| !d.is_empty())
            .map(|d| d.trim().parse::<usize>())
            .collect::<Result<Vec<_>, _>>()
            .with_context(|| format!("--input-shape `{spec}`: dimensions must be non-negative integers"))?;
        input_shapes.insert(name.to_string(), dims);
    }
    let mut constant_inputs = HashMap::new();
    for spec in &s.bind {
        let (name, file) = spec
            .split_once('=')
            .with_context(|| format!("--bind `{spec}`: expected NAME=FILE.npy"))?;
        constant_inputs.insert(name.to_string(), kiln::npy::read(Path::new(file))?);
    }
    Ok(ImportOptions {
        input_shapes,
        constant_inputs,
    })
}

/// Flags that only make sense in some quantization modes, against the mode in effect.
fn check_quant_flags(quant: &QuantArgs, mode: QuantMode) -> Result<()> {
    if !quant.int16.is_empty() && mode != QuantMode::Int8 {
        bail!("--int16 selects 16x8 layers of a full-integer build: it needs --quantize int8");
    }
    if !quant.keep_float.is_empty() && !matches!(mode, QuantMode::Int8 | QuantMode::Dynamic) {
        bail!("--keep-float needs --quantize int8 or --quantize dynamic");
    }
    if quant.accuracy_budget.is_some() && mode != QuantMode::Int8 {
        bail!("--accuracy-budget chooses precisions within a full-integer build: it needs --quantize int8");
    }
    if quant.accuracy_budget.is_some_and(|b| !b.is_finite()) {
        bail!("--accuracy-budget must be a finite number of dB");
    }
    if quant.weight_bits.is_some() && mode != QuantMode::Int8 {
        bail!("--weight-bits sets the weight width of a full-integer build: it needs --quantize int8");
    }
    if quant.strict_integer && mode != QuantMode::Int8 {
        bail!("--strict-integer applies to integer builds of quantized models: it needs --quantize int8");
    }
    Ok(())
}

/// Loads a model and, when asked, quantizes it on the calibration data.
fn load_quantized(model: &Path, shapes: &ShapeArgs, quant: &QuantArgs) -> Result<kiln::Model> {
    let mut m = load(model, shapes, &PipelineOptions::default())?;
    let own = kiln::quantize::qdq::is_quantized(&m.graph);
    let mode = match quant.quantize {
        Some(q) => q,
        None if own => {
            eprintln!(
                "note: the model carries its own quantization: compiled to integer code with its parameters (--quantize none keeps the float arithmetic its quantize/dequantize steps define)"
            );
            QuantMode::Int8
        }
        None => QuantMode::None,
    };
    let quant = &QuantArgs {
        quantize: Some(mode),
        ..quant.clone()
    };
    check_quant_flags(quant, mode)?;
    let refuse_data = |what: &str| match quant.calibrate {
        Some(_) => bail!("--quantize {what} needs no calibration data; drop --calibrate"),
        None => Ok(()),
    };
    use kiln::quantize::Mode;
    let how = match mode {
        QuantMode::None => {
            if quant.calibrate.is_some() {
                bail!("--calibrate needs --quantize int8");
            }
            if own {
                eprintln!(
                    "note: the model carries its own quantization (QuantizeLinear/DequantizeLinear); it is compiled as the float arithmetic those ops define. --quantize int8 gives integer code with the model's parameters"
                );
            }
            Mode::Float
        }
        QuantMode::Int8 if own => Mode::Model {
            calibration: quant.calibrate.clone(),
        },
        QuantMode::Fp16 => {
            refuse_data("fp16")?;
            Mode::Fp16
        }
        QuantMode::Dynamic => {
            refuse_data("dynamic")?;
            Mode::Dynamic
        }
        QuantMode::Int8 => Mode::Int8 {
            calibration: quant.calibrate.clone().context(
                "--quantize int8 needs calibration data: --calibrate DIR (or a model quantized by its authors)",
            )?,
        },
    };
    let opts = quant_options(quant)?;
    let start = std::time::Instant::now();
    let q = kiln::quantize::apply(&m.graph, &m.producer, &how, &opts, |done, total| {
        if start.elapsed().as_secs() >= 2 && (done % 10 == 0 || done == total) {
            eprint!("\rcalibrating: {done}/{total}");
            if done == total {
                eprintln!();
            }
        }
    })?;
    for n in &q.notes {
        eprintln!("note: {n}");
    }
    m.graph = q.graph;
    Ok(m)
}

/// The full-integer options the command line gives.
fn quant_options(quant: &QuantArgs) -> Result<kiln::quantize::QuantOptions> {
    use kiln::quantize::calibrate::Method;
    if !(50.0..=100.0).contains(&quant.percentile) {
        bail!("--percentile must be between 50 and 100");
    }
    Ok(kiln::quantize::QuantOptions {
        keep_float: quant.keep_float.clone(),
        method: match quant.method {
            MethodArg::Auto => None,
            MethodArg::Minmax => Some(Method::MinMax),
            MethodArg::Percentile => Some(Method::Percentile(quant.percentile)),
            MethodArg::Entropy => Some(Method::Entropy),
            MethodArg::Mse => Some(Method::Mse),
        },
        cache: quant.calibration_cache.clone(),
        per_tensor_weights: quant.per_tensor_weights,
        int16: quant.int16.clone(),
        strict_integer: quant.strict_integer,
        weight_bits: quant
            .weight_bits
            .as_deref()
            .map(|b| b.parse().expect("checked by clap")),
        weight_bits_of: Vec::new(),
        accuracy_budget: quant.accuracy_budget,
        numerics: quant.numerics.map(|n| match n {
            NumericsArg::Onnx => kiln_ir::op::Numerics::Onnx,
            NumericsArg::Tflite => kiln_ir::op::Numerics::Tflite,
        }),
        equalize: quant.equalize.get(),
        bias_correction: quant.bias_correction.get(),
        weight_rounding: quant.weight_rounding.map(Switch::get),
    })
}

fn load(model: &Path, shapes: &ShapeArgs, pipeline: &PipelineOptions) -> Result<kiln::Model> {
    let m = kiln::load(model, &import_options(shapes)?, pipeline, |pass, g| {
        let dump = kiln_ir::text::dump(g).unwrap_or_else(|e| e.to_string());
        // a closed pipe ends the dump; the command's own output then reports it
        let _ = write!(std::io::stdout(), "// after {pass}\n{dump}");
    })?;
    for n in &m.notices {
        eprintln!("note: {n}");
    }
    Ok(m)
}

fn human(n: u64) -> String {
    match n {
        n if n >= 10_000_000 => format!("{:.1}M", n as f64 / 1e6),
        n if n >= 10_000 => format!("{:.1}k", n as f64 / 1e3),
        n => n.to_string(),
    }
}

fn report(path: &Path, shapes: &ShapeArgs, quant: &QuantArgs, eval: Option<&Path>) -> Result<()> {
    use kiln::quantize::calibrate::CalibrationSet;
    let mut quant = quant.clone();
    if matches!(quant.quantize, None | Some(QuantMode::None)) {
        quant.quantize = Some(QuantMode::Int8);
    }
    let float = load(path, shapes, &PipelineOptions::default())?.graph;
    let mode = match quant.quantize {
        Some(QuantMode::Fp16) => "float16",
        Some(QuantMode::Dynamic) => "hybrid int8",
        _ => "int8",
    };
    // Data-free modes use the data only to measure.
    let mut build = quant.clone();
    if matches!(quant.quantize, Some(QuantMode::Fp16 | QuantMode::Dynamic)) {
        build.calibrate = None;
    }
    let int8 = load_quantized(path, shapes, &build)?.graph;
    let mix = kiln::quantize::report::precision_mix(&int8);
    // a build that is not plain int8 (4-bit weights, 16x8 layers, float ones) says so
    let mode = if mode == "int8" && mix.split(", ").any(|p| !p.ends_with(" int8")) {
        "quantized"
    } else {
        mode
    };
    writeln!(std::io::stdout(), "products: {mix}")?;
    let calib = CalibrationSet::load(
        &float,
        quant.calibrate.as_deref().context("report needs --calibrate DIR")?,
    )?;
    let pick = |set: &CalibrationSet, max: usize| -> Vec<Vec<kiln_ir::Tensor>> {
        let n = set.samples.min(max);
        (0..n).map(|i| set.sample(&float, i * set.samples / n)).collect()
    };
    let samples = pick(&calib, 32);
    writeln!(
        std::io::stdout(),
        "per-layer SQNR of the {mode} value against the float one ({} calibration samples):",
        samples.len()
    )?;
    for (name, db) in kiln::quantize::report::layer_sqnr(&float, &int8, &samples)? {
        writeln!(std::io::stdout(), "  {db:7.1} dB  {name}")?;
    }
    let (wf, wq) = (analysis::constant_bytes(&float), analysis::constant_bytes(&int8));
    writeln!(
        std::io::stdout(),
        "weights: float {wf} bytes, {mode} {wq} bytes ({:.2}x smaller)",
        wf as f64 / wq.max(1) as f64
    )?;
    let (set, what) = match eval {
        Some(d) => (CalibrationSet::load(&float, d)?, d.display().to_string()),
        None => (calib, "the calibration data".to_string()),
    };
    let labels = eval
        .map(|d| d.join("labels.npy"))
        .filter(|p| p.exists())
        .map(|p| kiln::npy::read(&p).map(|t| t.to_i64_vec()))
        .transpose()?;
    let classifier = float
        .producer(float.outputs()[0])
        .is_some_and(|n| matches!(float.node(n).op, kiln_ir::Op::Softmax { .. }));
    let argmax = |v: &[f64]| {
        v.iter()
            .enumerate()
            .fold((0, f64::NEG_INFINITY), |b, (i, &x)| if x > b.1 { (i, x) } else { b })
            .0
    };
    let (mut agree, mut right_f, mut right_q, mut max_abs, mut sum_abs, mut count) = (0, 0, 0, 0f64, 0f64, 0usize);
    for i in 0..set.samples {
        let x = set.sample(&float, i);
        let f = kiln_ir::eval::run(&float, &x)?[0].to_f64_vec();
        let q = kiln_ir::eval::run(&int8, &x)?[0].to_f64_vec();
        let (af, aq) = (argmax(&f), argmax(&q));
        agree += (af == aq) as usize;
        if let Some(l) = &labels {
            right_f += (af as i64 == l[i]) as usize;
            right_q += (aq as i64 == l[i]) as usize;
        }
        for (a, b) in q.iter().zip(&f) {
            max_abs = max_abs.max((a - b).abs());
            sum_abs += (a - b).abs();
            count += 1;
        }
    }
    let n = set.samples;
    writeln!(
        std::io::stdout(),
        "end to end on {what} ({n} samples): max abs error {max_abs:.4}, mean abs error {:.5}",
        sum_abs / count.max(1) as f64
    )?;
    if classifier {
        writeln!(
            std::io::stdout(),
            "  top-1 agreement with float: {agree}/{n} ({:.1}%)",
            100.0 * agree as f64 / n as f64
        )?;
    }
    if labels.is_some() {
        writeln!(
            std::io::stdout(),
            "  accuracy: float {:.2}%, {mode} {:.2}%",
            100.0 * right_f as f64 / n as f64,
            100.0 * right_q as f64 / n as f64
        )?;
    }
    Ok(())
}

/// The ONNX file's own figures: producer, opsets and node counts.
fn inspect_onnx_header(path: &Path, bytes: &[u8]) -> Result<()> {
    let proto = ModelProto::decode(bytes).with_context(|| format!("{} is not a valid ONNX model", path.display()))?;
    let g = proto
        .graph
        .as_ref()
        .with_context(|| format!("{} has no graph", path.display()))?;
    let opsets: Vec<String> = proto
        .opset_import
        .iter()
        .map(|o| {
            format!(
                "{}:{}",
                if o.domain.is_empty() { "ai.onnx" } else { &o.domain },
                o.version
            )
        })
        .collect();
    writeln!(
        std::io::stdout(),
        "model     {} ({} bytes, producer {} {}, opsets {})",
        path.display(),
        bytes.len(),
        proto.producer_name,
        proto.producer_version,
        opsets.join(" ")
    )?;
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for n in &g.node {
        *counts.entry(&n.op_type).or_default() += 1;
    }
    let list: Vec<String> = counts.iter().map(|(k, v)| format!("{k} x{v}")).collect();
    writeln!(
        std::io::stdout(),
        "onnx ops  {} nodes: {}",
        g.node.len(),
        list.join(", ")
    )?;
    Ok(())
}

fn inspect(path: &Path, shapes: &ShapeArgs) -> Result<()> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    if kiln::tflite::is_tflite(&bytes) {
        let (head, counts) = kiln::tflite::summary(&bytes)
            .map_err(|e| anyhow::anyhow!("{} is not a valid TFLite model: {e}", path.display()))?;
        writeln!(
            std::io::stdout(),
            "model     {} ({} bytes, {head})",
            path.display(),
            bytes.len()
        )?;
        let total: usize = counts.iter().map(|c| c.1).sum();
        let list: Vec<String> = counts.iter().map(|(k, v)| format!("{k} x{v}")).collect();
        writeln!(std::io::stdout(), "tflite ops {total} operators: {}", list.join(", "))?;
    } else {
        inspect_onnx_header(path, &bytes)?;
    }
    let model = match load(path, shapes, &PipelineOptions::default()) {
        Ok(m) => m,
        Err(e) => {
            // what the file declares, symbolic dimensions by name, when the import stops
            for (name, dims) in kiln::declared_inputs(path).unwrap_or_default() {
                let d: Vec<String> = (dims.iter())
                    .map(|d| d.as_ref().map_or_else(|p| p.clone(), |v| v.to_string()))
                    .collect();
                writeln!(std::io::stdout(), "input     {name}: [{}] (as declared)", d.join(","))?;
            }
            writeln!(std::io::stdout(), "unsupported / errors:")?;
            bail!(e)
        }
    };
    let gr = &model.graph;
    for &v in gr.inputs() {
        writeln!(std::io::stdout(), "input     {}: {}", gr.value(v).name, gr.value(v).ty)?;
    }
    for &v in gr.outputs() {
        writeln!(std::io::stdout(), "output    {}: {}", gr.value(v).name, gr.value(v).ty)?;
    }
    layer_table(gr)?;
    writeln!(std::io::stdout(), "unsupported ops: none")?;
    Ok(())
}

fn layer_table(g: &Graph) -> Result<()> {
    writeln!(std::io::stdout())?;
    writeln!(
        std::io::stdout(),
        "{:>4}  {:<36} {:<18} {:<28} {:>10} {:>10} {:>10}",
        "#",
        "node",
        "op",
        "output",
        "MACs",
        "params",
        "act bytes"
    )?;
    let mut total_macs = 0u64;
    let mut act_total = 0u64;
    let mut act_max = 0u64;
    let mut by_op: BTreeMap<&str, (usize, u64)> = BTreeMap::new();
    for (i, n) in g.topo_order()?.into_iter().enumerate() {
        let node = g.node(n);
        let macs = analysis::macs(g, n);
        let params: usize = node
            .inputs
            .iter()
            .filter_map(|&v| g.const_value(v))
            .map(|t| t.numel())
            .sum();
        let act: u64 = node.outputs.iter().map(|&o| g.value(o).ty.bytes() as u64).sum();
        total_macs += macs;
        act_total += act;
        act_max = act_max.max(act);
        let e = by_op.entry(node.op.name()).or_default();
        e.0 += 1;
        e.1 += macs;
        let out = g.value(node.outputs[0]).ty.to_string();
        let name: String = node.name.chars().take(36).collect();
        writeln!(
            std::io::stdout(),
            "{:>4}  {:<36} {:<18} {:<28} {:>10} {:>10} {:>10}",
            i,
            name,
            node.op.name(),
            out,
            human(macs),
            human(params as u64),
            act
        )?;
    }
    let params = analysis::parameter_count(g);
    let param_bytes: usize = (0..g.num_values())
        .map(kiln_ir::ValueId::from_index)
        .filter(|&v| matches!(g.value(v).def, ValueDef::Const(_)) && !g.consumers(v).is_empty())
        .map(|v| g.value(v).ty.bytes())
        .sum();
    writeln!(std::io::stdout())?;
    let list: Vec<String> = by_op
        .iter()
        .map(|(k, (c, m))| {
            if *m > 0 {
                format!("{k} x{c} ({} MACs)", human(*m))
            } else {
                format!("{k} x{c}")
            }
        })
        .collect();
    writeln!(
        std::io::stdout(),
        "ir ops    {} nodes: {}",
        g.node_count(),
        list.join(", ")
    )?;
    writeln!(std::io::stdout(), "MACs      {total_macs} total")?;
    writeln!(std::io::stdout(), "params    {params} ({param_bytes} bytes)")?;
    writeln!(
        std::io::stdout(),
        "activations {act_total} bytes in all node outputs, largest {act_max} bytes"
    )?;
    Ok(())
}

fn eval(path: &Path, shapes: &ShapeArgs, quant: &QuantArgs, inputs: &[PathBuf], outputs: &[PathBuf]) -> Result<()> {
    let shapes = &shapes_from_inputs(path, shapes, inputs)?;
    let m = load_quantized(path, shapes, quant)?;
    let g = &m.graph;
    if inputs.len() != g.inputs().len() {
        bail!(
            "the model has {} inputs, {} --input given",
            g.inputs().len(),
            inputs.len()
        );
    }
    if outputs.len() != g.outputs().len() {
        bail!(
            "the model has {} outputs, {} --output given",
            g.outputs().len(),
            outputs.len()
        );
    }
    let mut ts = Vec::new();
    for (i, (p, &v)) in inputs.iter().zip(g.inputs()).enumerate() {
        let t = kiln::npy::read(p)?;
        let want = &g.value(v).ty;
        if t.shape != want.shape || t.data.scalar() != want.dtype.scalar {
            bail!(
                "{}: input {i} (`{}`) must be {want}, the file holds {}",
                p.display(),
                g.value(v).name,
                t.ty()
            );
        }
        ts.push(t);
    }
    let outs = kiln_ir::eval::run(g, &ts)?;
    for (p, t) in outputs.iter().zip(&outs) {
        kiln::npy::write(p, t)?;
    }
    Ok(())
}

/// `shapes` plus, for each input the model declares with symbolic dimensions and the
/// command line does not pin, the shape of the array given for it (a note per bound
/// dimension). Fixed dimensions must agree; the import checks that.
fn shapes_from_inputs(path: &Path, shapes: &ShapeArgs, inputs: &[PathBuf]) -> Result<ShapeArgs> {
    let mut out = shapes.clone();
    let pinned: Vec<&str> = shapes
        .input_shape
        .iter()
        .filter_map(|s| s.split_once('=').map(|p| p.0))
        .collect();
    let bound: Vec<&str> = shapes
        .bind
        .iter()
        .filter_map(|s| s.split_once('=').map(|p| p.0))
        .collect();
    let declared = kiln::declared_inputs(path)?;
    let open = declared.iter().filter(|(name, _)| !bound.contains(&name.as_str()));
    for ((name, dims), file) in open.zip(inputs) {
        if pinned.contains(&name.as_str()) || dims.iter().all(|d| d.is_ok()) {
            continue;
        }
        let shape = kiln::npy::read_shape(file)?;
        if shape.len() != dims.len() {
            continue; // the import names the mismatch
        }
        for (i, (d, &n)) in dims.iter().zip(&shape).enumerate() {
            if let Err(param) = d {
                eprintln!(
                    "note: input `{name}`: dimension {i} (`{param}`) is {n}, from {}",
                    file.display()
                );
            }
        }
        let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
        out.input_shape.push(format!("{name}={}", dims.join(",")));
    }
    Ok(out)
}

/// A deterministic input for `ty`: uniform in [-1, 1) for floats, zeros otherwise.
fn synthetic(ty: &kiln_ir::TensorType) -> kiln_ir::Tensor {
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let n = ty.numel();
    let v: Vec<f32> = (0..n)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            ((state >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect();
    let t = kiln_ir::Tensor::from_vec(ty.shape.clone(), v);
    if ty.dtype.scalar.is_float() {
        t.cast(ty.dtype.scalar)
    } else {
        kiln_ir::Tensor::zeros(ty)
    }
}

fn bench(
    path: &Path,
    shapes: &ShapeArgs,
    quant: &QuantArgs,
    inputs: &[PathBuf],
    runs: u32,
    emit: BenchEmit,
    flags: &kiln::bench::BuildFlags,
) -> Result<()> {
    let runs = runs as usize;
    let shapes = &shapes_from_inputs(path, shapes, inputs)?;
    let m = load_quantized(path, shapes, quant)?;
    let g = &m.graph;
    let ts: Vec<kiln_ir::Tensor> = if inputs.is_empty() {
        g.inputs().iter().map(|&v| synthetic(&g.value(v).ty)).collect()
    } else {
        inputs.iter().map(|p| kiln::npy::read(p)).collect::<Result<_, _>>()?
    };
    let (what, t) = match emit {
        BenchEmit::Eval => ("evaluator".to_string(), kiln::bench::bench_eval(g, &ts, runs)?),
        BenchEmit::Object | BenchEmit::C => {
            // A fresh private folder with an unpredictable name, removed however this ends.
            let work = tempfile::Builder::new()
                .prefix("kiln-bench-")
                .tempdir()
                .context("cannot create a temporary build folder")?;
            let (what, e) = match emit {
                BenchEmit::C => (
                    format!("C source (cc {})", flags.cflags.join(" ")),
                    kiln::compile::Emit::C,
                ),
                _ => (
                    format!(
                        "native object (--target-cpu {})",
                        flags.cpu.as_deref().unwrap_or("default")
                    ),
                    kiln::compile::Emit::Object,
                ),
            };
            let r = kiln::bench::bench_compiled(g, &ts, runs, work.path(), e, flags);
            (what, r.map_err(anyhow::Error::msg)?)
        }
    };
    writeln!(
        std::io::stdout(),
        "{}: {what}, {} runs: median {:.1} us, min {:.1} us per inference",
        path.display(),
        t.runs,
        t.median_us,
        t.min_us
    )?;
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn compile(
    path: &Path,
    shapes: &ShapeArgs,
    quant: &QuantArgs,
    emit: EmitArg,
    target: &str,
    target_cpu: Option<&str>,
    prefix: Option<&str>,
    out_dir: &Path,
    clif: bool,
) -> Result<()> {
    use kiln::compile::{self, CompileOptions, Emit};
    if target_cpu.is_some() && emit != EmitArg::Object {
        anyhow::bail!(
            "--target-cpu applies to native objects (--emit object); give C and Rust source's compiler its own CPU flags"
        );
    }
    let target = compile::parse_target(target)?.with_cpu(target_cpu);
    let prefix = prefix
        .map(String::from)
        .unwrap_or_else(|| compile::default_prefix(path));
    let start = std::time::Instant::now();
    let m = load_quantized(path, shapes, quant)?;
    let source = path
        .file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut out = compile::compile(
        &m.graph,
        &CompileOptions {
            emit: match emit {
                EmitArg::Object => Emit::Object,
                EmitArg::C => Emit::C,
                EmitArg::Rust => Emit::RustSource,
            },
            target: target.clone(),
            prefix: prefix.clone(),
        },
        &source,
    )?;
    if clif {
        out.files
            .push((format!("{prefix}.clif"), out.clif.clone().into_bytes()));
    }
    compile::write_files(out_dir, &out.files, &m.files)?;
    let r = &out.report;
    writeln!(
        std::io::stdout(),
        "{prefix}: {} kernels for {target}; arena {} bytes (lower bound {}); {} {} bytes; {:.0} ms",
        r.kernels,
        r.arena_size,
        r.arena_lower_bound,
        match emit {
            EmitArg::C => "C source",
            EmitArg::Rust => "Rust source",
            EmitArg::Object => "object",
        },
        r.object_bytes,
        start.elapsed().as_secs_f64() * 1e3
    )?;
    let widths = compile::accumulator_widths(&m.graph);
    if !widths.is_empty() {
        // by name for a few short-named layers, else counted per width
        let list: Vec<String> = if widths.len() <= 8 && widths.iter().all(|(n, _)| n.len() <= 40) {
            widths.iter().map(|(n, b)| format!("`{n}` {b}")).collect()
        } else {
            let mut per: std::collections::BTreeMap<u32, usize> = Default::default();
            for (_, b) in &widths {
                *per.entry(*b).or_default() += 1;
            }
            per.iter().map(|(b, k)| format!("{b} x{k}")).collect()
        };
        writeln!(
            std::io::stdout(),
            "accumulator bits (proven to hold every sum): {}",
            list.join(", ")
        )?;
    }
    Ok(())
}

/// `kiln ops`: the supported ONNX operators and TFLite builtins.
fn ops(markdown: bool) -> Result<()> {
    let mut o = std::io::stdout().lock();
    if markdown {
        write!(o, "{}{}", kiln::onnx::ops::markdown(), kiln::tflite::markdown())?;
        return Ok(());
    }
    for op in kiln::onnx::ops::REGISTRY {
        writeln!(o, "{}", op.op_type)?;
    }
    for (_, name, _) in kiln::tflite::BUILTINS {
        writeln!(o, "tflite:{name}")?;
    }
    Ok(())
}

/// Whether `e` is a write to a closed pipe (`kiln inspect m | head`): the reader has what it
/// wanted, so the command ends quietly, as a Unix tool killed by SIGPIPE would.
fn closed_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let res = match &cli.cmd {
        Cmd::Inspect { model, shapes } => inspect(model, shapes),
        Cmd::Report {
            model,
            shapes,
            quant,
            eval,
        } => report(model, shapes, quant, eval.as_deref()),
        Cmd::Eval {
            model,
            shapes,
            quant,
            inputs,
            outputs,
        } => eval(model, shapes, quant, inputs, outputs),
        Cmd::Dump {
            model,
            shapes,
            quant,
            print_after,
            stop_after,
        } => {
            let opts = PipelineOptions {
                print_after: print_after.clone(),
                stop_after: stop_after.clone(),
            };
            // a dump shows the passes on the model as it is unless a mode is named
            let m = if matches!(quant.quantize, None | Some(QuantMode::None)) {
                load(model, shapes, &opts)
            } else {
                load_quantized(model, shapes, quant)
            };
            m.and_then(|m| {
                write!(std::io::stdout(), "{}", kiln_ir::text::dump(&m.graph)?)?;
                Ok(())
            })
        }
        Cmd::Bench {
            model,
            shapes,
            quant,
            inputs,
            runs,
            emit,
            target_cpu,
            cflags,
        } => {
            let mut flags = kiln::bench::BuildFlags {
                cpu: target_cpu.clone(),
                ..Default::default()
            };
            if let Some(c) = cflags {
                flags.cflags = c.split_whitespace().map(str::to_string).collect();
            }
            bench(model, shapes, quant, inputs, *runs, *emit, &flags)
        }
        Cmd::Compile {
            model,
            shapes,
            quant,
            emit,
            target,
            target_cpu,
            prefix,
            out_dir,
            clif,
        } => compile(
            model,
            shapes,
            quant,
            *emit,
            target,
            target_cpu.as_deref(),
            prefix.as_deref(),
            out_dir,
            *clif,
        ),
        Cmd::Ops { markdown } => ops(*markdown),
    };
    match res {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) if closed_pipe(&e) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

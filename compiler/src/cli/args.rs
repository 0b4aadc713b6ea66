//! Flags shared by the commands, and loading a model the way they ask.

use anyhow::{Context, Result, bail};
use kiln::{ImportOptions, PipelineOptions};
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

#[derive(clap::Args, Clone, Default)]
pub(crate) struct ShapeArgs {
    /// Pin an input's shape: NAME=D0,D1,... (repeatable).
    #[arg(long = "input-shape", value_name = "NAME=DIMS")]
    pub(crate) input_shape: Vec<String>,
    /// Freeze an input to the value in a .npy file, compiling it in as a constant (repeatable).
    #[arg(long = "bind", value_name = "NAME=FILE")]
    pub(crate) bind: Vec<String>,
    /// Bytes of constants the import may make beyond the model's own weights
    /// (ConstantOfShape, Range, folding); default 256 MiB.
    #[arg(long = "max-constant-bytes", value_name = "BYTES")]
    pub(crate) max_constant_bytes: Option<usize>,
    /// Read a model whose ONNX opset is newer than Kiln knows with the newest meanings Kiln
    /// knows (refused by default).
    #[arg(long = "allow-newer-opset")]
    pub(crate) allow_newer_opset: bool,
}

#[derive(Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub(crate) enum QuantMode {
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
pub(crate) struct QuantArgs {
    /// Quantization mode. Default: a model that carries its own quantization (QDQ,
    /// QOperator) becomes integer code with its parameters (as `int8` without data), any
    /// other stays float; `none` keeps such a model as the float arithmetic its ops define.
    #[arg(long, value_enum)]
    pub(crate) quantize: Option<QuantMode>,
    /// Calibration data: a directory with input_K.npy per graph input, samples on axis 0.
    #[arg(long, value_name = "DIR")]
    pub(crate) calibrate: Option<PathBuf>,
    /// Leave these nodes (by name) or op types in float (repeatable).
    #[arg(long = "keep-float", value_name = "NODE|OPTYPE")]
    pub(crate) keep_float: Vec<String>,
    /// Run these Conv/Gemm/MatMul nodes (by name), op types, or `all` of them with int16
    /// activations and int8 weights (16x8), for accuracy-sensitive layers (repeatable).
    #[arg(long = "int16", value_name = "NODE|OPTYPE|all")]
    int16: Vec<String>,
    /// How activation ranges are chosen from the calibration data.
    #[arg(long = "calibration-method", value_enum, default_value = "auto")]
    pub(crate) method: MethodArg,
    /// One weight scale per tensor instead of one per output channel.
    #[arg(long = "per-tensor-weights")]
    per_tensor_weights: bool,
    /// Reuse (or create) a calibration cache file.
    #[arg(long = "calibration-cache", value_name = "FILE")]
    pub(crate) calibration_cache: Option<PathBuf>,
    /// Width of Conv/Gemm/MatMul weights in a full-integer build: 8, or 4 or 2 (symmetric
    /// per channel, stored packed two or four to a byte).
    #[arg(long = "weight-bits", value_parser = ["8", "4", "2"])]
    pub(crate) weight_bits: Option<String>,
    /// Mixed precision: the lowest output SQNR (dB, against float on the calibration data)
    /// allowed; each Conv/Gemm/MatMul gets the smallest of 4-bit weights, int8, 16x8 or
    /// float that stays within it (the choice per layer is printed).
    #[arg(long = "accuracy-budget", value_name = "DB")]
    pub(crate) accuracy_budget: Option<f64>,
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
    pub(crate) numerics: Option<NumericsArg>,
    /// Scale the channels of each activation that feeds a depthwise convolution to a common
    /// range (int8); `auto`: only when it lowers the error on held-out calibration samples.
    #[arg(long, value_enum, default_value = "off")]
    pub(crate) equalize: Switch,
    /// Move each product's bias so its channel means match float on the calibration data
    /// (int8); `auto`: only when it lowers the error on held-out calibration samples.
    #[arg(long = "bias-correction", value_enum, default_value = "off")]
    pub(crate) bias_correction: Switch,
    /// Round weights to the steps that minimize each layer's output error on the calibration
    /// data, not to the nearest; `auto`: only when it lowers the error on held-out
    /// calibration samples. Default: on with 4- and 2-bit weights, off at 8 bits.
    #[arg(long = "weight-rounding", value_enum)]
    pub(crate) weight_rounding: Option<Switch>,
}

/// A refinement off, on, or left to held-out calibration data.
#[derive(Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Switch {
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
pub(crate) enum NumericsArg {
    Onnx,
    Tflite,
}

#[derive(Clone, Copy, Default, clap::ValueEnum)]
pub(crate) enum MethodArg {
    /// Try each method; keep the one whose int8 outputs best match float on the data.
    #[default]
    Auto,
    Minmax,
    Percentile,
    Entropy,
    Mse,
}

#[derive(Clone, Copy, PartialEq, clap::ValueEnum)]
pub(crate) enum EmitArg {
    Object,
    C,
    /// Rust source (a module using the `kiln-runtime` crate).
    Rust,
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub(crate) enum BenchEmit {
    Eval,
    Object,
    /// The C backend's source, built with the system `cc -O2`.
    C,
}

pub(crate) fn import_options(s: &ShapeArgs) -> Result<ImportOptions> {
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
        max_made_constant_bytes: s.max_constant_bytes,
        allow_newer_opset: s.allow_newer_opset,
    })
}

/// Flags that only make sense in some quantization modes, against the mode in effect.
pub(crate) fn check_quant_flags(quant: &QuantArgs, mode: QuantMode) -> Result<()> {
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
pub(crate) fn load_quantized(model: &Path, shapes: &ShapeArgs, quant: &QuantArgs) -> Result<kiln::Model> {
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
    let q = kiln::quantize::apply(&m.graph, &m.producer, &how, &opts, |_, _| {});
    super::progress::done();
    let q = q?;
    for n in &q.notes {
        eprintln!("note: {n}");
    }
    m.graph = q.graph;
    Ok(m)
}

/// The full-integer options the command line gives.
pub(crate) fn quant_options(quant: &QuantArgs) -> Result<kiln::quantize::QuantOptions> {
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
        progress: super::progress::hook(),
    })
}

pub(crate) fn load(model: &Path, shapes: &ShapeArgs, pipeline: &PipelineOptions) -> Result<kiln::Model> {
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

#[derive(clap::Args, Clone)]
pub(crate) struct BenchArgs {
    /// Input .npy files in graph order (default: a fixed pseudo-random input).
    #[arg(long = "input")]
    pub(crate) inputs: Vec<PathBuf>,
    /// Timed runs (after one warm-up run), 1 to 1,000,000.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub(crate) runs: u32,
    /// What to time on this machine: the reference evaluator, the native object, or the C
    /// source built with the system `cc`.
    #[arg(long, value_enum, default_value = "eval")]
    pub(crate) emit: BenchEmit,
    /// CPU features the native object may assume (as for `compile`).
    #[arg(long = "target-cpu")]
    pub(crate) target_cpu: Option<String>,
    /// C compiler flags for `--emit c` (default: -O2), e.g. "-O3 -march=native".
    #[arg(long, allow_hyphen_values = true)]
    pub(crate) cflags: Option<String>,
    /// Measure on a simulated part instead: cortex-m4, cortex-m7, cortex-m33, cortex-m3 (QEMU,
    /// instructions), atmega328p, atmega2560 (simavr, cycles). Builds the C backend with the
    /// part's cross compiler, checks the outputs against the evaluator, and reports flash,
    /// arena and peak stack (toolchains: scripts/setup-embedded.sh).
    #[arg(long, value_name = "PART")]
    pub(crate) target: Option<String>,
    /// With --target: the cost of each kernel too.
    #[arg(long = "per-layer")]
    pub(crate) per_layer: bool,
    /// With --target: call `<prefix>_run_int` on the integer buffers (a model with an integer
    /// boundary), without the float conversion at the edges.
    #[arg(long = "int-io")]
    pub(crate) int_io: bool,
    /// One JSON document on stdout instead of text (schema: docs/json.md).
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(clap::Args, Clone)]
pub(crate) struct CompileArgs {
    /// What to emit.
    #[arg(long, value_enum, default_value = "object")]
    pub(crate) emit: EmitArg,
    /// Target triple (e.g. x86_64-unknown-linux-gnu, aarch64-unknown-linux-gnu) or `host`.
    #[arg(long, default_value = "host")]
    pub(crate) target: String,
    /// CPU features a native object may assume beyond the portable default (x86-64-v2 on
    /// x86-64): `native` (this machine's), an x86-64 level (x86-64-v3, x86-64-v4) and/or
    /// `+feature` items, comma-separated (e.g. `x86-64-v3,+avx512vnni`, `+dotprod`). The
    /// object checks them on its first run and returns an error code on a CPU without them.
    #[arg(long = "target-cpu")]
    pub(crate) target_cpu: Option<String>,
    /// Symbol prefix (default: from the model file name).
    #[arg(long)]
    pub(crate) prefix: Option<String>,
    /// Output directory.
    #[arg(short = 'o', long = "out-dir", default_value = ".")]
    pub(crate) out_dir: PathBuf,
    /// Also write the generated Cranelift IR to <prefix>.clif.
    #[arg(long)]
    pub(crate) clif: bool,
    /// C: the generated file owns the arena (a static array) and offers
    /// `<prefix>_run_static(inputs, outputs)`; without it the same is one
    /// `-D<PREFIX>_STATIC_ARENA` away (see the header for sharing one arena between models).
    #[arg(long = "static-arena")]
    pub(crate) static_arena: bool,
    /// One JSON document on stdout instead of the summary line (schema: docs/json.md).
    #[arg(long)]
    pub(crate) json: bool,
}

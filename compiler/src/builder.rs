//! Kiln from a build script, the way `cc` or `prost-build` are used: one builder call
//! compiles a model into `OUT_DIR` and prints the cargo directives that link or rebuild it.
//!
//! ```no_run
//! // in build.rs's main; an `Err` names the file and the problem
//! kiln::Build::new("models/kws.onnx")
//!     .quantize(kiln::Quantize::int8("models/kws_calib"))
//!     .emit(kiln::Emit::RustSource) // or Emit::Object, Emit::C; default: by target
//!     .compile("kws")?;
//! # Ok::<(), kiln::BuildError>(())
//! ```
//! and in the crate (with `kiln-runtime` as a dependency for Rust source):
//! ```ignore
//! include!(concat!(env!("OUT_DIR"), "/kws.rs"));
//!
//! let mut arena = kws::Arena::new();
//! let mut scores = [0f32; kws::OUTPUT0_COUNT];
//! kws::run(&features, &mut scores, &mut arena).unwrap();
//! ```
//! Both `Emit::Object` and `Emit::RustSource` give the same `kws` module: the constants,
//! `Arena`, `run` (and `run_int` for integer models), so a crate can switch between them.

use crate::compile::{self, CompileError, CompileOptions, Emit};
use crate::quantize::{QuantError, QuantOptions};
use crate::{ImportOptions, PipelineOptions};
use std::collections::BTreeMap;
use std::path::PathBuf;
use thiserror::Error;

/// How to quantize the model before compiling it.
#[derive(Clone, Debug, Default)]
pub enum Quantize {
    /// The model as it is: float stays float, and a model that carries its own
    /// quantization (QDQ, QOperator) becomes integer code with its parameters (as
    /// [`Quantize::Model`] with default options), as the command line does.
    #[default]
    None,
    /// Everything in float: a model's own QuantizeLinear/DequantizeLinear pairs become the
    /// float arithmetic they define (a simulation of its integer build).
    Float,
    /// Reduced float: Conv/Gemm/MatMul weights as binary16 (half the bytes), f32 arithmetic.
    Fp16,
    /// Hybrid: Conv/Gemm/MatMul weights as int8 (a quarter of the bytes), activations
    /// quantized at run time by each of those ops, everything else f32.
    Dynamic,
    /// Full-integer int8, calibrated on the data in `calibration` (a directory of
    /// `input_K.npy`, an `.npz`, or per-sample subdirectories; see the README).
    Int8 {
        calibration: PathBuf,
        options: QuantOptions,
    },
    /// Full-integer with the quantization the model carries (QDQ from quantization-aware
    /// training or ONNX Runtime, or QOperator ops): its own scales, zero points and integer
    /// weights, no calibration data. With `options.numerics` unset, the rounding of the
    /// model's origin (TFLite's for a tf2onnx conversion, see `qdq::origin_numerics`).
    Model { options: QuantOptions },
}

impl Quantize {
    /// Int8 with Kiln's default calibration.
    pub fn int8(calibration: impl Into<PathBuf>) -> Quantize {
        Quantize::Int8 {
            calibration: calibration.into(),
            options: QuantOptions::default(),
        }
    }
}

#[derive(Debug, Error)]
pub enum BuildError {
    #[error("{}: {source}", .path.display())]
    Load { path: PathBuf, source: Box<crate::Error> },
    #[error("{}: integer build with the model's own quantization: {source}", .path.display())]
    QuantizeModel { path: PathBuf, source: Box<QuantError> },
    #[error("{}: int8 quantization with {}: {source}", .path.display(), .calibration.display())]
    Quantize {
        path: PathBuf,
        calibration: PathBuf,
        source: Box<QuantError>,
    },
    #[error("{}: {what} weights: {source}", .path.display())]
    Convert {
        path: PathBuf,
        what: &'static str,
        source: Box<QuantError>,
    },
    #[error("{}: {source}", .path.display())]
    Compile { path: PathBuf, source: Box<CompileError> },
    #[error("no output directory: OUT_DIR is not set (call from a build script, or give .out_dir())")]
    NoOutDir,
    #[error("{}: a static arena is for C source (.emit(Emit::C)); objects and Rust source take the arena from the caller", .path.display())]
    StaticArenaNeedsC { path: PathBuf },
}

/// What [`Build::compile`] produced.
#[derive(Clone, Debug)]
pub struct Artifacts {
    /// Every file written, in `out_dir`.
    pub files: Vec<PathBuf>,
    /// The code generator picked (or forced).
    pub emit: Emit,
    /// Arena bytes the model needs.
    pub arena_size: usize,
    /// The `cargo:` directives (printed unless `cargo_metadata(false)`).
    pub directives: Vec<String>,
}

/// Compiles one model for a build script; see the [module docs](self).
#[derive(Clone, Debug)]
pub struct Build {
    model: PathBuf,
    quantize: Quantize,
    emit: Option<Emit>,
    target: Option<String>,
    target_cpu: Option<String>,
    out_dir: Option<PathBuf>,
    input_shapes: BTreeMap<String, Vec<usize>>,
    cargo_metadata: bool,
    static_arena: bool,
    allow_newer_opset: bool,
}

impl Build {
    pub fn new(model: impl Into<PathBuf>) -> Build {
        Build {
            model: model.into(),
            quantize: Quantize::None,
            emit: None,
            target: None,
            target_cpu: None,
            out_dir: None,
            input_shapes: BTreeMap::new(),
            cargo_metadata: true,
            static_arena: false,
            allow_newer_opset: false,
        }
    }

    pub fn quantize(&mut self, q: Quantize) -> &mut Build {
        self.quantize = q;
        self
    }

    /// Forces a code generator. By default a native object when Cranelift supports the
    /// target, Rust source otherwise (e.g. AVR, Cortex-M).
    pub fn emit(&mut self, e: Emit) -> &mut Build {
        self.emit = Some(e);
        self
    }

    /// Target triple or part name (default: cargo's `TARGET`, else the host).
    pub fn target(&mut self, t: impl Into<String>) -> &mut Build {
        self.target = Some(t.into());
        self
    }

    /// CPU features a native object may assume, as `kiln compile --target-cpu` takes them
    /// (`native`, `x86-64-v3`, `+avx512vnni,...`). By default, the features cargo compiles
    /// the crate for (`CARGO_CFG_TARGET_FEATURE`, e.g. from `-C target-cpu=native`) that
    /// Kiln knows, on top of the portable default: the object then needs no more than the
    /// Rust code linking it.
    pub fn target_cpu(&mut self, spec: impl Into<String>) -> &mut Build {
        self.target_cpu = Some(spec.into());
        self
    }

    /// Output directory (default: cargo's `OUT_DIR`).
    pub fn out_dir(&mut self, d: impl Into<PathBuf>) -> &mut Build {
        self.out_dir = Some(d.into());
        self
    }

    /// Pins a symbolic input dimension, as `--input-shape name=1,3,32,32` does.
    pub fn input_shape(&mut self, name: impl Into<String>, dims: &[usize]) -> &mut Build {
        self.input_shapes.insert(name.into(), dims.to_vec());
        self
    }

    /// C source: the generated file owns its arena and offers `<name>_run_static`, as
    /// `kiln compile --static-arena` (see the generated header for sharing one arena).
    pub fn static_arena(&mut self, on: bool) -> &mut Build {
        self.static_arena = on;
        self
    }

    /// Reads a model whose ONNX opset is newer than Kiln knows with the newest meanings it
    /// knows, as `--allow-newer-opset` (refused by default).
    pub fn allow_newer_opset(&mut self, on: bool) -> &mut Build {
        self.allow_newer_opset = on;
        self
    }

    /// Whether to print `cargo:` directives (default: yes).
    pub fn cargo_metadata(&mut self, on: bool) -> &mut Build {
        self.cargo_metadata = on;
        self
    }

    /// Compiles the model into `<out_dir>/<name>.*` with symbol prefix `name`, and prints the
    /// directives: `rerun-if-changed` for the model and calibration data, and for an object
    /// the `rustc-link-search`/`rustc-link-lib` of `lib<name>.a`.
    pub fn compile(&self, name: &str) -> Result<Artifacts, BuildError> {
        let path = self.model.clone();
        let compile_err = |source| BuildError::Compile {
            path: path.clone(),
            source: Box::new(source),
        };
        let out_dir = match &self.out_dir {
            Some(d) => d.clone(),
            None => std::env::var_os("OUT_DIR")
                .map(PathBuf::from)
                .ok_or(BuildError::NoOutDir)?,
        };
        let target_name = self
            .target
            .clone()
            .or_else(|| std::env::var("TARGET").ok())
            .unwrap_or_else(|| "host".into());
        let mut target = compile::parse_target(&target_name).map_err(compile_err)?;
        target.cpu = self.target_cpu.clone().or_else(|| {
            let cargo = std::env::var("CARGO_CFG_TARGET_FEATURE").ok()?;
            let known = kiln_backends::cranelift::cpu::known(target.triple.architecture);
            let on: Vec<String> = (cargo.split(','))
                .filter(|f| known.contains(f))
                .map(|f| format!("+{f}"))
                .collect();
            (!on.is_empty()).then(|| on.join(","))
        });
        let mut directives = vec![format!("cargo:rerun-if-changed={}", self.model.display())];
        if let Quantize::Int8 { calibration, options } = &self.quantize {
            directives.push(format!("cargo:rerun-if-changed={}", calibration.display()));
            if let Some(c) = &options.cache {
                directives.push(format!("cargo:rerun-if-changed={}", c.display()));
            }
        }
        let import = ImportOptions {
            input_shapes: self.input_shapes.clone().into_iter().collect(),
            allow_newer_opset: self.allow_newer_opset,
            ..Default::default()
        };
        let m = crate::load(&self.model, &import, &PipelineOptions::default(), |_, _| {}).map_err(|source| {
            BuildError::Load {
                path: path.clone(),
                source: Box::new(source),
            }
        })?;
        use crate::quantize::Mode;
        let none = Default::default();
        let (mode, options) = match &self.quantize {
            Quantize::None => (Mode::default_for(&m.graph), &none),
            Quantize::Float => (Mode::Float, &none),
            Quantize::Fp16 => (Mode::Fp16, &none),
            Quantize::Dynamic => (Mode::Dynamic, &none),
            Quantize::Model { options } => (Mode::Model { calibration: None }, options),
            Quantize::Int8 { calibration, options } => (
                Mode::Int8 {
                    calibration: calibration.clone(),
                },
                options,
            ),
        };
        let graph = crate::quantize::apply(&m.graph, &m.producer, &mode, options, |_, _| {})
            .map_err(|source| {
                let source = Box::new(source);
                match &mode {
                    Mode::Int8 { calibration } => BuildError::Quantize {
                        path: path.clone(),
                        calibration: calibration.clone(),
                        source,
                    },
                    Mode::Model { .. } => BuildError::QuantizeModel {
                        path: path.clone(),
                        source,
                    },
                    _ => BuildError::Convert {
                        path: path.clone(),
                        what: if matches!(mode, Mode::Fp16) {
                            "float16"
                        } else {
                            "hybrid int8"
                        },
                        source,
                    },
                }
            })?
            .graph;
        let emit = self.emit.unwrap_or_else(|| {
            if kiln_backends::cranelift::target_isa(&target.triple, None).is_ok() {
                Emit::Object
            } else {
                Emit::RustSource
            }
        });
        if emit != Emit::Object {
            target.cpu = None; // C and Rust source take their compiler's CPU flags
        }
        if self.static_arena && emit != Emit::C {
            return Err(BuildError::StaticArenaNeedsC {
                path: self.model.clone(),
            });
        }
        let source = self
            .model
            .file_name()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let out = compile::compile(
            &graph,
            &CompileOptions {
                emit,
                target,
                prefix: name.to_string(),
                static_arena: self.static_arena,
            },
            &source,
        )
        .map_err(compile_err)?;
        compile::write_files(&out_dir, &out.files, &m.files).map_err(compile_err)?;
        if emit == Emit::Object {
            directives.push(format!("cargo:rustc-link-search=native={}", out_dir.display()));
            directives.push(format!("cargo:rustc-link-lib=static={name}"));
        }
        if self.cargo_metadata {
            for d in &directives {
                println!("{d}");
            }
        }
        Ok(Artifacts {
            files: out.files.iter().map(|(f, _)| out_dir.join(f)).collect(),
            emit,
            arena_size: out.report.arena_size,
            directives,
        })
    }
}

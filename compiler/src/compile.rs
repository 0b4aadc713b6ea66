//! From an optimized graph to files on disk: memory plan, backend, API header and bindings,
//! and the static library. All files of one build are written under temporary names and
//! renamed into place only when every one of them is complete.

use crate::target::Target;
use kiln_backends::cranelift;
use kiln_backends::header::{self, Api};
use kiln_ir::plan::{self, MemoryPlan};
use kiln_ir::{Graph, IrError};
use std::path::{Path, PathBuf};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum CompileError {
    #[error("`{0}` is not a valid symbol prefix: use letters, digits and `_`, not starting with a digit")]
    BadPrefix(String),
    #[error(
        "unknown target `{0}`: give one of {known} or a target triple such as x86_64-unknown-linux-gnu, aarch64-unknown-linux-gnu, riscv64gc-unknown-linux-gnu",
        known = Target::known_names()
    )]
    BadTarget(String),
    #[error("the model does not fit {mcu}: it needs {need} bytes of {what}, the part has {limit}")]
    DoesNotFit {
        mcu: &'static str,
        what: &'static str,
        need: usize,
        limit: usize,
    },
    #[error("cannot compile for AVR: {0}")]
    AvrLimit(String),
    #[error("the graph handed to the backend is invalid (a bug in the pass that made it): {0}")]
    Invalid(IrError),
    #[error(transparent)]
    Plan(#[from] IrError),
    #[error(transparent)]
    Native(#[from] cranelift::Error),
    #[error(transparent)]
    C(#[from] kiln_backends::c::Error),
    #[error(transparent)]
    Rust(#[from] kiln_backends::rust::Error),
    #[error("cannot write {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("refusing to write {path}: it is the input file {input} (choose another -o folder or --prefix)")]
    WouldOverwriteInput { path: PathBuf, input: PathBuf },
}

/// What to produce.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Emit {
    /// A native object through Cranelift, with `lib<prefix>.a`, `<prefix>.h`, `<prefix>.rs`.
    Object,
    /// Portable C99 source: `<prefix>.c` and `<prefix>.h`.
    C,
    /// A Rust module, `<prefix>.rs`, over the `kiln-runtime` crate (any target rustc has).
    RustSource,
}

#[derive(Clone, Debug)]
pub struct CompileOptions {
    pub emit: Emit,
    pub target: Target,
    pub prefix: String,
    /// C: the generated file holds the arena itself and offers `<prefix>_run_static`
    /// (`<PREFIX>_STATIC_ARENA` defined in the header; a user can define it instead).
    pub static_arena: bool,
}

/// Figures worth reporting about one build.
#[derive(Clone, Debug)]
pub struct Report {
    pub arena_size: usize,
    pub arena_lower_bound: usize,
    pub object_bytes: usize,
    pub kernels: usize,
}

/// A finished build: file names and contents, plus the generated CLIF for review.
pub struct Compiled {
    pub files: Vec<(String, Vec<u8>)>,
    pub clif: String,
    pub report: Report,
}

/// Per integer product or convolution of `g` with constant weights, in schedule order, its
/// name and the narrowest accumulator (16, 24, 32 or 64 bits) that `kiln_ir::accumulate`
/// proves holds every partial sum; AVR kernels sum in that width.
pub fn accumulator_widths(g: &Graph) -> Vec<(String, u32)> {
    g.topo_order()
        .unwrap_or_default()
        .into_iter()
        .filter_map(|n| Some((g.node(n).name.clone(), kiln_ir::accumulate::node_range(g, n)?.bits())))
        .collect()
}

/// Parses a target: `host`, a part name such as `atmega328p`, or a triple.
pub fn parse_target(s: &str) -> Result<Target, CompileError> {
    Target::parse(s).ok_or_else(|| CompileError::BadTarget(s.to_string()))
}

/// A default symbol prefix from a model path (`models/kws-v2.onnx` -> `kws_v2`).
pub fn default_prefix(model: &Path) -> String {
    let stem = model
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    kiln_backends::namer::Namer::default().name(&stem)
}

fn check_prefix(p: &str) -> Result<(), CompileError> {
    let ok = p.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && p.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if ok {
        Ok(())
    } else {
        Err(CompileError::BadPrefix(p.to_string()))
    }
}

/// Plans memory for the Rust source backend (no in-place reuse; see `kiln_backends::rust`).
pub fn plan_rust(g: &Graph, target: &Target) -> Result<MemoryPlan, IrError> {
    use kiln_backends::rust;
    let cortex_m = target.is_cortex_m();
    plan::plan_with(
        g,
        rust::ARENA_ALIGN,
        |g, n| rust::scratch_bytes(g, n, cortex_m),
        plan::Reuse::Disjoint,
    )
}

/// Plans memory for the native backend.
pub fn plan_native(g: &Graph, target: &Target) -> Result<MemoryPlan, IrError> {
    let dot = cranelift::dot_product(&target.triple, target.cpu.as_deref());
    plan::plan(g, cranelift::ARENA_ALIGN, |g, n| cranelift::scratch_bytes(g, n, dot))
}

pub fn compile(g: &Graph, opts: &CompileOptions, source: &str) -> Result<Compiled, CompileError> {
    check_prefix(&opts.prefix)?;
    // Backends take a verified graph, whichever rewrites (fp16, hybrid, int8, bindings)
    // made it.
    kiln_ir::verify::verify(g).map_err(CompileError::Invalid)?;
    match opts.emit {
        Emit::C => return compile_c(g, opts, source),
        Emit::RustSource => return compile_rust(g, opts, source),
        Emit::Object => {}
    }
    let plan = plan_native(g, &opts.target)?;
    let out = cranelift::emit(
        g,
        &plan,
        &cranelift::Options {
            triple: opts.target.triple.clone(),
            prefix: opts.prefix.clone(),
            cpu: opts.target.cpu.clone(),
        },
    )?;
    let mut api = Api::new(g, &plan, &opts.prefix, source);
    api.cpu_features = Some(out.features.iter().map(|f| f.to_string()).collect());
    let p = &opts.prefix;
    let archive = static_lib(&format!("{p}.o"), &out.object).map_err(|source| CompileError::Io {
        path: PathBuf::from(format!("lib{p}.a")),
        source,
    })?;
    let report = Report {
        arena_size: plan.arena_size,
        arena_lower_bound: plan.lower_bound,
        object_bytes: out.object.len(),
        kernels: plan.order.len(),
    };
    let files = vec![
        (format!("{p}.o"), out.object),
        (format!("lib{p}.a"), archive),
        (format!("{p}.h"), header::c_header(&api).into_bytes()),
        (format!("{p}.rs"), header::rust_bindings(&api).into_bytes()),
    ];
    Ok(Compiled {
        files,
        clif: out.clif,
        report,
    })
}

fn compile_c(g: &Graph, opts: &CompileOptions, source: &str) -> Result<Compiled, CompileError> {
    use kiln_backends::c;
    let copts = c::Options {
        prefix: opts.prefix.clone(),
        progmem: opts.target.is_avr(),
        cortex_m: opts.target.is_cortex_m(),
    };
    let plan = plan::plan(g, c::ARENA_ALIGN, |g, n| c::scratch_bytes(g, n, &copts))?;
    let out = c::emit(g, &plan, &copts)?;
    check_fit(g, &plan, &opts.target)?;
    let mut api = Api::new(g, &plan, &opts.prefix, source);
    api.static_arena = Some(opts.static_arena);
    let source = out.source + &header::c_static_arena_defs(&api);
    let p = &opts.prefix;
    let report = Report {
        arena_size: plan.arena_size,
        arena_lower_bound: plan.lower_bound,
        object_bytes: source.len(),
        kernels: plan.order.len(),
    };
    let files = vec![
        (format!("{p}.c"), source.into_bytes()),
        (format!("{p}.h"), header::c_header(&api).into_bytes()),
    ];
    Ok(Compiled {
        files,
        clif: String::new(),
        report,
    })
}

fn compile_rust(g: &Graph, opts: &CompileOptions, source: &str) -> Result<Compiled, CompileError> {
    use kiln_backends::rust;
    let plan = plan_rust(g, &opts.target)?;
    let text = rust::emit(
        g,
        &plan,
        &rust::Options {
            prefix: opts.prefix.clone(),
            cortex_m: opts.target.is_cortex_m(),
        },
        source,
    )?;
    check_fit(g, &plan, &opts.target)?;
    let report = Report {
        arena_size: plan.arena_size,
        arena_lower_bound: plan.lower_bound,
        object_bytes: text.len(),
        kernels: plan.order.len(),
    };
    Ok(Compiled {
        files: vec![(format!("{}.rs", opts.prefix), text.into_bytes())],
        clif: String::new(),
        report,
    })
}

/// Refuses a model whose weights alone overflow the part's flash, or whose arena its RAM
/// (on AVR, where weights stay in flash, the arena is all the model puts in RAM; code and
/// stack come on top, so passing this check is necessary, not sufficient).
fn check_fit(g: &Graph, plan: &MemoryPlan, target: &Target) -> Result<(), CompileError> {
    let Some(mcu) = &target.mcu else { return Ok(()) };
    let consts: std::collections::BTreeSet<_> = plan
        .location
        .iter()
        .filter_map(|l| match l {
            Some(plan::Location::Const(v)) => Some(*v),
            _ => None,
        })
        .collect();
    let stored = |v| match kiln_ir::analysis::packed_weight_bits(g, v) {
        Some(b) => kiln_runtime::packed_len(g.value(v).ty.numel(), b),
        None => g.value(v).ty.bytes(),
    };
    let weights: usize = consts.iter().map(|&v| stored(v)).sum();
    let fail = |what, need, limit| CompileError::DoesNotFit {
        mcu: mcu.name,
        what,
        need,
        limit,
    };
    if weights > mcu.flash {
        return Err(fail("flash for weights", weights, mcu.flash));
    }
    if target.is_avr() {
        // avr-gcc objects are at most PTRDIFF_MAX bytes, and `pgm_read_*` reaches only
        // the first 64 KiB of flash.
        if let Some(v) = consts.iter().copied().find(|&v| stored(v) > 32767) {
            return Err(CompileError::AvrLimit(format!(
                "constant `{}` is {} bytes; an AVR object can be at most 32767",
                g.value(v).name,
                stored(v)
            )));
        }
        if weights > 65535 {
            return Err(CompileError::AvrLimit(format!(
                "the weights take {weights} bytes; flash beyond 64 KiB needs far reads, which the C backend does not emit yet"
            )));
        }
    }
    if plan.arena_size > mcu.ram {
        return Err(fail("RAM for the arena", plan.arena_size, mcu.ram));
    }
    Ok(())
}

/// A GNU `ar` archive holding one object, with the symbol index linkers need.
fn static_lib(member: &str, object: &[u8]) -> std::io::Result<Vec<u8>> {
    use ar_archive_writer::{ArchiveKind, DEFAULT_OBJECT_READER, NewArchiveMember, write_archive_to_stream};
    let members = [NewArchiveMember::new(
        object,
        &DEFAULT_OBJECT_READER,
        member.to_string(),
    )];
    let mut cur = std::io::Cursor::new(Vec::new());
    write_archive_to_stream(&mut cur, &members, ArchiveKind::Gnu, false, None)?;
    Ok(cur.into_inner())
}

/// Writes every file into `dir`, all or nothing.
/// Writes `files` into `dir`, all or none: each under a fresh temporary name (never through
/// a link planted there), then renamed into place. Nothing is written when an output would
/// replace one of `inputs` (the model and its external data).
pub fn write_files(dir: &Path, files: &[(String, Vec<u8>)], inputs: &[PathBuf]) -> Result<(), CompileError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| CompileError::Io { path, source }
    };
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    refuse_overwriting(dir, files, inputs)?;
    let tag = format!(".kiln-tmp-{}", std::process::id());
    let mut written: Vec<(PathBuf, PathBuf)> = Vec::new();
    let result = (|| {
        for (name, bytes) in files {
            let tmp = dir.join(format!("{name}{tag}"));
            let _ = std::fs::remove_file(&tmp);
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&tmp)
                .map_err(io(&tmp))?;
            written.push((tmp.clone(), dir.join(name)));
            std::io::Write::write_all(&mut f, bytes).map_err(io(&tmp))?;
        }
        for (tmp, dst) in &written {
            std::fs::rename(tmp, dst).map_err(io(dst))?;
        }
        Ok(())
    })();
    if result.is_err() {
        for (tmp, _) in &written {
            let _ = std::fs::remove_file(tmp);
        }
    }
    result
}

/// An output replaces an input when its directory entry is the input's, or when it already
/// exists and resolves to the same file.
fn refuse_overwriting(dir: &Path, files: &[(String, Vec<u8>)], inputs: &[PathBuf]) -> Result<(), CompileError> {
    let entry = |p: &Path| -> Option<PathBuf> {
        let parent = p
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        Some(parent.canonicalize().ok()?.join(p.file_name()?))
    };
    for (name, _) in files {
        let dst = dir.join(name);
        for input in inputs {
            let same_entry = entry(&dst).is_some_and(|d| Some(d) == entry(input));
            let same_file = dst
                .canonicalize()
                .is_ok_and(|d| input.canonicalize().is_ok_and(|i| d == i));
            if same_entry || same_file {
                return Err(CompileError::WouldOverwriteInput {
                    path: dst,
                    input: input.clone(),
                });
            }
        }
    }
    Ok(())
}

//! The C backend: one self-contained C99 file per model — weights as `static const`
//! arrays, one `static` function per layer with its ONNX name in a comment and every shape
//! a constant, and `<prefix>_run` calling them over caller buffers and the arena planned by
//! `kiln_ir::plan`. No malloc, no printf; `<stdint.h>`/`<stddef.h>` only (plus `<math.h>`
//! when a model takes a square root). Float kernels follow the evaluator's order of
//! operations, and exp/tanh/sigmoid use the same Cephes-style approximations as the native
//! backend. Compile with ISO C (`-std=c99`), which keeps multiply-add contraction off.

mod avr;
mod conv;
mod elementwise;
mod int;
mod layout;
mod linalg;
mod mcu;
mod norm;
mod pool;
mod reduce;
mod resize;
mod rnn;
mod rom;
mod writer;

use crate::header;
use crate::shapes::f32_half_weight;
use crate::{Lowering, Refusal, need};
use kiln_ir::op::UnaryOp;
use kiln_ir::plan::{Location, MemoryPlan};
use kiln_ir::{Graph, NodeId, Op, Scalar, ValueId};
use std::fmt::Write;
use thiserror::Error;
use writer::{array, f32_lit};

/// Alignment the C backend asks of the arena.
pub const ARENA_ALIGN: usize = 16;

#[derive(Debug, Error)]
pub enum Error {
    #[error("{count} node(s) the C backend cannot compile yet:{list}", count = .0.len(), list = .0.iter().map(|s| format!("\n  {s}")).collect::<String>())]
    UnsupportedOps(Vec<String>),
    #[error(
        "node `{node}`: its kernel uses constant `{value}` other than by subscript, so it cannot read it from program memory"
    )]
    RomAccess { node: String, value: String },
}

#[derive(Clone, Debug)]
pub struct Options {
    pub prefix: String,
    /// Keep constants in program memory and read them with flash loads (AVR, where a
    /// `static const` array would otherwise be copied into RAM at start-up).
    pub progmem: bool,
    /// A 32-bit Cortex-M part: int8 convolutions use the kernels of `mcu` (stack-buffered
    /// planes, and DSP-extension paths chosen by the C preprocessor).
    pub cortex_m: bool,
}

pub struct Output {
    pub source: String,
}

/// Whether C for `opts` targets a host (vectors, caches, room for scratch) rather than a
/// Cortex-M part or AVR.
pub fn host(opts: &Options) -> bool {
    !opts.cortex_m && !opts.progmem
}

/// Scratch bytes per node: recurrent layers (h, c and the gate vectors), integer
/// convolutions, and on hosts float convolutions over a zero-bordered input copy.
pub fn scratch_bytes(g: &Graph, n: NodeId, opts: &Options) -> usize {
    match &g.node(n).op {
        Op::Rnn(r) => 4 * rnn::SCRATCH_PER_UNIT * r.hidden,
        Op::Conv(c) if host(opts) => conv::scratch_bytes(g, n, c),
        Op::QConv { .. } if opts.progmem && crate::pack::avr_product(g, n).is_some() => avr::conv_scratch(g, n),
        Op::QConv { .. } | Op::DynConv { .. } | Op::DynMatMul { .. } => int::qconv_scratch(g, n),
        _ => 0,
    }
}

fn shape(g: &Graph, v: ValueId) -> &[usize] {
    &g.value(v).ty.shape
}

/// Whether node `n` reads a binary16 weight.
fn half_weight(g: &Graph, n: NodeId) -> bool {
    g.node(n)
        .inputs
        .iter()
        .any(|&v| g.value(v).ty.dtype.scalar == Scalar::F16 && g.const_value(v).is_some())
}

fn f32_io(g: &Graph, n: NodeId) -> bool {
    let node = g.node(n);
    node.inputs
        .iter()
        .chain(&node.outputs)
        .all(|&v| g.value(v).ty.dtype.scalar == Scalar::F32)
}

/// Binary16 activations in and out, none of them a constant (`flash_reads` widens those).
pub(super) fn all_half(g: &Graph, n: NodeId) -> bool {
    let node = g.node(n);
    !half_weight(g, n) && (node.inputs.iter().chain(&node.outputs)).all(|&v| g.value(v).ty.dtype.scalar == Scalar::F16)
}

/// A fused activation's C expression (`lower` refuses a node whose activation has none).
fn unary_expr(u: UnaryOp, x: &str) -> String {
    elementwise::unary_expr(u, x).expect("lower checks fused activations")
}

fn fused_ok(u: Option<UnaryOp>) -> Lowering {
    need(
        u.is_none_or(|u| elementwise::unary_expr(u, "v").is_some()),
        "a fused activation without a C form",
    )
}

/// Why node `n` cannot be compiled to C yet, if it cannot: `lower`'s refusal, with the
/// node's name and input types.
pub fn unsupported(g: &Graph, n: NodeId, opts: &Options) -> Option<String> {
    lower(&mut String::new(), g, n, opts).err().map(|r| r.describe(g, n))
}

/// The integer kernels (`int`), which decide their support apart from their emitter.
fn lower_int(out: &mut String, g: &Graph, n: NodeId, opts: &Options) -> Lowering {
    need(int::supported(g, n) == Some(true), "no integer C kernel for this form")?;
    int::kernel(out, g, n, opts.cortex_m, opts.progmem);
    Ok(())
}

/// Lowers node `n` into the body of its kernel function or says why it cannot. This match
/// is the C backend's whole op contract: support is the existence of a lowering, and a
/// new `Op` variant does not compile until it has an arm here.
fn lower(out: &mut String, g: &Graph, n: NodeId, opts: &Options) -> Lowering {
    let node = g.node(n);
    let host = host(opts);
    let rank = shape(g, node.inputs[0]).len();
    match &node.op {
        Op::Identity | Op::Reshape { .. } => layout::copy(out, g, n),
        Op::Transpose { perm } => layout::transpose(out, g, n, perm),
        Op::Slice { axes } => layout::slice(out, g, n, axes),
        Op::Expand { .. } => layout::expand(out, g, n),
        Op::Tile { .. } => layout::tile(out, g, n),
        Op::Concat { axis } => layout::concat(out, g, n, *axis),
        Op::Split { axis, .. } => layout::split(out, g, n, *axis),
        Op::Gather { axis } => layout::gather(out, g, n, *axis),
        Op::GatherElements { axis } => layout::gather_elements(out, g, n, *axis),
        Op::GatherNd { batch_dims } => layout::gather_nd(out, g, n, *batch_dims),
        Op::ScatterElements { axis, reduction } => layout::scatter_elements(out, g, n, *axis, *reduction),
        Op::ScatterNd { reduction } => layout::scatter_nd(out, g, n, *reduction),
        Op::OneHot { axis, depth } => layout::one_hot(out, g, n, *axis, *depth),
        Op::Trilu { upper, k } => layout::trilu(out, g, n, *upper, *k),
        Op::Pad { mode, pads } => layout::pad(out, g, n, *mode, pads),
        Op::Unary(u) => elementwise::unary(out, g, n, *u),
        Op::Binary(b) => elementwise::binary(out, g, n, *b),
        Op::Where => elementwise::where_(out, g, n),
        Op::Cast { to } => elementwise::cast(out, g, n, *to),
        Op::Conv(c) => {
            need(f32_half_weight(g, n), "float32 (binary16 weights allowed) only")?;
            need(matches!(rank, 3 | 4), "a convolution over other than one or two axes")?;
            fused_ok(c.fused)?;
            conv::conv(out, g, n, c, host);
            Ok(())
        }
        Op::ConvTranspose(c) => {
            need(f32_io(g, n), "float32 only")?;
            conv::conv_transpose(out, g, n, c);
            Ok(())
        }
        Op::Gemm {
            alpha,
            beta,
            trans_a,
            trans_b,
            fused,
        } => {
            need(f32_half_weight(g, n), "float32 (binary16 weights allowed) only")?;
            fused_ok(*fused)?;
            linalg::gemm(out, g, n, (*alpha, *beta), (*trans_a, *trans_b), *fused, host);
            Ok(())
        }
        Op::MatMul => {
            let half = all_half(g, n);
            need(
                f32_half_weight(g, n) || half,
                "float32 (binary16 weights allowed) or binary16 only",
            )?;
            linalg::matmul(out, g, n, host, half);
            Ok(())
        }
        Op::Pool(_) | Op::GlobalPool(_) if int::supported(g, n).is_some() => lower_int(out, g, n, opts),
        Op::Pool(p) => pool::pool(out, g, n, p),
        Op::GlobalPool(kind) => reduce::global_pool(out, g, n, *kind),
        Op::Softmax { axis } => reduce::softmax(out, g, n, *axis, "soft"),
        Op::LogSoftmax { axis } => reduce::softmax(out, g, n, *axis, "log"),
        Op::Hardmax { axis } => reduce::softmax(out, g, n, *axis, "hard"),
        Op::Reduce { kind, axes, .. } => reduce::reduce(out, g, n, *kind, axes),
        Op::ArgMax { axis, last, .. } => reduce::arg(out, g, n, *axis, *last, true),
        Op::ArgMin { axis, last, .. } => reduce::arg(out, g, n, *axis, *last, false),
        Op::CumSum {
            axis,
            exclusive,
            reverse,
        } => reduce::cumsum(out, g, n, *axis, *exclusive, *reverse),
        Op::TopK { axis, k, largest, .. } => reduce::top_k(out, g, n, *axis, *k, *largest),
        Op::LayerNorm { axis, epsilon } => norm::layer_norm(out, g, n, *axis, *epsilon),
        Op::InstanceNorm { epsilon } => norm::instance_norm(out, g, n, *epsilon),
        Op::BatchNorm { epsilon } => norm::batch_norm(out, g, n, *epsilon),
        Op::Lrn {
            size,
            alpha,
            beta,
            bias,
        } => norm::lrn(out, g, n, *size, *alpha, *beta, *bias),
        Op::Rnn(r) => rnn::rnn(out, g, n, r),
        Op::Resize(rz) => resize::resize(out, g, n, rz, opts.progmem),
        Op::Einsum { equation } => linalg::einsum(out, g, n, equation),
        Op::Quantize { .. }
        | Op::Dequantize { .. }
        | Op::QConv { .. }
        | Op::QMatMul { .. }
        | Op::QBlockMatMul { .. }
        | Op::DynConv { .. }
        | Op::DynMatMul { .. }
        | Op::QAdd(_)
        | Op::QMul(_)
        | Op::QPRelu(_)
        | Op::QSoftmax { .. }
        | Op::Lut { .. }
        | Op::Requant { .. }
        | Op::QSoftmax16 { .. }
        | Op::Lut16 { .. } => lower_int(out, g, n, opts),
        Op::DynamicQuantize | Op::IntConv { .. } | Op::IntMatMul => {
            Err(Refusal("ONNX dynamic quantization ops are folded before code is made"))
        }
    }
}

/// Whether C `text` calls into `<math.h>` or names its `INFINITY`/`NAN`.
fn uses_math(text: &str) -> bool {
    const NAMES: &[&str] = &[
        "sqrt", "log", "log1p", "exp", "pow", "fmod", "floor", "ceil", "rint", "erf", "sin", "cos", "tan", "asin",
        "acos", "atan", "sinh", "cosh", "asinh", "acosh", "atanh",
    ];
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i].is_ascii_alphabetic() || bytes[i] == b'_' {
            let start = i;
            while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_') {
                i += 1;
            }
            let word = &text[start..i];
            if word == "INFINITY" || word == "NAN" {
                return true;
            }
            let call = bytes.get(i) == Some(&b'(');
            let base = word.strip_suffix('f').filter(|b| NAMES.contains(b)).unwrap_or(word);
            if call && NAMES.contains(&base) {
                return true;
            }
        } else {
            i += 1;
        }
    }
    false
}

/// binary16 to f32, exact (every binary16 value is an f32), integer operations only.
const HALF_PRELUDE: &str = r#"
static inline float kiln_h2f(uint16_t h) {
    uint32_t s = (uint32_t)(h & 0x8000u) << 16, e = (uint32_t)(h >> 10) & 0x1fu, m = h & 0x3ffu, u;
    union { uint32_t u; float f; } v;
    if (e == 0x1fu) {
        u = s | 0x7f800000u | (m << 13);
    } else if (e != 0) {
        u = s | ((e + 112u) << 23) | (m << 13);
    } else if (m != 0) {
        e = 113u;
        while (!(m & 0x400u)) { m <<= 1; --e; }
        u = s | (e << 23) | ((m & 0x3ffu) << 13);
    } else {
        u = s;
    }
    v.u = u;
    return v.f;
}
"#;

/// f64 to binary16 (emitted only when a kernel rounds to binary16).
const D2H_PRELUDE: &str = r#"
/* double to binary16, rounding to nearest even (the evaluator's f16::from_f64) */
static inline uint16_t kiln_d2h(double d) {
    union { double d; uint64_t u; } v;
    uint64_t m, q, rem, half;
    uint16_t s;
    int32_t e;
    v.d = d;
    s = (uint16_t)((v.u >> 48) & 0x8000u);
    e = (int32_t)((v.u >> 52) & 0x7ffu) - 1023 + 15;
    m = v.u & 0xfffffffffffffull;
    if (e == 0x7ff - 1023 + 15) return (uint16_t)(s | 0x7c00u | (m ? 0x200u : 0u));
    if (e >= 31) return (uint16_t)(s | 0x7c00u);
    if (e <= 0) {
        int32_t shift = 43 - e;
        if (shift > 53) return s;
        m |= 1ull << 52;
        q = m >> shift;
        rem = m & ((1ull << shift) - 1u);
        half = 1ull << (shift - 1);
        if (rem > half || (rem == half && (q & 1u))) ++q;
        return (uint16_t)(s | q);
    }
    q = m >> 42;
    rem = m & ((1ull << 42) - 1u);
    q |= (uint64_t)e << 10;
    if (rem > (1ull << 41) || (rem == (1ull << 41) && (q & 1u))) ++q;
    return (uint16_t)(s | q);
}
"#;

/// Helpers every file carries (unused ones are `static inline`, so no warnings).
/// `KILN_LAYER_BEGIN(k)`/`KILN_LAYER_END(k)` wrap the call of kernel `k` in the entry
/// points: empty unless defined before this file is compiled (e.g. `-D` to a simulator's
/// region markers, for a per-layer profile).
const PRELUDE: &str = r#"
#ifndef KILN_LAYER_BEGIN
#define KILN_LAYER_BEGIN(k)
#endif
#ifndef KILN_LAYER_END
#define KILN_LAYER_END(k)
#endif
static inline float kiln_maxf(float a, float b) { return (a != a || b != b) ? a + b : (a > b ? a : b); }
static inline float kiln_minf(float a, float b) { return (a != a || b != b) ? a + b : (a < b ? a : b); }
static inline float kiln_absf(float a) { return a < 0.0f ? -a : a; }
static inline float kiln_nearbyf(float x) {
    /* round half to even for |x| < 2^23 (exp's range reduction only needs small x) */
    const float big = 8388608.0f;
    float a = kiln_absf(x);
    if (!(a < big)) return x;
    float r = (a + big) - big;
    return x < 0.0f ? -r : r;
}
/* e^x: Cody-Waite reduction by ln 2 and a degree-6 polynomial (as the native backend). */
static inline float kiln_expf(float x) {
    if (x != x) return x;
    if (x > 88.72283f) return 1.0f / 0.0f;
    float xc = x < -87.33654f ? -87.33654f : x;
    float n = kiln_nearbyf(xc * 1.44269504f);
    float r = xc - n * 0.693359375f;
    r = r - n * -2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * (r * r) + r + 1.0f;
    int32_t e = (int32_t)n;
    union { uint32_t u; float f; } s;
    if (e >= 128) { s.u = (uint32_t)(127 + 127) << 23; return p * s.f * 2.0f; }
    s.u = (uint32_t)(e + 127) << 23;
    return p * s.f;
}
static inline float kiln_sigmoidf(float x) {
    if (x != x) return x;
    float e = kiln_expf(-kiln_absf(x));
    float d = 1.0f + e;
    return x >= 0.0f ? 1.0f / d : e / d;
}
static inline float kiln_tanhf(float x) {
    float a = kiln_absf(x);
    if (a < 0.625f) {
        float z = x * x;
        float p = -5.70498872745e-3f;
        p = p * z + 2.06390887954e-2f;
        p = p * z - 5.37397155531e-2f;
        p = p * z + 1.33314422036e-1f;
        p = p * z - 3.33332819422e-1f;
        return p * z * x + x;
    }
    float r = 1.0f - 2.0f / (kiln_expf(a + a) + 1.0f);
    return x < 0.0f ? -r : r;
}
"#;

pub fn emit(g: &Graph, plan: &MemoryPlan, opts: &Options) -> Result<Output, Error> {
    let bad: Vec<String> = plan.order.iter().filter_map(|&n| unsupported(g, n, opts)).collect();
    if !bad.is_empty() {
        return Err(Error::UnsupportedOps(bad));
    }
    let p = &opts.prefix;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "/* {p}.c: generated by Kiln {}. Do not edit. */",
        env!("CARGO_PKG_VERSION")
    );
    let _ = writeln!(out, "#include \"{p}.h\"");
    if opts.progmem {
        out.push_str(rom::PRELUDE);
    }
    out.push_str(PRELUDE);
    // the typed helpers go here once the kernels show they need them
    let helpers_at = out.len();
    if plan.order.iter().any(|&n| int::supported(g, n).is_some()) {
        out.push_str(int::PRELUDE);
    }
    if opts.cortex_m {
        out.push_str(mcu::PRELUDE);
    }
    if opts.progmem && plan.order.iter().any(|&n| crate::pack::avr_product(g, n).is_some()) {
        out.push_str(avr::PRELUDE);
    }
    let half = |n: NodeId| {
        let node = g.node(n);
        node.inputs
            .iter()
            .chain(&node.outputs)
            .any(|&v| g.value(v).ty.dtype.scalar == Scalar::F16)
    };
    if plan.order.iter().any(|&n| half(n)) {
        out.push_str(HALF_PRELUDE);
        out.push_str(if opts.progmem {
            "static inline float kiln_ld_half(const uint16_t *p) { return kiln_h2f(pgm_read_word(p)); }\n"
        } else {
            "static inline float kiln_ld_half(const uint16_t *p) { return kiln_h2f(*p); }\n"
        });
    }
    let storage = if opts.progmem {
        "static const PROGMEM "
    } else {
        "static const "
    };
    // Weights.
    let mut names: std::collections::HashMap<ValueId, String> = std::collections::HashMap::new();
    let read: Vec<ValueId> = plan
        .order
        .iter()
        .flat_map(|&n| g.node(n).inputs.iter().copied())
        .chain(g.outputs().iter().copied())
        .collect();
    {
        for v in read {
            if let Some(t) = g.const_value(v)
                && !names.contains_key(&v)
            {
                let name = format!("w{}", v.index());
                let packed = kiln_ir::analysis::packed_weight_bits(g, v);
                let reordered = if opts.cortex_m {
                    crate::pack::const_values(g, v)
                } else if opts.progmem {
                    crate::pack::avr_const_values(g, v)
                } else {
                    None
                };
                let items: Vec<String> = match &t.data {
                    _ if reordered.is_some() => reordered.iter().flatten().map(|x| x.to_string()).collect(),
                    _ if packed.is_some() => {
                        let w: Vec<i8> = t.to_i64_vec().iter().map(|&x| x as i8).collect();
                        let bits = packed.unwrap_or(8);
                        let mut p = vec![0u8; kiln_runtime::packed_len(w.len(), bits)];
                        kiln_runtime::pack_weights(&w, bits, &mut p);
                        p.iter().map(|b| b.to_string()).collect()
                    }
                    kiln_ir::Data::F16(h) => h.iter().map(|x| x.to_bits().to_string()).collect(),
                    _ => match t.data.scalar() {
                        Scalar::F32 => t.to_f32_vec().iter().map(|&x| f32_lit(x)).collect(),
                        _ => t.to_i64_vec().iter().map(|x| format!("{x}")).collect(),
                    },
                };
                let _ = writeln!(
                    out,
                    "\n/* `{}`: {} */",
                    crate::text::comment(&g.value(v).name),
                    g.value(v).ty
                );
                let ty = if packed.is_some() {
                    "uint8_t"
                } else {
                    header::c_type(t.data.scalar())
                };
                // the DSP kernels read reordered weights a word (or two) at a time
                let qualifiers = if reordered.is_some() && opts.cortex_m {
                    format!("{storage}KILN_WORDS ")
                } else {
                    storage.to_string()
                };
                array(&mut out, &qualifiers, ty, &name, &items);
                names.insert(v, name);
            }
        }
    }
    // Kernels.
    for (k, &n) in plan.order.iter().enumerate() {
        if !aliased(g, plan, n) {
            let mut text = String::new();
            kernel(&mut text, g, n, k, opts);
            // the AVR product kernels read flash themselves (`avr`: post-increment loads)
            let own_reads = opts.progmem && crate::pack::avr_product(g, n).is_some();
            if !own_reads && (opts.progmem || half_weight(g, n) || packed_weight(g, n)) {
                text = flash_reads(g, n, k, &text, opts)?;
            }
            if opts.cortex_m {
                // kept out of line: one kernel's registers are not the whole model's
                text = text.replacen("*/\nstatic void k", "*/\nKILN_KERNEL k", 1);
            }
            out.push_str(&text);
        }
    }
    // Entry points.
    let api = header::Api::new(g, plan, p, "");
    entry(&mut out, g, plan, opts, &names, &api, None);
    if let Some(int) = &api.int {
        entry(&mut out, g, plan, opts, &names, &api, Some(int));
    }
    if elementwise::HELPERS.iter().any(|h| out[helpers_at..].contains(h)) {
        out.insert_str(helpers_at, elementwise::PRELUDE);
    }
    if out[helpers_at..].contains("kiln_d2h(") {
        out.insert_str(helpers_at, D2H_PRELUDE);
    }
    // math.h when a kernel calls it or a constant is spelled INFINITY or NAN
    if uses_math(&out) {
        let head = format!("#include \"{p}.h\"\n");
        out = out.replacen(&head, &format!("{head}#include <math.h>\n"), 1);
    }
    Ok(Output { source: out })
}

/// Prints `<prefix>_run`, or with `int` the `<prefix>_run_int` variant, which takes the int8
/// buffers in place of the boundary Quantize/Dequantize nodes (copied at the same point of
/// the schedule, so the memory plan holds). Parameters get positional names here (the header
/// carries the model's), so no ONNX name can collide with a kernel, a weight or a local.
fn entry(
    out: &mut String,
    g: &Graph,
    plan: &MemoryPlan,
    opts: &Options,
    names: &std::collections::HashMap<ValueId, String>,
    api: &header::Api,
    int: Option<&header::IntApi>,
) {
    let p = &opts.prefix;
    let mut params: Vec<String> = Vec::new();
    let mut doc = String::new();
    for (i, q) in api.inputs.iter().enumerate() {
        let ty = header::c_type(int.map_or(q.scalar, |ia| ia.inputs[i].scalar));
        params.push(format!("const {ty} *in{i}"));
        let _ = write!(doc, "\n * in{i}: `{}`", crate::text::comment(&q.name));
    }
    for (i, q) in api.outputs.iter().enumerate() {
        let ty = header::c_type(int.map_or(q.scalar, |ia| ia.outputs[i].scalar));
        params.push(format!("{ty} *out{i}"));
        let _ = write!(doc, "\n * out{i}: `{}`", crate::text::comment(&q.name));
    }
    params.push("void *arena".into());
    let (name, what) = match int {
        Some(_) => (format!("{p}_run_int"), "Entry point on integer buffers."),
        None => (format!("{p}_run"), "Entry point."),
    };
    let _ = writeln!(out, "\n/* {what}{doc} */");
    let _ = writeln!(out, "int {name}({}) {{", params.join(", "));
    let _ = writeln!(out, "    unsigned char *a = (unsigned char *)arena;");
    let unused: Vec<String> = (0..api.inputs.len())
        .map(|i| format!("(void)in{i};"))
        .chain((0..api.outputs.len()).map(|i| format!("(void)out{i};")))
        .chain(["(void)a;".to_string()])
        .collect();
    let _ = writeln!(out, "    {}", unused.join(" "));
    let ptr = |v: ValueId, writable: bool| -> String {
        let ty = header::c_type(g.value(v).ty.dtype.scalar);
        match plan.loc(v) {
            Location::Input(i) => {
                if writable {
                    format!("({ty} *)in{i}")
                } else {
                    format!("in{i}")
                }
            }
            Location::Output(i) => format!("out{i}"),
            Location::Arena(off) => format!("({ty} *)(a + {off})"),
            Location::Const(c) => names.get(&c).cloned().unwrap_or_else(|| "0".into()),
        }
    };
    for (k, &n) in plan.order.iter().enumerate() {
        let node = g.node(n);
        if aliased(g, plan, n) {
            continue; // a Reshape planned onto its input's bytes: nothing to move
        }
        if let Some(int) = int {
            if let Some(i) = int.inputs.iter().position(|q| q.node == n) {
                let _ = writeln!(
                    out,
                    "    for (size_t i = 0; i < {}u; ++i) ({})[i] = in{i}[i];",
                    g.value(node.outputs[0]).ty.numel(),
                    ptr(node.outputs[0], true)
                );
                continue;
            }
            if let Some(j) = int.outputs.iter().position(|q| q.node == n) {
                let _ = writeln!(
                    out,
                    "    for (size_t i = 0; i < {}u; ++i) out{j}[i] = ({})[i];",
                    g.value(node.inputs[0]).ty.numel(),
                    ptr(node.inputs[0], false)
                );
                continue;
            }
        }
        let mut args: Vec<String> = node.inputs.iter().map(|&v| ptr(v, false)).collect();
        args.extend(node.outputs.iter().map(|&v| ptr(v, true)));
        if let Some(off) = plan.scratch.get(&n) {
            args.push(format!("(float *)(a + {off})"));
        }
        let _ = writeln!(
            out,
            "    KILN_LAYER_BEGIN({k}); k{k}({}); KILN_LAYER_END({k});",
            args.join(", ")
        );
    }
    for (i, &v) in g.outputs().iter().enumerate() {
        if int.is_some() {
            break; // every output came from a boundary Dequantize, copied above
        }
        let src = match plan.loc(v) {
            Location::Output(j) if j == i => continue,
            // nothing to copy (a constant array still counts as used)
            Location::Const(_) if g.value(v).ty.numel() == 0 => {
                let _ = writeln!(out, "    (void){};", ptr(v, false));
                continue;
            }
            _ if g.value(v).ty.numel() == 0 => continue,
            Location::Const(_) if opts.progmem => {
                let ty = header::c_type(g.value(v).ty.dtype.scalar);
                format!("kiln_ld_{ty}(&{}[i])", ptr(v, false))
            }
            _ => format!("{}[i]", ptr(v, false)),
        };
        let _ = writeln!(
            out,
            "    for (size_t i = 0; i < {}u; ++i) out{i}[i] = {src};",
            g.value(v).ty.numel(),
        );
    }
    let _ = writeln!(out, "    return 0;\n}}");
}

/// Routes a kernel's reads of its constant inputs through loads (see `rom`): flash loads
/// when `progmem`, and binary16 weights through `kiln_ld_half`, which widens them.
fn flash_reads(g: &Graph, n: NodeId, k: usize, text: &str, opts: &Options) -> Result<String, Error> {
    let progmem = opts.progmem;
    let node = g.node(n);
    let rom: Vec<(String, &str)> = node
        .inputs
        .iter()
        .enumerate()
        .filter(|(_, v)| g.const_value(**v).is_some())
        .filter_map(|(i, &v)| match g.value(v).ty.dtype.scalar {
            _ if let Some(b) = kiln_ir::analysis::packed_weight_bits(g, v) => {
                Some((format!("x{i}"), if b == 4 { "w4" } else { "w2" }))
            }
            Scalar::F16 => Some((format!("x{i}"), "half")),
            s if progmem => Some((format!("x{i}"), header::c_type(s))),
            _ => None,
        })
        .collect();
    let head = sig(g, n, k, opts).len();
    let body = rom::rewrite(&text[head..], &rom).map_err(|word| {
        let input = word.strip_prefix('x').and_then(|i| i.parse::<usize>().ok());
        Error::RomAccess {
            node: node.name.clone(),
            value: input.map_or(word, |i| g.value(node.inputs[i]).name.clone()),
        }
    })?;
    Ok(format!("{}{body}", &text[..head]))
}

/// Whether node `n` reads weights stored packed (narrower than 8 bits).
fn packed_weight(g: &Graph, n: NodeId) -> bool {
    g.node(n)
        .inputs
        .iter()
        .any(|&v| kiln_ir::analysis::packed_weight_bits(g, v).is_some())
}

/// A reshape-like node whose output the plan placed on its input's bytes.
fn aliased(g: &Graph, plan: &MemoryPlan, n: NodeId) -> bool {
    let node = g.node(n);
    matches!(node.op, Op::Reshape { .. } | Op::Identity) && plan.loc(node.inputs[0]) == plan.loc(node.outputs[0])
}

fn sig(g: &Graph, n: NodeId, k: usize, opts: &Options) -> String {
    let node = g.node(n);
    let mut ps: Vec<String> = node
        .inputs
        .iter()
        .enumerate()
        .map(|(i, &v)| {
            let ty = if kiln_ir::analysis::packed_weight_bits(g, v).is_some() {
                "uint8_t"
            } else {
                header::c_type(g.value(v).ty.dtype.scalar)
            };
            format!("const {ty} *x{i}")
        })
        .collect();
    ps.extend(
        node.outputs
            .iter()
            .enumerate()
            .map(|(i, &v)| format!("{} *y{i}", header::c_type(g.value(v).ty.dtype.scalar))),
    );
    if scratch_bytes(g, n, opts) > 0 {
        ps.push("float *s".into());
    }
    let ins: Vec<String> = node.inputs.iter().map(|&v| g.value(v).ty.to_string()).collect();
    let outs: Vec<String> = node.outputs.iter().map(|&v| g.value(v).ty.to_string()).collect();
    // Not every kernel reads every pointer (a Pow by a constant ignores the exponent).
    let voids: Vec<String> = ps
        .iter()
        .map(|p| format!("(void){};", p.rsplit([' ', '*']).next().unwrap_or("")))
        .collect();
    format!(
        "\n/* node `{}` ({}): {} -> {} */\nstatic void k{k}({}) {{\n    {}\n",
        crate::text::comment(&node.name),
        node.op.name(),
        ins.join(", "),
        outs.join(", "),
        ps.join(", "),
        voids.join(" ")
    )
}

/// Kernel function `k` for node `n`: its signature and `lower`'s body.
fn kernel(out: &mut String, g: &Graph, n: NodeId, k: usize, opts: &Options) {
    out.push_str(&sig(g, n, k, opts));
    lower(out, g, n, opts).expect("emit checked every node");
    out.push_str("}\n");
}

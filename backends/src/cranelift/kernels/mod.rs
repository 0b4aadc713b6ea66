//! Kernel emission: one Cranelift function per IR node, shapes baked in as constants.
//! Each kernel receives pointers: the node's inputs, its outputs, a scratch buffer in the
//! arena, and any read-only tables the kernel asked for (`aux`, e.g. repacked weights).
//!
//! Float kernels accumulate in the evaluator's order (bias first, then taps/products in
//! index order), so they reproduce the evaluator bit for bit except where an op needs
//! exp/log/tanh/erf (see `fx.rs` for those bounds) or the target fuses multiply-add
//! (`Target::fma`: products and depthwise taps round once, within the tolerance stated in
//! ARCHITECTURE.md).

mod convt;
mod dot;
mod dwconv;
mod elementwise;
mod gemm;
mod index;
mod layout;
mod nest;
mod nn;
mod norm;
mod pairs;
mod qdw;
mod quant;
mod resize;
mod rnn;
mod typed;
mod wide;

use super::fx::Fx;
use crate::need;
use cranelift_codegen::ir::Value;
pub use dot::Dot;
use kiln_ir::op::{Numerics, PadMode, ScatterReduction};
use kiln_ir::{Graph, NodeId, Op, Scalar};

/// Pointers handed to a kernel.
pub(crate) struct Args {
    pub ins: Vec<Value>,
    pub outs: Vec<Value>,
    pub scratch: Value,
    pub aux: Vec<Value>,
}

/// Code generation choices shared by all kernels.
#[derive(Clone, Copy)]
pub(crate) struct Target {
    /// 128-bit float vectors are available (x86-64 SSE2, AArch64 NEON).
    pub simd: bool,
    /// The 4-way byte dot product the CPU features give, if any.
    pub dot: Option<Dot>,
    /// Fused multiply-add in hardware (x86-64 `fma`, AArch64): float products may round
    /// once per multiply-add instead of twice (within the documented float tolerance).
    pub fma: bool,
    /// x86-64 with AVX2 and FMA: float products run on the 256-bit machine-code
    /// micro-kernels of [`wide`].
    pub wide: bool,
}

fn f32_only(g: &Graph, n: NodeId) -> bool {
    let node = g.node(n);
    node.inputs
        .iter()
        .chain(&node.outputs)
        .all(|&v| g.value(v).ty.dtype.scalar == Scalar::F32)
}

/// f32 in, f32 out, with a vectorizable kernel.
fn fast_unary(g: &Graph, n: NodeId, u: kiln_ir::op::UnaryOp) -> bool {
    f32_only(g, n) && elementwise::unary_supported(u)
}

fn fast_binary(g: &Graph, n: NodeId, b: kiln_ir::op::BinaryOp) -> bool {
    f32_only(g, n) && elementwise::binary_supported(b)
}

/// Why node `n` cannot be compiled by this backend, if it cannot: `lower`'s refusal (the
/// target's choices pick kernels, never support, so any target answers).
pub(crate) fn unsupported(g: &Graph, n: NodeId) -> Option<String> {
    let t = Target {
        simd: true,
        dot: None,
        fma: false,
        wide: false,
    };
    lower(g, n, t).err().map(|r| r.describe(g, n))
}

/// Arena bytes the kernel of node `n` needs as scratch: its own, then room to unpack
/// narrow weights (see [`packed`]).
pub(crate) fn scratch_bytes(g: &Graph, n: NodeId, dot: Option<Dot>) -> usize {
    match packed(g, n) {
        Some((_, count)) => kernel_scratch(g, n, dot).next_multiple_of(16) + count.next_multiple_of(16),
        None => kernel_scratch(g, n, dot),
    }
}

/// The width and element count of node `n`'s packed weight: integer products with narrow
/// weights keep them packed in read-only data and unpack them into scratch as they start.
pub(crate) fn packed(g: &Graph, n: NodeId) -> Option<(u8, usize)> {
    let node = g.node(n);
    if !matches!(
        node.op,
        Op::QConv { .. } | Op::QMatMul { .. } | Op::QBlockMatMul { .. } | Op::DynMatMul { .. }
    ) {
        return None;
    }
    let w = *node.inputs.get(1)?;
    kiln_ir::analysis::packed_weight_bits(g, w).map(|b| (b, g.value(w).ty.numel()))
}

/// Narrow weights packed for read-only data.
pub(crate) fn pack_bytes(bytes: &[u8], bits: u8) -> Vec<u8> {
    quant::pack(bytes, bits)
}

fn kernel_scratch(g: &Graph, n: NodeId, dot: Option<Dot>) -> usize {
    match &g.node(n).op {
        Op::QConv { .. } if let (Some(d), true) = (dot, dot::applies(g, n)) => dot::scratch(g, n, d),
        Op::QConv { .. } if let (Some(_), Some(d)) = (dot, qdw::QDw::of(g, n)) => d.scratch(),
        Op::Rnn(r) => rnn::scratch_bytes(r),
        Op::Conv(_) => gemm::conv_scratch(g, n),
        Op::DynConv { .. } if let (Some(d), true) = (dot, dot::applies(g, n)) => {
            quant::dyn_input_bytes(g, n) + dot::scratch(g, n, d)
        }
        Op::DynConv { .. } if let (Some(_), Some(d)) = (dot, qdw::QDw::of(g, n)) => {
            quant::dyn_input_bytes(g, n) + d.scratch()
        }
        Op::QConv { .. } | Op::DynConv { .. } | Op::DynMatMul { .. } => quant::qconv_scratch(g, n),
        _ => 0,
    }
}

/// Read-only tables the kernel wants, computed at compile time.
pub(crate) fn aux_data(g: &Graph, n: NodeId, t: Target) -> Vec<Vec<u8>> {
    let dot = t.dot;
    match &g.node(n).op {
        Op::QConv { .. } | Op::DynConv { .. }
            if let (true, Some(Dot::Pairs), Some(d)) = (t.wide, dot, qdw::QDw::of(g, n)) =>
        {
            // the 256-bit kernel's halfword weights after the usual tables, then its
            // finish records where it finishes the sums itself
            let mut v = quant::aux(g, n, dot);
            v.push(qdw::wide_weights(g, n, &d));
            v.extend(qdw::finish_table(g, n));
            v
        }
        Op::QConv { .. } if t.wide && dot == Some(Dot::Pairs) && dot::finishes_wide(g, n, Dot::Pairs) => {
            // the 256-bit kernel's finish records after the usual tables
            let mut v = quant::aux(g, n, dot);
            v.push(dot::finish_table(g, n));
            v
        }
        Op::Lut { .. }
        | Op::Lut16 { .. }
        | Op::QMatMul { .. }
        | Op::QBlockMatMul { .. }
        | Op::QConv { .. }
        | Op::QSoftmax { .. }
        | Op::QSoftmax16 { .. }
        | Op::DynConv { .. }
        | Op::DynMatMul { .. } => quant::aux(g, n, dot),
        Op::Pool(_) | Op::GlobalPool(_) if int8_pool(g, n) => quant::aux(g, n, dot),
        Op::QAdd(_) if g.value(g.node(n).inputs[0]).ty.dtype.scalar == Scalar::I8 => quant::aux(g, n, dot),
        Op::Conv(_) => gemm::conv_aux(g, n),
        Op::Pool(_) if rank(g, n) > 4 || !f32_only(g, n) => vec![],
        Op::Pool(_) => nn::pool_aux(g, n),
        Op::BatchNorm { .. } if !const_params(g, n) => vec![],
        Op::BatchNorm { .. } => nn::batch_norm_aux(g, n),
        Op::Gemm { .. } => nn::gemm_aux(g, n),
        Op::Resize(_) => resize::aux(g, n),
        Op::Pad { mode, .. } if *mode != PadMode::Constant => layout::pad_table(g, n),
        _ => vec![],
    }
}

/// Whether the kernel reads input `slot` through its pointer (repacked weights are read
/// from `aux` instead, so the original constant need not be emitted).
pub(crate) fn reads_input(g: &Graph, n: NodeId, slot: usize, dot: Option<Dot>) -> bool {
    match &g.node(n).op {
        Op::QConv { .. } | Op::DynConv { .. } if dot == Some(Dot::Pairs) && dot::applies(g, n) => slot != 1,
        Op::BatchNorm { .. } => slot == 0 || !const_params(g, n),
        Op::Gemm { trans_b: true, .. } => slot != 1 || g.const_value(g.node(n).inputs[1]).is_none(),
        Op::QMatMul { .. } | Op::QBlockMatMul { .. } | Op::DynMatMul { .. } => slot != 1,
        _ => true,
    }
}

pub(crate) fn emit(fx: &mut Fx, g: &Graph, n: NodeId, a: &Args, t: Target) {
    if let Some((bits, count)) = packed(g, n) {
        // unpack the weights into scratch, then run the int8 kernel on them: a convolution
        // reads its weight input, a product its column table (aux 2; a hybrid one's aux 1)
        let dst = fx.add_imm(a.scratch, kernel_scratch(g, n, t.dot).next_multiple_of(16) as i64);
        let src = match g.node(n).op {
            Op::QConv { .. } => a.ins[1],
            Op::DynMatMul { .. } => a.aux[1],
            _ => a.aux[2],
        };
        quant::unpack_weights(fx, src, dst, bits, count);
        let mut args = Args {
            ins: a.ins.clone(),
            outs: a.outs.clone(),
            scratch: a.scratch,
            aux: a.aux.clone(),
        };
        match g.node(n).op {
            Op::QConv { .. } => args.ins[1] = dst,
            Op::DynMatMul { .. } => args.aux[1] = dst,
            _ => args.aux[2] = dst,
        }
        return emit_kernel(fx, g, n, &args, t);
    }
    emit_kernel(fx, g, n, a, t)
}

/// What emits a node's kernel, once `lower` has accepted the node.
type Emit<'a> = Box<dyn FnOnce(&mut Fx, &Args) + 'a>;

fn emit_kernel(fx: &mut Fx, g: &Graph, n: NodeId, a: &Args, t: Target) {
    lower(g, n, t).expect("emit checked every node")(fx, a)
}

/// Lowers node `n`: the function that emits its kernel, or why this backend cannot. This
/// one exhaustive match is the native backend's op contract (support is the existence of
/// a lowering); the target only picks among kernels.
fn lower(g: &Graph, n: NodeId, t: Target) -> Result<Emit<'_>, crate::Refusal> {
    use kiln_ir::op::BinaryOp;
    let node = g.node(n);
    let float_ok = f32_only(g, n);
    let scalar = |i: usize| g.value(node.inputs[i]).ty.dtype.scalar;
    let rank = g.value(node.inputs[0]).ty.shape.len();
    let out_scalar = g.value(node.outputs[0]).ty.dtype.scalar;
    let float = || need(float_ok, "float32 only");
    Ok(match &node.op {
        Op::Unary(u) if fast_unary(g, n, *u) => Box::new(move |fx, a| elementwise::unary(fx, g, n, *u, a, t)),
        Op::Unary(u) => {
            need(typed::unary_supported(*u, scalar(0)), "this unary op on this type")?;
            Box::new(move |fx, a| typed::unary(fx, g, n, *u, a))
        }
        Op::Binary(b) if fast_binary(g, n, *b) => Box::new(move |fx, a| elementwise::binary(fx, g, n, *b, a, t)),
        Op::Binary(BinaryOp::Pow) => {
            need(scalar(0) != Scalar::Bool && scalar(1) != Scalar::Bool, "Pow on bool")?;
            Box::new(move |fx, a| typed::pow(fx, g, n, a))
        }
        Op::Binary(b) => {
            need(
                typed::binary_supported(*b, scalar(0)) && scalar(0) == scalar(1),
                "this binary op on these types",
            )?;
            Box::new(move |fx, a| typed::binary(fx, g, n, *b, a))
        }
        Op::Where => {
            need(typed::supported_scalar(out_scalar), "Where on this type")?;
            Box::new(move |fx, a| typed::where_(fx, g, n, a))
        }
        Op::Cast { to } => {
            need(
                typed::supported_scalar(*to) && typed::supported_scalar(scalar(0)),
                "this cast",
            )?;
            Box::new(move |fx, a| typed::cast(fx, g, n, a))
        }
        Op::Identity | Op::Reshape { .. } => Box::new(move |fx, a| layout::copy(fx, g, n, a)),
        Op::Transpose { perm } => Box::new(move |fx, a| layout::transpose(fx, g, n, perm, a)),
        Op::Slice { axes } => Box::new(move |fx, a| layout::slice(fx, g, n, axes, a)),
        Op::Expand { .. } => Box::new(move |fx, a| layout::expand(fx, g, n, a)),
        Op::Tile { repeats } => Box::new(move |fx, a| layout::tile(fx, g, n, repeats, a)),
        Op::Concat { axis } => Box::new(move |fx, a| layout::concat(fx, g, n, *axis, a)),
        Op::Split { axis, .. } => Box::new(move |fx, a| layout::split(fx, g, n, *axis, a)),
        Op::Gather { axis } => Box::new(move |fx, a| layout::gather(fx, g, n, *axis, a)),
        Op::Pad { mode, pads } => {
            need(
                *mode == PadMode::Constant || g.value(node.outputs[0]).ty.numel() <= 1 << 16,
                "a non-constant pad with an output over 64 Ki elements (its table)",
            )?;
            Box::new(move |fx, a| layout::pad(fx, g, n, *mode, pads, a))
        }
        Op::Conv(c) => {
            need(
                crate::shapes::f32_half_weight(g, n),
                "float32 (binary16 weights allowed) only",
            )?;
            need(
                (rank == 3 || rank == 4) && c.window.kernel.len() + 2 == rank,
                "a convolution over other than one or two axes",
            )?;
            need(
                c.fused.is_none_or(elementwise::unary_supported),
                "this fused activation",
            )?;
            Box::new(move |fx, a| gemm::conv(fx, g, n, c, a, t))
        }
        Op::Pool(p) if int8_pool(g, n) => {
            need(
                p.kind
                    != kiln_ir::op::PoolKind::Avg {
                        count_include_pad: true,
                    },
                "an integer average counting the padding",
            )?;
            Box::new(move |fx, a| quant::pool(fx, g, n, &p.window, p.kind, p.numerics, a))
        }
        Op::Pool(p) => {
            need(
                float_ok || (p.kind == kiln_ir::op::PoolKind::Max && !matches!(scalar(0), Scalar::F16 | Scalar::Bool)),
                "a pool on this type",
            )?;
            if rank > 4 || !float_ok {
                Box::new(move |fx, a| nn::pool_nd(fx, g, n, p, a))
            } else {
                Box::new(move |fx, a| nn::pool(fx, g, n, p, a))
            }
        }
        Op::GlobalPool(k) if int8_pool(g, n) => {
            need(!matches!(k, kiln_ir::op::PoolKind::Lp { .. }), "an integer Lp pool")?;
            Box::new(move |fx, a| {
                let w = quant::global_window(&g.value(g.node(n).inputs[0]).ty.shape);
                quant::pool(fx, g, n, &w, *k, Numerics::Onnx, a)
            })
        }
        Op::GlobalPool(k) => {
            float()?;
            Box::new(move |fx, a| nn::global_pool(fx, g, n, *k, a))
        }
        Op::Einsum { equation } => {
            need(
                (node.inputs.iter().chain(&node.outputs)).all(|&v| g.value(v).ty.dtype.scalar != Scalar::Bool),
                "Einsum on bool",
            )?;
            Box::new(move |fx, a| nn::einsum(fx, g, n, equation, a))
        }
        Op::BatchNorm { epsilon } => {
            float()?;
            if const_params(g, n) {
                Box::new(move |fx, a| nn::batch_norm(fx, g, n, a, t))
            } else {
                Box::new(move |fx, a| nn::batch_norm_dynamic(fx, g, n, *epsilon, a))
            }
        }
        Op::Gemm {
            alpha,
            beta,
            trans_a,
            trans_b,
            fused,
        } => {
            need(
                crate::shapes::f32_half_weight(g, n),
                "float32 (binary16 weights allowed) only",
            )?;
            need(fused.is_none_or(elementwise::unary_supported), "this fused activation")?;
            Box::new(move |fx, a| {
                let ab = (*alpha, *beta);
                if !nn::gemm(fx, g, n, ab, (*trans_a, *trans_b), *fused, a, t)
                    && let Some(u) = fused
                {
                    elementwise::in_place(fx, g, n, *u, a.outs[0], t);
                }
            })
        }
        Op::MatMul => {
            need(scalar(0) != Scalar::Bool, "MatMul on bool")?;
            Box::new(move |fx, a| nn::matmul(fx, g, n, a, t))
        }
        Op::Softmax { axis } | Op::LogSoftmax { axis } => {
            need(
                matches!(scalar(0), Scalar::F32 | Scalar::F16),
                "float32 or binary16 only",
            )?;
            let log = matches!(node.op, Op::LogSoftmax { .. });
            Box::new(move |fx, a| nn::softmax(fx, g, n, *axis, log, a))
        }
        Op::Reduce { kind, axes, .. } => {
            need(nn::reduce_supported(scalar(0)), "a reduction on this type")?;
            Box::new(move |fx, a| nn::reduce(fx, g, n, *kind, axes, a))
        }
        Op::Rnn(r) => {
            float()?;
            Box::new(move |fx, a| rnn::rnn(fx, g, n, r, a))
        }
        Op::ArgMax { .. }
        | Op::ArgMin { .. }
        | Op::Hardmax { .. }
        | Op::Trilu { .. }
        | Op::GatherElements { .. }
        | Op::ScatterElements { .. }
        | Op::ScatterNd { .. }
        | Op::CumSum { .. }
        | Op::TopK { .. }
        | Op::OneHot { .. }
        | Op::GatherNd { .. } => return lower_index(g, n),
        Op::LayerNorm { axis, epsilon } => {
            float()?;
            need(norm::layer_norm_supported(g, n, *axis), "this scale or bias broadcast")?;
            Box::new(move |fx, a| norm::layer_norm(fx, g, n, *axis, *epsilon, a))
        }
        Op::InstanceNorm { epsilon } => {
            float()?;
            Box::new(move |fx, a| norm::instance_norm(fx, g, n, *epsilon, a))
        }
        Op::Lrn {
            size,
            alpha,
            beta,
            bias,
        } => {
            float()?;
            Box::new(move |fx, a| norm::lrn(fx, g, n, *size, *alpha, *beta, *bias, a))
        }
        Op::ConvTranspose(c) => {
            float()?;
            Box::new(move |fx, a| convt::conv_transpose(fx, g, n, c, a))
        }
        Op::Resize(rz) => {
            float()?;
            Box::new(move |fx, a| resize::resize(fx, g, n, rz, a))
        }
        Op::Quantize { .. }
        | Op::Dequantize { .. }
        | Op::QConv { .. }
        | Op::QMatMul { .. }
        | Op::QBlockMatMul { .. }
        | Op::QAdd(_)
        | Op::QMul(_)
        | Op::QPRelu(_)
        | Op::QSoftmax { .. }
        | Op::QSoftmax16 { .. }
        | Op::Lut { .. }
        | Op::Lut16 { .. }
        | Op::Requant { .. }
        | Op::DynConv { .. }
        | Op::DynMatMul { .. } => return lower_integer(g, n, t),
        // ONNX's dynamic quantization ops: folded into DynConv/DynMatMul before code is made
        Op::DynamicQuantize | Op::IntConv { .. } | Op::IntMatMul => {
            return Err(crate::Refusal(
                "ONNX dynamic quantization ops are folded before code is made",
            ));
        }
    })
}

/// The integer and hybrid ops (routed here by `lower`).
fn lower_integer(g: &Graph, n: NodeId, t: Target) -> Result<Emit<'_>, crate::Refusal> {
    let node = g.node(n);
    let scalar = |i: usize| g.value(node.inputs[i]).ty.dtype.scalar;
    let rank = g.value(node.inputs[0]).ty.shape.len();
    Ok(match &node.op {
        Op::Quantize { scale, zero_point, to } => {
            need(matches!(to, Scalar::I8 | Scalar::U8 | Scalar::I16), "this integer type")?;
            Box::new(move |fx, a| quant::quantize(fx, g, n, *scale, *zero_point, a))
        }
        Op::Dequantize { scale, zero_point } => {
            need(
                matches!(scalar(0), Scalar::I8 | Scalar::U8 | Scalar::I16),
                "this integer type",
            )?;
            Box::new(move |fx, a| quant::dequantize(fx, g, n, *scale, *zero_point, a))
        }
        Op::QConv { window, group, q } => {
            need(
                (rank == 3 || rank == 4) && window.kernel.len() + 2 == rank,
                "a convolution over other than one or two axes",
            )?;
            if int16(g, n) {
                Box::new(move |fx, a| quant::qconv16(fx, g, n, window, *group, q, a))
            } else if let (Some(d), Some(w)) = (t.dot, qdw::QDw::of(g, n)) {
                Box::new(move |fx, a| qdw::qconv(fx, g, n, q, &w, a, d))
            } else if let (Some(d), true) = (t.dot, dot::applies(g, n)) {
                Box::new(move |fx, a| dot::qconv(fx, g, n, window, q, a, d))
            } else {
                Box::new(move |fx, a| quant::qconv(fx, g, n, window, *group, q, a))
            }
        }
        Op::QMatMul { q } => {
            if int16(g, n) {
                Box::new(move |fx, a| quant::qmatmul16(fx, g, n, q, a))
            } else if let (Some(d), true) = (t.dot, packed(g, n).is_none() && dot::matmul_applies(g, n)) {
                Box::new(move |fx, a| dot::qmatmul(fx, g, n, q, a, d))
            } else {
                Box::new(move |fx, a| quant::qmatmul(fx, g, n, Some(q), a))
            }
        }
        Op::QBlockMatMul { q, block } => Box::new(move |fx, a| quant::qblock_matmul(fx, g, n, q, *block, a)),
        Op::QAdd(q) => Box::new(move |fx, a| quant::qadd(fx, g, n, q, a)),
        Op::QMul(q) => Box::new(move |fx, a| quant::qmul(fx, g, n, q, a)),
        Op::QPRelu(q) => Box::new(move |fx, a| quant::qprelu(fx, g, n, q, a)),
        Op::QSoftmax { axis, .. } => Box::new(move |fx, a| quant::softmax(fx, g, n, *axis, a)),
        Op::QSoftmax16 { axis, .. } => Box::new(move |fx, a| quant::softmax16(fx, g, n, *axis, a)),
        Op::Lut { .. } => Box::new(move |fx, a| quant::lut(fx, g, n, a)),
        Op::Lut16 { .. } => Box::new(move |fx, a| quant::lut16(fx, g, n, a)),
        Op::Requant {
            input_zp,
            requant,
            zero_point,
            ..
        } => Box::new(move |fx, a| quant::requant(fx, g, n, *input_zp, *requant, *zero_point, a)),
        Op::DynConv { window, group, .. } => {
            need(
                (rank == 3 || rank == 4) && window.kernel.len() + 2 == rank,
                "a convolution over other than one or two axes",
            )?;
            Box::new(move |fx, a| quant::dyn_conv(fx, g, n, window, *group, a, t.dot))
        }
        Op::DynMatMul { .. } => match (t.dot, dot::dyn_matmul_applies(g, n)) {
            (Some(d), true) => Box::new(move |fx, a| dot::dyn_qmatmul(fx, g, n, a, d)),
            _ => Box::new(move |fx, a| quant::qmatmul(fx, g, n, None, a)),
        },
        other => unreachable!("`lower` routed {} to this family", other.name()),
    })
}

/// Arg-max/min, Hardmax and the index ops (routed here by `lower`).
fn lower_index(g: &Graph, n: NodeId) -> Result<Emit<'_>, crate::Refusal> {
    let node = g.node(n);
    let scalar = |i: usize| g.value(node.inputs[i]).ty.dtype.scalar;
    let out_scalar = g.value(node.outputs[0]).ty.dtype.scalar;
    let float_ok = f32_only(g, n);
    let float = || need(float_ok, "float32 only");
    let not_half_or_bool = |s: Scalar| need(!matches!(s, Scalar::F16 | Scalar::Bool), "binary16 or bool");
    Ok(match &node.op {
        Op::ArgMax { axis, last, .. } | Op::ArgMin { axis, last, .. } => {
            not_half_or_bool(scalar(0))?;
            let max = matches!(node.op, Op::ArgMax { .. });
            Box::new(move |fx, a| index::arg(fx, g, n, *axis, *last, max, a))
        }
        Op::Hardmax { axis } => {
            float()?;
            Box::new(move |fx, a| index::hardmax(fx, g, n, *axis, a))
        }
        Op::Trilu { upper, k } => {
            need(scalar(0) != Scalar::F16, "binary16")?;
            Box::new(move |fx, a| index::trilu(fx, g, n, *upper, *k, a))
        }
        Op::GatherElements { axis } => {
            need(scalar(0) != Scalar::F16, "binary16")?;
            Box::new(move |fx, a| index::gather_elements(fx, g, n, *axis, a))
        }
        Op::ScatterElements { reduction, .. } | Op::ScatterNd { reduction } => {
            need(scalar(0) != Scalar::F16, "binary16")?;
            need(
                *reduction == ScatterReduction::None || scalar(0) != Scalar::Bool,
                "a combining scatter on bool",
            )?;
            match &node.op {
                Op::ScatterElements { axis, .. } => {
                    Box::new(move |fx, a| index::scatter_elements(fx, g, n, *axis, *reduction, a))
                }
                _ => Box::new(move |fx, a| index::scatter_nd(fx, g, n, *reduction, a)),
            }
        }
        Op::CumSum {
            axis,
            exclusive,
            reverse,
        } => {
            not_half_or_bool(scalar(0))?;
            Box::new(move |fx, a| index::cumsum(fx, g, n, *axis, *exclusive, *reverse, a))
        }
        Op::TopK { axis, k, largest, .. } => {
            not_half_or_bool(scalar(0))?;
            Box::new(move |fx, a| index::topk(fx, g, n, *axis, *k, *largest, a))
        }
        Op::OneHot { axis, depth } => {
            need(out_scalar != Scalar::F16, "binary16")?;
            Box::new(move |fx, a| index::one_hot(fx, g, n, *axis, *depth, a))
        }
        Op::GatherNd { batch_dims } => {
            need(out_scalar != Scalar::F16, "binary16")?;
            Box::new(move |fx, a| index::gather_nd(fx, g, n, *batch_dims, a))
        }
        other => unreachable!("`lower` routed {} to this family", other.name()),
    })
}

/// An integer product on int16 activations (16x8).
fn int16(g: &Graph, n: NodeId) -> bool {
    g.value(g.node(n).inputs[0]).ty.dtype.scalar == Scalar::I16
}

/// Pooling of int8 values in 1-D or 2-D (the integer kernels of `quant`).
fn int8_pool(g: &Graph, n: NodeId) -> bool {
    let x = &g.value(g.node(n).inputs[0]).ty;
    matches!(x.dtype.scalar, Scalar::I8 | Scalar::I16) && matches!(x.shape.len(), 3 | 4)
}

fn rank(g: &Graph, n: NodeId) -> usize {
    g.value(g.node(n).inputs[0]).ty.shape.len()
}

/// BatchNorm parameters known at compile time (folded into two tables).
fn const_params(g: &Graph, n: NodeId) -> bool {
    g.node(n).inputs[1..].iter().all(|&v| g.const_value(v).is_some())
}

/// Row-major strides of `shape` in elements.
pub(crate) fn strides(shape: &[usize]) -> Vec<i64> {
    kiln_ir::tensor::strides(shape).into_iter().map(|s| s as i64).collect()
}

/// Broadcast strides of an input of shape `inp` read at the indices of `out` (0 on
/// broadcast axes).
pub(crate) fn bcast_strides(inp: &[usize], out: &[usize]) -> Vec<i64> {
    let st = strides(inp);
    let r = out.len();
    let mut s = vec![0i64; r];
    for i in 0..inp.len() {
        let o = r - inp.len() + i;
        s[o] = if inp[i] == 1 { 0 } else { st[i] };
    }
    s
}

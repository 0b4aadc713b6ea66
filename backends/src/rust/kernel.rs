//! One call into `kiln_runtime::kernels` per node, with its shapes as literals. The call
//! reads inputs `x0..` and writes outputs `y0..` (bound by the caller as element slices).
//! `lower` dispatches each op to its family (`elementwise`, `layout`, `nn`, `int`); this
//! file keeps what they share and the scratch sizes.

use super::{elementwise, int, layout, nn};
use crate::Refusal;
use crate::shapes::f32_half_weight;
use kiln_ir::op::{PoolKind, QLinear, Window};
use kiln_ir::{Graph, NodeId, Op, Scalar, ValueId};
use kiln_runtime::Requant;
use kiln_runtime::kernels::Plane;
use std::fmt::Write;

pub(super) fn shape(g: &Graph, v: ValueId) -> &[usize] {
    &g.value(v).ty.shape
}

pub(super) fn scalar(g: &Graph, v: ValueId) -> Scalar {
    g.value(v).ty.dtype.scalar
}

pub(super) fn list<T: std::fmt::Display>(v: &[T]) -> String {
    let s: Vec<String> = v.iter().map(|x| x.to_string()).collect();
    format!("[{}]", s.join(", "))
}

pub(super) fn spatial_2d(g: &Graph, v: ValueId) -> bool {
    matches!(shape(g, v).len(), 3 | 4)
}

pub(super) fn plane_lit(p: &Plane) -> String {
    format!(
        "k::Plane {{ h: {}, w: {}, oh: {}, ow: {}, kh: {}, kw: {}, sh: {}, sw: {}, dh: {}, dw: {}, ph: {}, pw: {} }}",
        p.h, p.w, p.oh, p.ow, p.kh, p.kw, p.sh, p.sw, p.dh, p.dw, p.ph, p.pw
    )
}

/// The plane of a global pool: every spatial position as one row.
pub(super) fn global_plane(x: &[usize]) -> Plane {
    let w: usize = x[2..].iter().product();
    Plane {
        h: 1,
        w,
        oh: 1,
        ow: 1,
        kh: 1,
        kw: w,
        sh: 1,
        sw: 1,
        dh: 1,
        dw: 1,
        ph: 0,
        pw: 0,
    }
}

pub(super) fn conv_shape(x: &[usize], y: &[usize], group: usize, w: &Window) -> String {
    format!(
        "&k::ConvShape {{ batch: {}, cin: {}, cout: {}, group: {group}, plane: {} }}",
        x[0],
        x[1],
        y[1],
        plane_lit(&w.plane(x, y).flattened())
    )
}

pub(super) fn requant_lit(r: Requant) -> String {
    format!(
        "kiln_runtime::Requant {{ multiplier: {}, shift: {} }}",
        r.multiplier, r.shift
    )
}

/// A module-level `const` of the output stage, named after node `k`.
pub(super) fn qlinear(items: &mut String, k: usize, q: &QLinear) -> String {
    let rq: Vec<String> = q
        .requant
        .iter()
        .map(|&r| format!("({}, {})", r.multiplier, r.shift))
        .collect();
    let _ = write!(
        items,
        "    const RQ{k}: [kiln_runtime::Requant; {}] = k::int::requants([",
        rq.len()
    );
    super::wrap(items, &rq, "        ");
    items.push_str("]);\n");
    let _ = writeln!(
        items,
        "    const Q{k}: k::int::QLinear = k::int::QLinear {{\n        input_zp: {},\n        output_zp: {},\n        requant: &RQ{k},\n        act_min: {},\n        act_max: {},\n        tflite: {},\n    }};",
        q.input_zp,
        q.output_zp,
        q.act_min,
        q.act_max,
        q.numerics == kiln_ir::op::Numerics::Tflite
    );
    format!("Q{k}")
}

/// The per-channel weight scales of hybrid node `k`, as a module `static`.
pub(super) fn scales_table(items: &mut String, k: usize, v: &[f32]) -> String {
    let vals: Vec<String> = v.iter().map(|&x| super::f32_lit(x)).collect();
    let _ = write!(items, "    static WS{k}: [f32; {}] = [", v.len());
    super::wrap(items, &vals, "        ");
    items.push_str("];\n");
    format!("WS{k}")
}

/// A module-level lookup table named after node `k`.
pub(super) fn table<T: std::fmt::Display>(items: &mut String, name: &str, ty: &str, v: &[T]) -> String {
    let vals: Vec<String> = v.iter().map(|x| x.to_string()).collect();
    let _ = write!(items, "    static {name}: [{ty}; {}] = [", v.len());
    super::wrap(items, &vals, "        ");
    items.push_str("];\n");
    name.to_string()
}

/// Bytes of one accumulator of an integer product reading `x`.
fn sum_bytes(g: &Graph, x: ValueId) -> usize {
    if scalar(g, x) == Scalar::I16 { 8 } else { 4 }
}

/// Scratch bytes that hold `n` unpacked weights (a multiple of 8, so the accumulators
/// before them keep their alignment).
pub(super) fn unpacked_bytes(n: usize) -> usize {
    n.div_ceil(8) * 8
}

/// Arena bytes a node's kernel needs: its accumulators (bound as `s`), then room to unpack
/// narrow weights. The Cortex-M kernels keep theirs on the stack.
pub(super) fn scratch_bytes(g: &Graph, n: NodeId, cortex_m: bool) -> usize {
    if cortex_m && mcu_kernel(g, n) {
        return 0;
    }
    let node = g.node(n);
    let packed: usize = (node.inputs.iter())
        .filter(|&&v| kiln_ir::analysis::packed_weight_bits(g, v).is_some())
        .map(|&v| unpacked_bytes(g.value(v).ty.numel()))
        .sum();
    packed + accumulator_bytes(g, n)
}

/// Whether node `n` runs one of `kiln_runtime::kernels::mcu`'s kernels on a Cortex-M part.
fn mcu_kernel(g: &Graph, n: NodeId) -> bool {
    match &g.node(n).op {
        Op::QConv { .. } => crate::pack::packed_patch(g, n) || crate::pack::plane_conv_fits(g, n),
        Op::QMatMul { .. } => crate::pack::packed_dense(g, n) && scalar(g, g.node(n).inputs[0]) == Scalar::I8,
        _ => false,
    }
}

fn accumulator_bytes(g: &Graph, n: NodeId) -> usize {
    let node = g.node(n);
    match &node.op {
        // i32 sums, or i64 for 16x8 products
        Op::QConv { .. } => {
            let o = shape(g, node.outputs[0]);
            sum_bytes(g, node.inputs[0]) * o[2..].iter().product::<usize>()
        }
        Op::QMatMul { .. } => sum_bytes(g, node.inputs[0]) * shape(g, node.inputs[1])[1],
        Op::QBlockMatMul { .. } => 4 * kiln_runtime::kernels::int::qblock_matmul_scratch(shape(g, node.inputs[1])[1]),
        Op::DynConv { .. } => {
            let o = shape(g, node.outputs[0]);
            let positions = o[2..].iter().product::<usize>();
            4 * kiln_runtime::kernels::int::dyn_conv_scratch(positions, g.value(node.inputs[0]).ty.numel())
        }
        Op::DynMatMul { .. } => {
            let w = shape(g, node.inputs[1]);
            4 * kiln_runtime::kernels::int::dyn_matmul_scratch(w[1], w[0])
        }
        Op::Rnn(r) => 4 * kiln_runtime::kernels::rnn::SCRATCH_PER_UNIT * r.hidden,
        _ => 0,
    }
}

/// What a lowering needs of its node: the graph, the node, its place `k` in the
/// schedule (which names its module-level items), the target, and its first shapes.
pub(super) struct At<'a> {
    pub g: &'a Graph,
    pub n: NodeId,
    pub k: usize,
    pub cortex_m: bool,
    pub ins: &'a [ValueId],
    pub x0s: Vec<usize>,
    pub o0: Vec<usize>,
}

/// The statement(s) a node runs, or why the Rust-source backend cannot lower it.
pub(super) type Lowered = Result<String, Refusal>;

/// Why node `n` cannot be lowered, if it cannot (`lower` into a scratch item buffer).
pub(super) fn refusal(g: &Graph, n: NodeId) -> Option<Refusal> {
    lower(g, n, 0, &mut String::new(), false).err()
}

/// The call for node `n` (the `k`-th of the schedule); module-level constants it needs are
/// appended to `items`.
pub(super) fn call(g: &Graph, n: NodeId, k: usize, items: &mut String, cortex_m: bool) -> String {
    lower(g, n, k, items, cortex_m).expect("emit checked every node")
}

/// Lowers node `n`. This match is the Rust-source backend's whole op contract: support is
/// the existence of a lowering, and a new `Op` variant does not compile without an arm.
fn lower(g: &Graph, n: NodeId, k: usize, items: &mut String, cortex_m: bool) -> Lowered {
    let node = g.node(n);
    let ins = &node.inputs;
    // binary16 activations are u16 bit patterns; binary16 constants are `F16` weights,
    // which only the float products read
    let half_const = ins
        .iter()
        .any(|&v| scalar(g, v) == Scalar::F16 && g.const_value(v).is_some());
    if half_const && !f32_half_weight(g, n) && !matches!(node.op, Op::Binary(_) | Op::MatMul) {
        return Err(Refusal("a binary16 constant outside a float product's weight"));
    }
    let at = At {
        g,
        n,
        k,
        cortex_m,
        ins,
        x0s: ins.first().map(|&v| shape(g, v).to_vec()).unwrap_or_default(),
        o0: shape(g, node.outputs[0]).to_vec(),
    };
    let at = &at;
    match &node.op {
        Op::Identity | Op::Reshape { .. } => layout::copy(),
        Op::Transpose { perm } => layout::transpose(at, perm),
        Op::Slice { axes } => layout::slice(at, axes),
        Op::Expand { .. } => layout::expand(at),
        Op::Tile { .. } => layout::tile(at),
        Op::Concat { axis } => layout::concat(at, *axis),
        Op::Split { axis, .. } => layout::split(at, *axis),
        Op::Gather { axis } => layout::gather(at, *axis),
        Op::GatherElements { axis } => layout::gather_elements(at, *axis),
        Op::GatherNd { batch_dims } => layout::gather_nd(at, *batch_dims),
        Op::ScatterElements { axis, reduction } => layout::scatter_elements(at, *axis, *reduction),
        Op::ScatterNd { reduction } => layout::scatter_nd(at, *reduction),
        Op::OneHot { axis, depth } => layout::one_hot(at, *axis, *depth),
        Op::Trilu { upper, k } => layout::trilu(at, *upper, *k),
        Op::Pad { mode, pads } => layout::pad(at, *mode, pads),
        Op::Unary(u) => elementwise::unary_node(at, *u),
        Op::Binary(b) => elementwise::binary_node(at, *b),
        Op::Where => elementwise::where_node(at),
        Op::Cast { to } => elementwise::cast_node(at, *to),
        Op::Conv(c) => nn::conv(at, c),
        Op::ConvTranspose(c) => nn::conv_transpose(at, c),
        Op::Gemm {
            alpha,
            beta,
            trans_a,
            trans_b,
            fused,
        } => nn::gemm(at, (*alpha, *beta), (*trans_a, *trans_b), *fused),
        Op::MatMul => nn::matmul(at),
        Op::Pool(p) => nn::pool_node(at, p),
        Op::GlobalPool(kind) => nn::global_pool(at, *kind),
        Op::Softmax { axis } => nn::softmax(at, *axis, "softmax"),
        Op::LogSoftmax { axis } => nn::softmax(at, *axis, "log_softmax"),
        Op::Hardmax { axis } => nn::softmax(at, *axis, "hardmax"),
        Op::Reduce { kind, axes, .. } => nn::reduce(at, *kind, axes),
        Op::ArgMax { axis, last, .. } => nn::arg(at, *axis, *last, true),
        Op::ArgMin { axis, last, .. } => nn::arg(at, *axis, *last, false),
        Op::CumSum {
            axis,
            exclusive,
            reverse,
        } => nn::cumsum(at, *axis, *exclusive, *reverse),
        Op::TopK { axis, k, largest, .. } => nn::top_k(at, *axis, *k, *largest),
        Op::BatchNorm { epsilon } => nn::batch_norm(at, *epsilon),
        Op::LayerNorm { axis, epsilon } => nn::layer_norm(at, *axis, *epsilon),
        Op::InstanceNorm { epsilon } => nn::instance_norm(at, *epsilon),
        Op::Lrn {
            size,
            alpha,
            beta,
            bias,
        } => nn::lrn(at, *size, *alpha, *beta, *bias),
        Op::Rnn(r) => nn::rnn(at, r),
        Op::Resize(rz) => nn::resize(at, rz, items),
        Op::Einsum { equation } => nn::einsum(at, equation),
        Op::Quantize { .. }
        | Op::Dequantize { .. }
        | Op::QConv { .. }
        | Op::QMatMul { .. }
        | Op::QBlockMatMul { .. }
        | Op::DynConv { .. }
        | Op::DynMatMul { .. } => int::products(at, items),
        Op::QAdd(_)
        | Op::QMul(_)
        | Op::QPRelu(_)
        | Op::QSoftmax { .. }
        | Op::QSoftmax16 { .. }
        | Op::Lut { .. }
        | Op::Requant { .. }
        | Op::Lut16 { .. } => int::pointwise(at, items),
        Op::DynamicQuantize | Op::IntConv { .. } | Op::IntMatMul => {
            Err(Refusal("ONNX dynamic quantization ops are folded before code is made"))
        }
    }
}

pub(super) fn split_axis(s: &[usize], axis: usize) -> (usize, usize, usize) {
    (s[..axis].iter().product(), s[axis], s[axis + 1..].iter().product())
}

/// Pooling over `nc` planes; `pads` are the spatial pads (begin..., end...).
pub(super) fn pool(
    kind: PoolKind,
    s: Scalar,
    nc: usize,
    plane: &str,
    pads: &[usize],
    numerics: kiln_ir::op::Numerics,
) -> Option<String> {
    Some(match (kind, s) {
        (PoolKind::Max, Scalar::F32) => format!("k::max_pool(x0, y0, {nc}, &{plane}, f32::NEG_INFINITY);"),
        (PoolKind::Max, Scalar::I8) => format!("k::max_pool(x0, y0, {nc}, &{plane}, i8::MIN);"),
        (PoolKind::Max, Scalar::I16) => format!("k::max_pool(x0, y0, {nc}, &{plane}, i16::MIN);"),
        (PoolKind::Max, Scalar::U8) => format!("k::max_pool(x0, y0, {nc}, &{plane}, 0);"),
        (PoolKind::Avg { count_include_pad }, Scalar::F32) => {
            let r = pads.len() / 2;
            let ends = match (count_include_pad, r) {
                (false, _) => "None".to_string(),
                (true, 1) => format!("Some((0, {}))", pads[1]),
                (true, _) => format!("Some(({}, {}))", pads[2], pads[3]),
            };
            format!("k::float::avg_pool(x0, y0, {nc}, &{plane}, {ends});")
        }
        (
            PoolKind::Avg {
                count_include_pad: false,
            },
            Scalar::I8 | Scalar::I16,
        ) => format!(
            "k::int::avg_pool(x0, y0, {nc}, &{plane}, {});",
            numerics == kiln_ir::op::Numerics::Tflite
        ),
        _ => return None,
    })
}

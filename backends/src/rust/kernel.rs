//! One call into `kiln_runtime::kernels` per node, with its shapes as literals. The call
//! reads inputs `x0..` and writes outputs `y0..` (bound by the caller as element slices).

use kiln_ir::op::{BinaryOp, PadMode, PoolKind, QLinear, UnaryOp, Window};
use kiln_ir::{Graph, NodeId, Op, Scalar, ValueId};
use kiln_runtime::Requant;
use kiln_runtime::kernels::Plane;

use super::f32_lit;
use crate::shapes::{bcast, f32_half_weight, pow_exponent, strides};
use std::fmt::Write;

fn shape(g: &Graph, v: ValueId) -> &[usize] {
    &g.value(v).ty.shape
}

fn scalar(g: &Graph, v: ValueId) -> Scalar {
    g.value(v).ty.dtype.scalar
}

fn list<T: std::fmt::Display>(v: &[T]) -> String {
    let s: Vec<String> = v.iter().map(|x| x.to_string()).collect();
    format!("[{}]", s.join(", "))
}

/// Element types a slice of the arena may be viewed as (bool as a 0/1 `u8`).
fn plain(s: Scalar) -> bool {
    s != Scalar::F16
}

fn spatial_2d(g: &Graph, v: ValueId) -> bool {
    matches!(shape(g, v).len(), 3 | 4)
}

/// A literal for use as an operand (negative values parenthesised).
fn lp(x: f32) -> String {
    let s = f32_lit(x);
    if s.starts_with('-') { format!("({s})") } else { s }
}

/// The closure body computing `u(v)` for a float `v`, if Kiln has one.
fn unary(u: UnaryOp) -> Option<String> {
    use UnaryOp::*;
    let softplus = "if v > 0.0 { v + k::libm::log1pf(k::math::exp(-v)) } else { k::libm::log1pf(k::math::exp(v)) }";
    let libm = |f: &str| Some(format!("k::libm::{f}(v)"));
    match u {
        Relu => Some("if v < 0.0 { 0.0 } else { v }".into()),
        LeakyRelu { alpha } => Some(format!("if v < 0.0 {{ {} * v }} else {{ v }}", lp(alpha))),
        Clip { min, max } => {
            let mut e = "v".to_string();
            if min > f32::NEG_INFINITY {
                e = format!("k::math::max({e}, {})", f32_lit(min));
            }
            if max < f32::INFINITY {
                e = format!("k::math::min({e}, {})", f32_lit(max));
            }
            Some(e)
        }
        HardSigmoid { alpha, beta } => Some(format!(
            "k::math::max(k::math::min({} * v + {}, 1.0), 0.0)",
            lp(alpha),
            lp(beta)
        )),
        HardSwish => Some("v * k::math::max(k::math::min(v / 6.0 + 0.5, 1.0), 0.0)".into()),
        Sigmoid => Some("k::math::sigmoid(v)".into()),
        Tanh => Some("k::math::tanh(v)".into()),
        Exp => Some("k::math::exp(v)".into()),
        Neg => Some("-v".into()),
        Abs => Some("v.abs()".into()),
        Reciprocal => Some("1.0 / v".into()),
        Elu { alpha } => Some(format!(
            "if v < 0.0 {{ {} * (k::math::exp(v) - 1.0) }} else {{ v }}",
            lp(alpha)
        )),
        Celu { alpha } => Some(format!(
            "k::math::max(v, 0.0) + k::math::min(0.0, {a} * (k::math::exp(v / {a}) - 1.0))",
            a = lp(alpha)
        )),
        Selu { alpha, gamma } => Some(format!(
            "{g} * (if v > 0.0 {{ v }} else {{ {a} * k::math::exp(v) - {a} }})",
            a = lp(alpha),
            g = lp(gamma)
        )),
        ThresholdedRelu { alpha } => Some(format!("if v > {} {{ v }} else {{ 0.0 }}", lp(alpha))),
        Softplus => Some(softplus.to_string()),
        Softsign => Some("v / (1.0 + v.abs())".into()),
        Mish => Some(format!("v * k::math::tanh({softplus})")),
        Gelu { tanh_approx: false } => Some("0.5 * v * (1.0 + k::libm::erff(v / 1.41421356))".into()),
        Gelu { tanh_approx: true } => {
            Some("0.5 * v * (1.0 + k::math::tanh(0.797884561 * (v + 0.044715 * v * v * v)))".into())
        }
        Sign => Some("if v > 0.0 { 1.0 } else if v < 0.0 { -1.0 } else { v }".into()),
        Sqrt => libm("sqrtf"),
        Log => libm("logf"),
        Floor => libm("floorf"),
        Ceil => libm("ceilf"),
        Round => libm("rintf"),
        Erf => libm("erff"),
        Sin => libm("sinf"),
        Cos => libm("cosf"),
        Tan => libm("tanf"),
        Asin => libm("asinf"),
        Acos => libm("acosf"),
        Atan => libm("atanf"),
        Sinh => libm("sinhf"),
        Cosh => libm("coshf"),
        Asinh => libm("asinhf"),
        Acosh => libm("acoshf"),
        Atanh => libm("atanhf"),
        Not | IsNaN | IsInf { .. } | BitwiseNot => None,
    }
}

fn act(fused: Option<UnaryOp>) -> Option<String> {
    match fused {
        None => Some("|v| v".into()),
        Some(u) => unary(u).map(|e| format!("|v| {e}")),
    }
}

/// The closure body of a binary op on `p` and `q` of element type `s`.
fn binary(b: BinaryOp, s: Scalar) -> Option<String> {
    use BinaryOp::*;
    let e = if s == Scalar::F32 {
        match b {
            Add => "p + q",
            Sub => "p - q",
            Mul => "p * q",
            Div => "p / q",
            Max => "k::math::max(p, q)",
            Min => "k::math::min(p, q)",
            Pow => "k::libm::powf(p, q)",
            PRelu => "if p < 0.0 { q * p } else { p }",
            _ => return None,
        }
    } else if s.is_int() && plain(s) {
        match b {
            Add => "p.wrapping_add(q)",
            Sub => "p.wrapping_sub(q)",
            Mul => "p.wrapping_mul(q)",
            Max => "p.max(q)",
            Min => "p.min(q)",
            _ => return None,
        }
    } else {
        return None;
    };
    Some(e.into())
}

fn plane_lit(p: &Plane) -> String {
    format!(
        "k::Plane {{ h: {}, w: {}, oh: {}, ow: {}, kh: {}, kw: {}, sh: {}, sw: {}, dh: {}, dw: {}, ph: {}, pw: {} }}",
        p.h, p.w, p.oh, p.ow, p.kh, p.kw, p.sh, p.sw, p.dh, p.dw, p.ph, p.pw
    )
}

/// The plane of a global pool: every spatial position as one row.
fn global_plane(x: &[usize]) -> Plane {
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

fn conv_shape(x: &[usize], y: &[usize], group: usize, w: &Window) -> String {
    format!(
        "&k::ConvShape {{ batch: {}, cin: {}, cout: {}, group: {group}, plane: {} }}",
        x[0],
        x[1],
        y[1],
        plane_lit(&w.plane(x, y).flattened())
    )
}

fn requant_lit(r: Requant) -> String {
    format!(
        "kiln_runtime::Requant {{ multiplier: {}, shift: {} }}",
        r.multiplier, r.shift
    )
}

/// A module-level `const` of the output stage, named after node `k`.
fn qlinear(items: &mut String, k: usize, q: &QLinear) -> String {
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
fn scales_table(items: &mut String, k: usize, v: &[f32]) -> String {
    let vals: Vec<String> = v.iter().map(|&x| super::f32_lit(x)).collect();
    let _ = write!(items, "    static WS{k}: [f32; {}] = [", v.len());
    super::wrap(items, &vals, "        ");
    items.push_str("];\n");
    format!("WS{k}")
}

/// A module-level lookup table named after node `k`.
fn table<T: std::fmt::Display>(items: &mut String, name: &str, ty: &str, v: &[T]) -> String {
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
        Op::Rnn(r) => 4 * 10 * r.hidden,
        _ => 0,
    }
}

pub(super) fn supported(g: &Graph, n: NodeId) -> bool {
    call_opt(g, n, 0, &mut String::new(), false).is_some()
}

/// The call for node `n` (the `k`-th of the schedule); module-level constants it needs are
/// appended to `items`.
pub(super) fn call(g: &Graph, n: NodeId, k: usize, items: &mut String, cortex_m: bool) -> String {
    call_opt(g, n, k, items, cortex_m).expect("checked by `supported`")
}

fn call_opt(g: &Graph, n: NodeId, kk: usize, items: &mut String, cortex_m: bool) -> Option<String> {
    let node = g.node(n);
    let ins = &node.inputs;
    if !ins.iter().chain(&node.outputs).all(|&v| plain(scalar(g, v))) && !f32_half_weight(g, n) {
        return None;
    }
    let o0 = shape(g, node.outputs[0]).to_vec();
    let x0s = ins.first().map(|&v| shape(g, v).to_vec()).unwrap_or_default();
    let s = match &node.op {
        Op::Identity | Op::Reshape { .. } => "y0.copy_from_slice(x0);".to_string(),
        Op::Unary(u) if f32_half_weight(g, n) => format!("k::map(x0, y0, |v| {});", unary(*u)?),
        Op::Binary(b) if b.yields_bool() => {
            let t = scalar(g, ins[0]);
            if scalar(g, ins[1]) != t
                || (matches!(b, BinaryOp::And | BinaryOp::Or | BinaryOp::Xor) != (t == Scalar::Bool))
            {
                return None;
            }
            let e = match b {
                BinaryOp::Equal => "(p == q) as u8",
                BinaryOp::Less => "(p < q) as u8",
                BinaryOp::LessOrEqual => "(p <= q) as u8",
                BinaryOp::Greater => "(p > q) as u8",
                BinaryOp::GreaterOrEqual => "(p >= q) as u8",
                BinaryOp::And => "p & q",
                BinaryOp::Or => "p | q",
                _ => "p ^ q",
            };
            format!(
                "k::zip_nd(x0, &{}, x1, &{}, &{}, y0, |p, q| {e});",
                list(&bcast(&x0s, &o0)),
                list(&bcast(shape(g, ins[1]), &o0)),
                list(&o0)
            )
        }
        Op::Unary(UnaryOp::Not) if scalar(g, ins[0]) == Scalar::Bool => "k::map(x0, y0, |v| (v == 0) as u8);".into(),
        Op::Where if scalar(g, ins[0]) == Scalar::Bool => format!(
            "k::zip3_nd((x0, &{}), (x1, &{}), (x2, &{}), &{}, y0, |c, p, q| if c != 0 {{ p }} else {{ q }});",
            list(&bcast(&x0s, &o0)),
            list(&bcast(shape(g, ins[1]), &o0)),
            list(&bcast(shape(g, ins[2]), &o0)),
            list(&o0)
        ),
        Op::Cast { to } => {
            let (from, to) = (scalar(g, ins[0]), *to);
            let t = super::header::rust_type(to);
            let e = if to == Scalar::Bool {
                if from.is_float() {
                    "(v != 0.0) as u8".to_string()
                } else {
                    "(v != 0) as u8".to_string()
                }
            } else if from.is_float() || to.is_float() {
                // through f64 as the evaluator converts; float to int saturates, NaN to 0
                format!("v as f64 as {t}")
            } else {
                format!("v as {t}")
            };
            format!("k::map(x0, y0, |v| {e});")
        }
        Op::Rnn(r) if f32_half_weight(g, n) && ins.len() == 6 => {
            use kiln_ir::op::{Activation, RnnDirection, RnnKind};
            let default = r
                .activations
                .chunks(3)
                .all(|c| c == [Activation::Sigmoid, Activation::Tanh, Activation::Tanh]);
            if !matches!(r.kind, RnnKind::Lstm { input_forget: false }) || !default {
                return None;
            }
            let (seq, batch, isz) = if r.batch_major {
                (x0s[1], x0s[0], x0s[2])
            } else {
                (x0s[0], x0s[1], x0s[2])
            };
            let out = |k: usize| {
                if node.outputs.len() > k {
                    format!("Some(y{k})")
                } else {
                    "None".into()
                }
            };
            let clip = match r.clip {
                Some(c) => format!("Some({})", f32_lit(c)),
                None => "None".into(),
            };
            format!(
                "k::rnn::lstm(&k::rnn::LstmInputs {{ x: x0, w: x1, r: x2, b: x3, h0: x4, c0: x5 }}, {}, {}, {}, s, &k::rnn::Lstm {{ seq: {seq}, batch: {batch}, input: {isz}, hidden: {}, dirs: {}, reverse: {}, batch_major: {}, clip: {clip} }});",
                out(0),
                out(1),
                out(2),
                r.hidden,
                r.direction.count(),
                r.direction == RnnDirection::Reverse,
                r.batch_major
            )
        }
        Op::Reduce { kind, axes, .. }
            if scalar(g, ins[0]) == Scalar::F32 && scalar(g, node.outputs[0]) == Scalar::F32 =>
        {
            use kiln_ir::op::ReduceKind as R;
            let all = axes.is_empty();
            let kept: Vec<usize> = x0s
                .iter()
                .enumerate()
                .map(|(i, &d)| if all || axes.contains(&i) { 1 } else { d })
                .collect();
            let reduced: Vec<usize> = x0s
                .iter()
                .enumerate()
                .map(|(i, &d)| if all || axes.contains(&i) { d } else { 1 })
                .collect();
            let k = match kind {
                R::Sum => "Sum",
                R::Mean => "Mean",
                R::Max => "Max",
                R::Min => "Min",
                R::Prod => "Prod",
                R::L1 => "L1",
                R::L2 => "L2",
                R::SumSquare => "SumSquare",
                R::LogSum => "LogSum",
                R::LogSumExp => "LogSumExp",
            };
            format!(
                "k::reduce::reduce(x0, &{}, &{}, &{}, y0, k::reduce::Reduce::{k});",
                list(&strides(&x0s)),
                list(&kept),
                list(&reduced)
            )
        }
        Op::ArgMax { axis, last, .. } | Op::ArgMin { axis, last, .. } if scalar(g, ins[0]) != Scalar::Bool => {
            let (outer, len, inner) = split_axis(&x0s, *axis);
            let max = matches!(node.op, Op::ArgMax { .. });
            format!("k::reduce::arg(x0, y0, {outer}, {len}, {inner}, {max}, {last});")
        }
        Op::Binary(BinaryOp::Pow) if f32_half_weight(g, n) && pow_exponent(g, n).is_some() => {
            // a constant exponent of 2, 0.5 or 1 needs no powf (slow on small cores)
            let e = match pow_exponent(g, n) {
                Some(2.0) => "p * p",
                Some(0.5) => "k::libm::sqrtf(p)",
                _ => "p",
            };
            format!(
                "k::zip_nd(x0, &{}, x1, &{}, &{}, y0, |p, _| {e});",
                list(&bcast(&x0s, &o0)),
                list(&bcast(shape(g, ins[1]), &o0)),
                list(&o0)
            )
        }
        Op::Binary(b) => {
            let t = scalar(g, node.outputs[0]);
            if ins.iter().any(|&v| scalar(g, v) != t) {
                return None;
            }
            format!(
                "k::zip_nd(x0, &{}, x1, &{}, &{}, y0, |p, q| {});",
                list(&bcast(&x0s, &o0)),
                list(&bcast(shape(g, ins[1]), &o0)),
                list(&o0),
                binary(*b, t)?
            )
        }
        Op::Conv(c) if f32_half_weight(g, n) && spatial_2d(g, ins[0]) => {
            let bias = if ins.len() > 2 { "Some(x2)" } else { "None" };
            format!(
                "k::float::conv(x0, x1, {bias}, y0, {}, {});",
                conv_shape(&x0s, &o0, c.group, &c.window),
                act(c.fused)?
            )
        }
        Op::Gemm {
            alpha,
            beta,
            trans_a,
            trans_b,
            fused,
        } if f32_half_weight(g, n) => {
            let (m, nn) = (o0[0], o0[1]);
            let k = if *trans_a { x0s[0] } else { x0s[1] };
            let c = if ins.len() > 2 {
                let st = bcast(shape(g, ins[2]), &o0);
                format!("Some((x2, [{}, {}]))", st[0], st[1])
            } else {
                "None".into()
            };
            format!(
                "k::float::gemm(x0, x1, {c}, y0, &k::float::GemmShape {{ m: {m}, n: {nn}, k: {k}, trans_a: {trans_a}, trans_b: {trans_b}, alpha: {}, beta: {} }}, {});",
                f32_lit(*alpha),
                f32_lit(*beta),
                act(*fused)?
            )
        }
        Op::MatMul if f32_half_weight(g, n) => matmul(&x0s, shape(g, ins[1]))?,
        Op::Pool(p) if spatial_2d(g, ins[0]) => {
            let plane = p.window.plane(&x0s, &o0);
            // count_include_pad needs the true geometry for its divisor
            let plane = plane_lit(&if matches!(
                p.kind,
                PoolKind::Avg {
                    count_include_pad: true
                }
            ) {
                plane
            } else {
                plane.flattened()
            });
            let nc = x0s[0] * x0s[1];
            pool(p.kind, scalar(g, ins[0]), nc, &plane, &p.window.pads, p.numerics)?
        }
        Op::GlobalPool(kind) => {
            let kind = match kind {
                PoolKind::Avg { .. } => PoolKind::Avg {
                    count_include_pad: false,
                },
                k => *k,
            };
            let plane = plane_lit(&global_plane(&x0s));
            pool(
                kind,
                scalar(g, ins[0]),
                x0s[0] * x0s[1],
                &plane,
                &[0, 0],
                Default::default(),
            )?
        }
        Op::Softmax { axis } | Op::LogSoftmax { axis } | Op::Hardmax { axis } if f32_half_weight(g, n) => {
            let (outer, len, inner) = split_axis(&x0s, *axis);
            let f = match node.op {
                Op::Softmax { .. } => "softmax",
                Op::LogSoftmax { .. } => "log_softmax",
                _ => "hardmax",
            };
            format!("k::float::{f}(x0, y0, {outer}, {len}, {inner});")
        }
        Op::BatchNorm { epsilon } if x0s.len() >= 2 && ins.iter().all(|&v| scalar(g, v) == Scalar::F32) => {
            let (c, inner) = (x0s[1], x0s[2..].iter().product::<usize>());
            format!(
                "k::float::batch_norm(x0, x1, x2, x3, x4, y0, {c}, {inner}, {});",
                f32_lit(*epsilon)
            )
        }
        Op::LayerNorm { axis, epsilon } if f32_half_weight(g, n) => {
            let inner: usize = x0s[*axis..].iter().product();
            if ins[1..].iter().any(|&v| g.value(v).ty.numel() != inner) {
                return None;
            }
            let bias = if ins.len() > 2 { "Some(x2)" } else { "None" };
            format!(
                "k::float::layer_norm(x0, x1, {bias}, y0, {inner}, {});",
                f32_lit(*epsilon)
            )
        }
        Op::Trilu { upper, k } if x0s.len() >= 2 => {
            let r = x0s.len();
            format!("k::trilu(x0, y0, {}, {}, {upper}, {k});", x0s[r - 2], x0s[r - 1])
        }
        Op::GatherElements { axis } if matches!(scalar(g, ins[1]), Scalar::I64 | Scalar::I32) => {
            let is = shape(g, ins[1]).to_vec();
            format!(
                "k::gather_elements(x0, &{}, x1, &{}, {axis}, {}, y0);",
                list(&strides(&x0s)),
                list(&is),
                x0s[*axis]
            )
        }
        Op::Transpose { perm } => {
            let ist = strides(&x0s);
            let st: Vec<i64> = perm.iter().map(|&p| ist[p]).collect();
            format!(
                "k::copy_nd(x0, 0, &{}, y0, 0, &{}, &{});",
                list(&st),
                list(&strides(&o0)),
                list(&o0)
            )
        }
        Op::Slice { axes } => {
            let ist = strides(&x0s);
            let st: Vec<i64> = axes.iter().zip(&ist).map(|(a, &s)| a.step * s).collect();
            let base: i64 = axes.iter().zip(&ist).map(|(a, &s)| a.start * s).sum();
            format!(
                "k::copy_nd(x0, {base}, &{}, y0, 0, &{}, &{});",
                list(&st),
                list(&strides(&o0)),
                list(&o0)
            )
        }
        Op::Expand { .. } => format!(
            "k::copy_nd(x0, 0, &{}, y0, 0, &{}, &{});",
            list(&bcast(&x0s, &o0)),
            list(&strides(&o0)),
            list(&o0)
        ),
        Op::Concat { axis } => {
            let ost = strides(&o0);
            let mut at = 0i64;
            let mut s = String::new();
            for (i, &v) in ins.iter().enumerate() {
                let xs = shape(g, v);
                s.push_str(&format!(
                    "k::copy_nd(x{i}, 0, &{}, y0, {}, &{}, &{});\n",
                    list(&strides(xs)),
                    at * ost[*axis],
                    list(&ost),
                    list(xs)
                ));
                at += xs[*axis] as i64;
            }
            s
        }
        Op::Split { axis, .. } => {
            let ist = strides(&x0s);
            let mut at = 0i64;
            let mut s = String::new();
            for (k, &v) in node.outputs.iter().enumerate() {
                let ys = shape(g, v);
                s.push_str(&format!(
                    "k::copy_nd(x0, {}, &{}, y{k}, 0, &{}, &{});\n",
                    at * ist[*axis],
                    list(&ist),
                    list(&strides(ys)),
                    list(ys)
                ));
                at += ys[*axis] as i64;
            }
            s
        }
        Op::Gather { axis } => {
            if !matches!(scalar(g, ins[1]), Scalar::I64 | Scalar::I32) {
                return None;
            }
            let (outer, len, inner) = split_axis(&x0s, *axis);
            format!("k::gather(x0, x1, {outer}, {len}, {inner}, y0);")
        }
        Op::Pad { mode, pads } => {
            let r = x0s.len();
            let fill = if ins.len() > 1 && g.value(ins[1]).ty.numel() > 0 {
                "x1[0]"
            } else if scalar(g, ins[0]) == Scalar::F32 {
                "0.0"
            } else {
                "0"
            };
            let mode = match mode {
                PadMode::Constant => "Constant",
                PadMode::Reflect => "Reflect",
                PadMode::Edge => "Edge",
                PadMode::Wrap => "Wrap",
            };
            format!(
                "k::pad(x0, &{}, y0, &{}, &{}, k::PadMode::{mode}, {fill});",
                list(&x0s),
                list(&o0),
                list(&pads[..r])
            )
        }
        Op::Quantize { to, scale, zero_point } if scalar(g, ins[0]) == Scalar::F32 => {
            let (lo, hi, t) = match to {
                Scalar::I8 => (-128, 127, "i8"),
                Scalar::U8 => (0, 255, "u8"),
                Scalar::I16 => (-32768, 32767, "i16"),
                _ => return None,
            };
            format!(
                "k::map(x0, y0, |v| kiln_runtime::quantize(v, {}, {zero_point}, {lo}, {hi}) as {t});",
                f32_lit(*scale)
            )
        }
        Op::Dequantize { scale, zero_point } if scalar(g, ins[0]).is_int() => format!(
            "k::map(x0, y0, |v| kiln_runtime::dequantize(v as i32, {}, {zero_point}));",
            f32_lit(*scale)
        ),
        Op::QConv { window, group, q } if cortex_m && crate::pack::packed_patch(g, n) => {
            let bias = if ins.len() > 2 { "Some(x2)" } else { "None" };
            let taps: usize = shape(g, ins[1])[1..].iter().product();
            // the window as `conv_shape` passes it (a degenerate height and width may swap)
            let flat = window.plane(&x0s, &o0).flattened();
            format!(
                "k::mcu::patch_conv::<{}, {}, {}>(x0, x1, {bias}, y0, {}, &{});",
                crate::pack::padded_taps(taps),
                flat.kh,
                flat.kw,
                conv_shape(&x0s, &o0, *group, window),
                qlinear(items, kk, q)
            )
        }
        Op::QConv { window, group, q } if cortex_m && crate::pack::plane_conv_fits(g, n) => {
            let bias = if ins.len() > 2 { "Some(x2)" } else { "None" };
            let (ph, pw) = crate::pack::plane_dims(&window.plane(&x0s, &o0));
            let flat = window.plane(&x0s, &o0).flattened();
            format!(
                "k::mcu::plane_conv::<{}, {}, {}>(x0, x1, {bias}, y0, {}, &{});",
                ph * pw,
                flat.kh,
                flat.kw,
                conv_shape(&x0s, &o0, *group, window),
                qlinear(items, kk, q)
            )
        }
        Op::QConv { window, group, q } if spatial_2d(g, ins[0]) && scalar(g, ins[0]) == Scalar::I8 => {
            let bias = if ins.len() > 2 { "Some(x2)" } else { "None" };
            format!(
                "k::int::qconv(x0, x1, {bias}, y0, s, {}, &{});",
                conv_shape(&x0s, &o0, *group, window),
                qlinear(items, kk, q)
            )
        }
        Op::QConv { window, group, q } if spatial_2d(g, ins[0]) && scalar(g, ins[0]) == Scalar::I16 => {
            let bias = if ins.len() > 2 { "Some(x2)" } else { "None" };
            format!(
                "k::int::qconv16(x0, x1, {bias}, y0, s, {}, &{});",
                conv_shape(&x0s, &o0, *group, window),
                qlinear(items, kk, q)
            )
        }
        Op::QMatMul { q } if scalar(g, ins[0]) == Scalar::I16 => {
            let w = shape(g, ins[1]);
            let bias = if ins.len() > 2 { "Some(x2)" } else { "None" };
            format!(
                "k::int::qmatmul16(x0, x1, {bias}, y0, s, {}, &{});",
                w[1],
                qlinear(items, kk, q)
            )
        }
        Op::QMatMul { q } if cortex_m && crate::pack::packed_dense(g, n) => {
            let bias = if ins.len() > 2 { "Some(x2)" } else { "None" };
            format!(
                "k::mcu::dense::<{}>(x0, x1, {bias}, y0, {}, {}, &{});",
                crate::pack::dense_cols(shape(g, ins[1])[1]),
                shape(g, ins[1])[1],
                crate::pack::dense_zero_point(g, n),
                qlinear(items, kk, q)
            )
        }
        Op::QMatMul { q } if scalar(g, ins[0]) == Scalar::I8 => {
            let w = shape(g, ins[1]);
            let bias = if ins.len() > 2 { "Some(x2)" } else { "None" };
            format!(
                "k::int::qmatmul(x0, x1, {bias}, y0, s, {}, &{});",
                w[1],
                qlinear(items, kk, q)
            )
        }
        Op::QBlockMatMul { q, block } => {
            let bias = if ins.len() > 2 { "Some(x2)" } else { "None" };
            format!(
                "k::int::qblock_matmul(x0, x1, {bias}, y0, s, ({}, {block}), &{});",
                shape(g, ins[1])[1],
                qlinear(items, kk, q)
            )
        }
        Op::DynConv {
            window,
            group,
            weight_scales,
        } if spatial_2d(g, ins[0]) => format!(
            "k::int::dyn_conv(x0, x1, y0, s, {}, &{});",
            conv_shape(&x0s, &o0, *group, window),
            scales_table(items, kk, weight_scales)
        ),
        Op::DynMatMul {
            weight_scales, block, ..
        } => format!(
            "k::int::dyn_matmul(x0, x1, y0, s, {}, &{}, {block});",
            shape(g, ins[1])[1],
            scales_table(items, kk, weight_scales)
        ),
        Op::ConvTranspose(c) if f32_half_weight(g, n) && spatial_2d(g, ins[0]) => {
            let bias = if ins.len() > 2 { "Some(x2)" } else { "None" };
            // input extents in h/w, output extents in oh/ow: the same geometry as a conv
            let plane = c.window.plane(&x0s, &o0);
            format!(
                "k::float::conv_transpose(x0, x1, {bias}, y0, &k::ConvShape {{ batch: {}, cin: {}, cout: {}, group: {}, plane: {} }});",
                x0s[0],
                x0s[1],
                o0[1],
                c.group,
                plane_lit(&plane)
            )
        }
        Op::Resize(rz) if f32_half_weight(g, n) && ins.len() == 1 => {
            // tap tables per axis from the evaluator's own rule, as module statics
            let mut axes = Vec::new();
            for (d, (&li, &lo)) in x0s.iter().zip(&o0).enumerate() {
                let taps = kiln_ir::eval::resize_taps(rz, d, li, lo);
                let count = taps.iter().flatten().map(|t| t.len()).max().unwrap_or(1);
                let (mut idx, mut wts) = (Vec::new(), Vec::new());
                for t in &taps {
                    for j in 0..count {
                        match t.as_ref().and_then(|t| t.get(j)) {
                            Some(&(i, w)) => {
                                idx.push(i.to_string());
                                wts.push(format!("{w:?}"));
                            }
                            None => {
                                idx.push(if t.is_some() { "0".into() } else { "u32::MAX".into() });
                                wts.push("0.0".into());
                            }
                        }
                    }
                }
                let (ni, nw) = (format!("RI{kk}_{d}"), format!("RW{kk}_{d}"));
                let _ = write!(items, "    static {ni}: [u32; {}] = [", idx.len());
                super::wrap(items, &idx, "        ");
                items.push_str("];\n");
                let _ = write!(items, "    static {nw}: [f64; {}] = [", wts.len());
                super::wrap(items, &wts, "        ");
                items.push_str("];\n");
                axes.push(format!(
                    "k::ResizeAxis {{ index: &{ni}, weight: &{nw}, count: {count} }}"
                ));
            }
            let st: Vec<usize> = strides(&x0s).into_iter().map(|v| v as usize).collect();
            format!(
                "k::resize(x0, &{}, &{}, &[{}], {}, y0);",
                list(&st),
                list(&o0),
                axes.join(", "),
                f32_lit(rz.extrapolation)
            )
        }
        Op::QAdd(p) => {
            let _ = writeln!(
                items,
                "    const Q{kk}: k::int::QAdd = k::int::QAdd {{\n        a_zp: {},\n        a: {},\n        b_zp: {},\n        b: {},\n        out: {},\n        output_zp: {},\n        act_min: {},\n        act_max: {},\n        tflite: {},\n    }};",
                p.a_zp,
                requant_lit(p.a),
                p.b_zp,
                requant_lit(p.b),
                requant_lit(p.out),
                p.output_zp,
                p.act_min,
                p.act_max,
                p.numerics == kiln_ir::op::Numerics::Tflite
            );
            format!(
                "k::zip_nd(x0, &{}, x1, &{}, &{}, y0, |p, q| Q{kk}.{}(p, q));",
                list(&bcast(&x0s, &o0)),
                list(&bcast(shape(g, ins[1]), &o0)),
                list(&o0),
                if scalar(g, ins[0]) == Scalar::I16 {
                    "apply16"
                } else {
                    "apply"
                }
            )
        }
        Op::QMul(p) => {
            let _ = writeln!(
                items,
                "    const Q{kk}: k::int::QMul = k::int::QMul {{\n        a_zp: {},\n        b_zp: {},\n        requant: {},\n        output_zp: {},\n        act_min: {},\n        act_max: {},\n        tflite: {},\n    }};",
                p.a_zp,
                p.b_zp,
                requant_lit(p.requant),
                p.output_zp,
                p.act_min,
                p.act_max,
                p.numerics == kiln_ir::op::Numerics::Tflite
            );
            format!(
                "k::zip_nd(x0, &{}, x1, &{}, &{}, y0, |p, q| Q{kk}.{}(p, q));",
                list(&bcast(&x0s, &o0)),
                list(&bcast(shape(g, ins[1]), &o0)),
                list(&o0),
                if scalar(g, ins[0]) == Scalar::I16 {
                    "apply16"
                } else {
                    "apply"
                }
            )
        }
        Op::QPRelu(p) => {
            let _ = writeln!(
                items,
                "    const Q{kk}: k::int::QPRelu = k::int::QPRelu {{\n        input_zp: {},\n        alpha_zp: {},\n        identity: {},\n        alpha: {},\n        output_zp: {},\n        tflite: {},\n    }};",
                p.input_zp,
                p.alpha_zp,
                requant_lit(p.identity),
                requant_lit(p.alpha),
                p.output_zp,
                p.numerics == kiln_ir::op::Numerics::Tflite
            );
            format!(
                "k::zip_nd(x0, &{}, x1, &{}, &{}, y0, |p, q| Q{kk}.apply(p, q));",
                list(&bcast(&x0s, &o0)),
                list(&bcast(shape(g, ins[1]), &o0)),
                list(&o0),
            )
        }
        Op::QSoftmax { axis, exp_table } => {
            let (_, len, inner) = split_axis(&x0s, *axis);
            if inner != 1 {
                return None;
            }
            let t = table(items, &format!("T{kk}"), "i32", exp_table);
            format!("k::int::qsoftmax(x0, y0, {len}, &{t});")
        }
        Op::QSoftmax16 { axis, exp_hi, exp_lo } => {
            let (_, len, inner) = split_axis(&x0s, *axis);
            if inner != 1 {
                return None;
            }
            let hi = table(items, &format!("H{kk}"), "i32", exp_hi);
            let lo = table(items, &format!("L{kk}"), "i32", exp_lo);
            format!("k::int::qsoftmax16(x0, y0, {len}, &{hi}, &{lo});")
        }
        Op::Lut { table: t, .. } if t.len() == 256 => {
            let t = table(items, &format!("T{kk}"), "i8", t);
            format!("k::int::lut(x0, y0, &{t});")
        }
        Op::Requant {
            input_zp,
            requant,
            zero_point,
            ..
        } => format!(
            "k::int::requant(x0, y0, {input_zp}, kiln_runtime::Requant {{ multiplier: {}, shift: {} }}, {zero_point});",
            requant.multiplier, requant.shift
        ),
        Op::Lut16 { table: t, .. } => {
            let t = table(items, &format!("T{kk}"), "i16", t);
            format!("k::int::lut16(x0, y0, &{t});")
        }
        _ => return None,
    };
    Some(s)
}

fn split_axis(s: &[usize], axis: usize) -> (usize, usize, usize) {
    (s[..axis].iter().product(), s[axis], s[axis + 1..].iter().product())
}

/// Pooling over `nc` planes; `pads` are the spatial pads (begin..., end...).
fn pool(
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

/// `MatMul` with NumPy broadcasting of the batch axes, as the evaluator does it.
fn matmul(a: &[usize], b: &[usize]) -> Option<String> {
    let a2 = if a.len() == 1 { vec![1, a[0]] } else { a.to_vec() };
    let b2 = if b.len() == 1 { vec![b[0], 1] } else { b.to_vec() };
    let (m, k) = (a2[a2.len() - 2], a2[a2.len() - 1]);
    let n = b2[b2.len() - 1];
    let (ab, bb) = (&a2[..a2.len() - 2], &b2[..b2.len() - 2]);
    let r = ab.len().max(bb.len());
    let pad = |s: &[usize]| {
        let mut v = vec![1usize; r - s.len()];
        v.extend_from_slice(s);
        v
    };
    let (ab, bb) = (pad(ab), pad(bb));
    let batch: Vec<usize> = ab.iter().zip(&bb).map(|(&x, &y)| x.max(y)).collect();
    let (sa, sb) = (bcast(&ab, &batch), bcast(&bb, &batch));
    let mut pairs = Vec::new();
    let total: usize = batch.iter().product();
    for i in 0..total {
        let (mut rem, mut ao, mut bo) = (i, 0i64, 0i64);
        for d in (0..r).rev() {
            let idx = (rem % batch[d]) as i64;
            rem /= batch[d];
            ao += idx * sa[d];
            bo += idx * sb[d];
        }
        pairs.push(format!("({}, {})", ao as usize * m * k, bo as usize * k * n));
    }
    Some(format!(
        "k::float::matmul(x0, x1, y0, {m}, {k}, {n}, &[{}]);",
        pairs.join(", ")
    ))
}

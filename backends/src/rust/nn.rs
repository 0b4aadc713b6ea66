//! Float network layers: convolutions, products, pooling, normalizations, reductions,
//! softmax, recurrent layers, Resize and Einsum, each one call into `k::float`, `k::reduce`,
//! `k::index` or `k::rnn` (Einsum as inline loops: its loop nest is the equation's).

use super::elementwise::act;
use super::f32_lit;
use super::kernel::{At, Lowered, conv_shape, global_plane, list, plane_lit, pool, scalar, split_axis};
use crate::Refusal;
use crate::shapes::{bcast, f32_half_weight, strides};
use kiln_ir::Scalar;
use kiln_ir::op::{Activation, Conv, Pool, PoolKind, ReduceKind, Resize, Rnn, RnnDirection, RnnKind};
use std::fmt::Write;

fn bias(at: &At) -> &'static str {
    if at.ins.len() > 2 { "Some(x2)" } else { "None" }
}

fn need(ok: bool, why: &'static str) -> Result<(), Refusal> {
    crate::need(ok, why)
}

fn float(at: &At) -> Result<(), Refusal> {
    need(f32_half_weight(at.g, at.n), "float32 (binary16 weights allowed) only")
}

/// Binary16 in and out (activations as bit patterns, constants as weights).
fn all_half(at: &At) -> bool {
    let node = at.g.node(at.n);
    node.inputs
        .iter()
        .chain(&node.outputs)
        .all(|&v| scalar(at.g, v) == Scalar::F16)
}

fn spatial_2d(at: &At) -> Result<(), Refusal> {
    need(
        matches!(at.x0s.len(), 3 | 4),
        "a window over other than one or two axes",
    )
}

pub(super) fn conv(at: &At, c: &Conv) -> Lowered {
    float(at)?;
    spatial_2d(at)?;
    Ok(format!(
        "k::float::conv(x0, x1, {}, y0, {}, {});",
        bias(at),
        conv_shape(&at.x0s, &at.o0, c.group, &c.window),
        act(c.fused)?
    ))
}

pub(super) fn conv_transpose(at: &At, c: &kiln_ir::op::ConvTranspose) -> Lowered {
    float(at)?;
    if !matches!(at.x0s.len(), 3 | 4) {
        return conv_transpose_nd(at, c);
    }
    // input extents in h/w, output extents in oh/ow: the same geometry as a conv
    let plane = c.window.plane(&at.x0s, &at.o0);
    Ok(format!(
        "k::float::conv_transpose(x0, x1, {}, y0, &k::ConvShape {{ batch: {}, cin: {}, cout: {}, group: {}, plane: {} }});",
        bias(at),
        at.x0s[0],
        at.x0s[1],
        at.o0[1],
        c.group,
        plane_lit(&plane)
    ))
}

/// ConvTranspose over three or more spatial axes as inline loops: the output set to the
/// bias, then each input element scattered through each tap in the evaluator's order
/// (input channel, tap, output channel, input position).
fn conv_transpose_nd(at: &At, c: &kiln_ir::op::ConvTranspose) -> Lowered {
    need(scalar(at.g, at.ins[1]) == Scalar::F32, "binary16 weights")?;
    let (xs, os) = (&at.x0s, &at.o0);
    let ws = &at.g.value(at.ins[1]).ty.shape;
    let r = xs.len() - 2;
    let (nb, ci, mg) = (xs[0], xs[1], ws[1]);
    let (cg, m) = (ci / c.group, mg * c.group);
    let (pin, pout, k): (usize, usize, usize) = (
        xs[2..].iter().product(),
        os[2..].iter().product(),
        c.window.kernel.iter().product(),
    );
    let (ist, ost, kst) = (strides(&xs[2..]), strides(&os[2..]), strides(&c.window.kernel));
    let sum = |v: &str, s: &[i64]| (0..r).map(|d| format!(" + {v}{d} * {}", s[d])).collect::<String>();
    let init = if at.ins.len() > 2 {
        format!("x2[(i / {pout}) % {m}]")
    } else {
        "0.0".into()
    };
    let mut s = format!("for i in 0..{}usize {{\n    y0[i] = {init};\n}}\n", nb * m * pout);
    let _ = writeln!(s, "for b in 0..{nb}usize {{\nfor ch in 0..{ci}usize {{");
    for (d, kd) in c.window.kernel.iter().enumerate() {
        let _ = writeln!(s, "for k{d} in 0..{kd}usize {{");
    }
    let _ = writeln!(
        s,
        "for mm in 0..{mg}usize {{\nlet wgt = x1[(ch * {mg} + mm) * {k}{}];\nlet yo = (b * {m} + (ch / {cg}) * {mg} + mm) * {pout};\nlet xo = (b * {ci} + ch) * {pin};",
        sum("k", &kst)
    );
    for (d, id) in xs[2..].iter().enumerate() {
        let _ = writeln!(s, "for i{d} in 0..{id}usize {{");
    }
    let w = &c.window;
    for d in 0..r {
        let _ = writeln!(
            s,
            "let p{d} = (i{d} * {} + k{d} * {}) as isize - {};",
            w.strides[d], w.dilations[d], w.pads[d]
        );
    }
    let outside: Vec<String> = (0..r).map(|d| format!("p{d} < 0 || p{d} >= {}", os[2 + d])).collect();
    let to: String = (0..r).map(|d| format!(" + p{d} as usize * {}", ost[d])).collect();
    let _ = writeln!(
        s,
        "if {} {{\n    continue;\n}}\ny0[yo{to}] += x0[xo{}] * wgt;",
        outside.join(" || "),
        sum("i", &ist)
    );
    s.push_str(&"}\n".repeat(2 * r + 3));
    Ok(s)
}

pub(super) fn gemm(
    at: &At,
    (alpha, beta): (f32, f32),
    (trans_a, trans_b): (bool, bool),
    fused: Option<kiln_ir::op::UnaryOp>,
) -> Lowered {
    float(at)?;
    let (m, nn) = (at.o0[0], at.o0[1]);
    let k = if trans_a { at.x0s[0] } else { at.x0s[1] };
    let c = if at.ins.len() > 2 {
        let st = bcast(&at.g.value(at.ins[2]).ty.shape, &at.o0);
        format!("Some((x2, [{}, {}]))", st[0], st[1])
    } else {
        "None".into()
    };
    Ok(format!(
        "k::float::gemm(x0, x1, {c}, y0, &k::float::GemmShape {{ m: {m}, n: {nn}, k: {k}, trans_a: {trans_a}, trans_b: {trans_b}, alpha: {}, beta: {} }}, {});",
        f32_lit(alpha),
        f32_lit(beta),
        act(fused)?
    ))
}

/// `MatMul` with NumPy broadcasting of the batch axes, as the evaluator does it.
pub(super) fn matmul(at: &At) -> Lowered {
    let half = all_half(at);
    need(
        f32_half_weight(at.g, at.n) || half,
        "float32 (binary16 weights allowed) or binary16 only",
    )?;
    let (a, b) = (&at.x0s, &at.g.value(at.ins[1]).ty.shape);
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
    Ok(if half {
        format!(
            "k::float::matmul_half(x0, x1, y0, ({m}, {k}, {n}), &[{}]);",
            pairs.join(", ")
        )
    } else {
        format!("k::float::matmul(x0, x1, y0, {m}, {k}, {n}, &[{}]);", pairs.join(", "))
    })
}

/// A pool over one or two axes on the plane kernels, else the n-d float kernel.
pub(super) fn pool_node(at: &At, p: &Pool) -> Lowered {
    let nc = at.x0s[0] * at.x0s[1];
    let plane_pool = matches!(at.x0s.len(), 3 | 4) && !matches!(p.kind, PoolKind::Lp { .. });
    if plane_pool && let Some(s) = plane_pool_call(at, p, nc) {
        return Ok(s);
    }
    need(
        scalar(at.g, at.ins[0]) == Scalar::F32,
        "an n-d or Lp pool on other than float32",
    )?;
    let r = at.x0s.len() - 2;
    let w = &p.window;
    let kind = match p.kind {
        PoolKind::Max => "Max".to_string(),
        PoolKind::Avg { count_include_pad } => format!("Avg({count_include_pad})"),
        PoolKind::Lp { p } => format!("Lp({p})"),
    };
    Ok(format!(
        "k::float::pool_nd(x0, y0, {nc}, &k::float::WindowNd {{ input: &{}, output: &{}, kernel: &{}, strides: &{}, dilations: &{}, pads: &{} }}, k::float::PoolNd::{kind});",
        list(&at.x0s[2..]),
        list(&at.o0[2..]),
        list(&w.kernel[..r]),
        list(&w.strides[..r]),
        list(&w.dilations[..r]),
        list(&w.pads[..2 * r])
    ))
}

fn plane_pool_call(at: &At, p: &Pool, nc: usize) -> Option<String> {
    let plane = p.window.plane(&at.x0s, &at.o0);
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
    pool(p.kind, scalar(at.g, at.ins[0]), nc, &plane, &p.window.pads, p.numerics)
}

pub(super) fn global_pool(at: &At, kind: PoolKind) -> Lowered {
    let kind = match kind {
        PoolKind::Avg { .. } => PoolKind::Avg {
            count_include_pad: false,
        },
        PoolKind::Lp { .. } => return Err(Refusal("a global Lp pool")),
        k => k,
    };
    let plane = plane_lit(&global_plane(&at.x0s));
    pool(
        kind,
        scalar(at.g, at.ins[0]),
        at.x0s[0] * at.x0s[1],
        &plane,
        &[0, 0],
        Default::default(),
    )
    .ok_or(Refusal("a global pool on this type"))
}

pub(super) fn softmax(at: &At, axis: usize, f: &str) -> Lowered {
    let (outer, len, inner) = split_axis(&at.x0s, axis);
    if f == "softmax" && all_half(at) {
        return Ok(format!("k::float::softmax_half(x0, y0, {outer}, {len}, {inner});"));
    }
    float(at)?;
    Ok(format!("k::float::{f}(x0, y0, {outer}, {len}, {inner});"))
}

pub(super) fn reduce(at: &At, kind: ReduceKind, axes: &[usize]) -> Lowered {
    let (si, so) = (scalar(at.g, at.ins[0]), scalar(at.g, at.g.node(at.n).outputs[0]));
    let order_only = matches!(kind, ReduceKind::Max | ReduceKind::Min);
    // f64 sums are exact for the evaluator's types; integers only where no rounding enters
    let small_int = matches!(
        si,
        Scalar::Bool | Scalar::I8 | Scalar::U8 | Scalar::I16 | Scalar::U16 | Scalar::I32 | Scalar::U32
    );
    need(
        si == so && (matches!(si, Scalar::F32 | Scalar::F64) || (order_only && small_int)),
        "a reduction on this type",
    )?;
    let all = axes.is_empty();
    let kept: Vec<usize> = (at.x0s.iter().enumerate())
        .map(|(i, &d)| if all || axes.contains(&i) { 1 } else { d })
        .collect();
    let reduced: Vec<usize> = (at.x0s.iter().enumerate())
        .map(|(i, &d)| if all || axes.contains(&i) { d } else { 1 })
        .collect();
    let k = match kind {
        ReduceKind::Sum => "Sum",
        ReduceKind::Mean => "Mean",
        ReduceKind::Max => "Max",
        ReduceKind::Min => "Min",
        ReduceKind::Prod => "Prod",
        ReduceKind::L1 => "L1",
        ReduceKind::L2 => "L2",
        ReduceKind::SumSquare => "SumSquare",
        ReduceKind::LogSum => "LogSum",
        ReduceKind::LogSumExp => "LogSumExp",
    };
    Ok(format!(
        "k::reduce::reduce(x0, &{}, &{}, &{}, y0, k::reduce::Reduce::{k});",
        list(&strides(&at.x0s)),
        list(&kept),
        list(&reduced)
    ))
}

pub(super) fn arg(at: &At, axis: usize, last: bool, max: bool) -> Lowered {
    need(
        !matches!(scalar(at.g, at.ins[0]), Scalar::Bool | Scalar::F16),
        "arg-max/min on bool or binary16",
    )?;
    let (outer, len, inner) = split_axis(&at.x0s, axis);
    Ok(format!(
        "k::reduce::arg(x0, y0, {outer}, {len}, {inner}, {max}, {last});"
    ))
}

pub(super) fn cumsum(at: &At, axis: usize, exclusive: bool, reverse: bool) -> Lowered {
    need(
        !matches!(scalar(at.g, at.ins[0]), Scalar::Bool | Scalar::F16),
        "a cumulative sum of bool or binary16",
    )?;
    let (outer, len, inner) = split_axis(&at.x0s, axis);
    Ok(format!(
        "k::index::cumsum(x0, y0, ({outer}, {len}, {inner}), {exclusive}, {reverse});"
    ))
}

pub(super) fn top_k(at: &At, axis: usize, k: usize, largest: bool) -> Lowered {
    need(
        !matches!(scalar(at.g, at.ins[0]), Scalar::Bool | Scalar::F16),
        "top-k of bool or binary16",
    )?;
    let (outer, len, inner) = split_axis(&at.x0s, axis);
    Ok(format!(
        "k::index::top_k(x0, y0, y1, ({outer}, {len}, {inner}), {k}, {largest});"
    ))
}

fn f32_all(at: &At) -> Result<(), Refusal> {
    let node = at.g.node(at.n);
    need(
        node.inputs
            .iter()
            .chain(&node.outputs)
            .all(|&v| scalar(at.g, v) == Scalar::F32),
        "float32 only",
    )
}

pub(super) fn batch_norm(at: &At, epsilon: f32) -> Lowered {
    f32_all(at)?;
    need(at.x0s.len() >= 2, "a batch norm without channels")?;
    let (c, inner) = (at.x0s[1], at.x0s[2..].iter().product::<usize>());
    Ok(format!(
        "k::float::batch_norm(x0, x1, x2, x3, x4, y0, {c}, {inner}, {});",
        f32_lit(epsilon)
    ))
}

pub(super) fn layer_norm(at: &At, axis: usize, epsilon: f32) -> Lowered {
    float(at)?;
    let inner: usize = at.x0s[axis..].iter().product();
    need(
        at.ins[1..].iter().all(|&v| at.g.value(v).ty.numel() == inner),
        "a scale or bias broadcast over more than the normalized axes",
    )?;
    Ok(format!(
        "k::float::layer_norm(x0, x1, {}, y0, {inner}, {});",
        if at.ins.len() > 2 { "Some(x2)" } else { "None" },
        f32_lit(epsilon)
    ))
}

pub(super) fn instance_norm(at: &At, epsilon: f32) -> Lowered {
    f32_all(at)?;
    let (c, inner) = (at.x0s[1], at.x0s[2..].iter().product::<usize>());
    Ok(format!(
        "k::float::instance_norm(x0, x1, x2, y0, {c}, {inner}, {});",
        f32_lit(epsilon)
    ))
}

pub(super) fn lrn(at: &At, size: usize, alpha: f32, beta: f32, bias: f32) -> Lowered {
    f32_all(at)?;
    need(size > 0, "an empty LRN window")?;
    let inner: usize = at.x0s[2..].iter().product();
    Ok(format!(
        "k::float::lrn(x0, y0, ({}, {}, {inner}), {size}, {}, {}, {});",
        at.x0s[0],
        at.x0s[1],
        f32_lit(alpha),
        f32_lit(beta),
        f32_lit(bias)
    ))
}

/// An activation as a non-capturing closure (`k::rnn::Act`).
fn activation(a: Activation) -> Result<String, Refusal> {
    let body = match a {
        Activation::Affine(al, be) => format!("{} * v + {}", f32_lit(al), f32_lit(be)),
        Activation::ScaledTanh(al, be) => format!("{} * k::math::tanh({} * v)", f32_lit(al), f32_lit(be)),
        a => a
            .unary()
            .and_then(super::elementwise::unary)
            .ok_or(Refusal("an activation without a Rust form"))?,
    };
    Ok(format!("|v: f32| {body}"))
}

pub(super) fn rnn(at: &At, r: &Rnn) -> Lowered {
    float(at)?;
    let xs = &at.x0s;
    let (seq, batch, isz) = if r.batch_major {
        (xs[1], xs[0], xs[2])
    } else {
        (xs[0], xs[1], xs[2])
    };
    let outs = at.g.node(at.n).outputs.len();
    let out = |k: usize| if outs > k { format!("Some(y{k})") } else { "None".into() };
    let clip = match r.clip {
        Some(c) => format!("Some({})", f32_lit(c)),
        None => "None".into(),
    };
    let kind = match r.kind {
        RnnKind::Rnn => "Rnn".to_string(),
        RnnKind::Gru { linear_before_reset } => format!("Gru {{ linear_before_reset: {linear_before_reset} }}"),
        RnnKind::Lstm { input_forget } => format!("Lstm {{ input_forget: {input_forget} }}"),
    };
    let lstm = matches!(r.kind, RnnKind::Lstm { .. });
    let c0 = if lstm { "x5" } else { "&[]" };
    let peep = if lstm && at.ins.len() > 6 { "Some(x6)" } else { "None" };
    let acts: Vec<String> = r.activations.iter().map(|&a| activation(a)).collect::<Result<_, _>>()?;
    Ok(format!(
        "k::rnn::run(&k::rnn::Inputs {{ x: x0, w: x1, r: x2, b: x3, h0: x4, c0: {c0}, peepholes: {peep} }}, k::rnn::Outputs {{ y: {}, yh: {}, yc: {} }}, &[{}], s, &k::rnn::Rnn {{ kind: k::rnn::Kind::{kind}, seq: {seq}, batch: {batch}, input: {isz}, hidden: {}, dirs: {}, reverse: {}, batch_major: {}, clip: {clip} }});",
        out(0),
        out(1),
        out(2),
        acts.join(", "),
        r.hidden,
        r.direction.count(),
        r.direction == RnnDirection::Reverse,
        r.batch_major
    ))
}

/// Resize through tap tables per axis from the evaluator's own rule, as module statics.
pub(super) fn resize(at: &At, rz: &Resize, items: &mut String) -> Lowered {
    float(at)?;
    need(at.ins.len() == 1, "run-time scales or sizes")?;
    let kk = at.k;
    let mut axes = Vec::new();
    for (d, (&li, &lo)) in at.x0s.iter().zip(&at.o0).enumerate() {
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
    let st: Vec<usize> = strides(&at.x0s).into_iter().map(|v| v as usize).collect();
    Ok(format!(
        "k::resize(x0, &{}, &{}, &[{}], {}, y0);",
        list(&st),
        list(&at.o0),
        axes.join(", "),
        f32_lit(rz.extrapolation)
    ))
}

/// Einsum as the evaluator computes it, in inline loops: per output element the sum in
/// f64, over the contracted labels, of the product of one element per input.
pub(super) fn einsum(at: &At, equation: &str) -> Lowered {
    let g = at.g;
    let node = g.node(at.n);
    let spec = kiln_ir::shape::parse_einsum(equation, node.inputs.len())
        .map_err(|_| Refusal("an Einsum equation shape inference did not check"))?;
    let mut labels: Vec<char> = spec.output.clone();
    let mut size = std::collections::HashMap::new();
    for (l, &v) in spec.inputs.iter().zip(&node.inputs) {
        for (c, &d) in l.iter().zip(&g.value(v).ty.shape) {
            size.insert(*c, d);
            if !labels.contains(c) {
                labels.push(*c);
            }
        }
    }
    let pos = |c: &char| labels.iter().position(|x| x == c).expect("a label of the equation");
    let offset = |terms: Vec<String>| {
        if terms.is_empty() {
            "0".to_string()
        } else {
            terms.join(" + ")
        }
    };
    let outs = spec.output.len();
    let mut s = String::new();
    for (d, c) in labels.iter().enumerate().take(outs) {
        let _ = writeln!(s, "for i{d} in 0..{}usize {{", size[c]);
    }
    s.push_str("let mut acc = 0.0f64;\n");
    for (d, c) in labels.iter().enumerate().skip(outs) {
        let _ = writeln!(s, "for i{d} in 0..{}usize {{", size[c]);
    }
    let mut p = String::from("1.0f64");
    for (i, (l, &v)) in spec.inputs.iter().zip(&node.inputs).enumerate() {
        let st = strides(&g.value(v).ty.shape);
        let terms: Vec<String> = l.iter().zip(&st).map(|(c, s)| format!("i{} * {s}", pos(c))).collect();
        let _ = write!(p, " * (x{i}[{}] as f64)", offset(terms));
    }
    let _ = writeln!(s, "acc += {p};");
    s.push_str(&"}\n".repeat(labels.len() - outs));
    let ost = strides(&at.o0);
    let terms: Vec<String> = (0..outs).map(|d| format!("i{d} * {}", ost[d])).collect();
    let t = crate::header::rust_type(scalar(g, node.outputs[0]));
    let _ = writeln!(s, "y0[{}] = acc as {t};", offset(terms));
    s.push_str(&"}\n".repeat(outs));
    need(
        node.inputs
            .iter()
            .chain(&node.outputs)
            .all(|&v| !matches!(scalar(g, v), Scalar::Bool | Scalar::F16)),
        "Einsum on bool or binary16",
    )?;
    Ok(s)
}

//! A stable, line-oriented text form of a graph for dumps (`--print-after`), reviews and
//! pass tests. Nodes print in schedule order as `%out: type = Op(%in, ...) {attrs}  # name`.

use crate::graph::{Graph, ValueDef, ValueId};
use crate::op::*;
use crate::tensor::Tensor;
use std::fmt::Write;

fn small(t: &Tensor) -> String {
    if t.numel() > 8 {
        return String::new();
    }
    let items: Vec<String> = t.to_f64_vec().iter().map(|x| format!("{x}")).collect();
    format!(" = [{}]", items.join(", "))
}

fn list<T: std::fmt::Display>(v: &[T]) -> String {
    let items: Vec<String> = v.iter().map(|x| x.to_string()).collect();
    format!("[{}]", items.join(","))
}

fn window(w: &Window) -> String {
    format!(
        "kernel={} strides={} dilations={} pads={}",
        list(&w.kernel),
        list(&w.strides),
        list(&w.dilations),
        list(&w.pads)
    )
}

fn fused_attr(f: &Option<UnaryOp>) -> String {
    match f {
        Some(u) => format!(" fused={u:?}"),
        None => String::new(),
    }
}

/// The attributes of `op` as `key=value` pairs (empty for attribute-free ops).
pub fn attrs(op: &Op) -> String {
    match op {
        Op::Identity | Op::Where | Op::MatMul | Op::DynamicQuantize | Op::IntMatMul => String::new(),
        Op::Unary(u) => {
            let d = format!("{u:?}");
            d.find('{')
                .map(|i| d[i + 1..d.len() - 1].trim().replace(": ", "=").replace(',', ""))
                .unwrap_or_default()
        }
        Op::Binary(b) => match b {
            BinaryOp::Mod { fmod } => format!("fmod={fmod}"),
            _ => String::new(),
        },
        Op::Cast { to } => format!("to={to}"),
        Op::Conv(c) => format!("{} group={}{}", window(&c.window), c.group, fused_attr(&c.fused)),
        Op::ConvTranspose(c) => {
            format!(
                "{} group={} output_padding={}",
                window(&c.window),
                c.group,
                list(&c.output_padding)
            )
        }
        Op::Gemm {
            alpha,
            beta,
            trans_a,
            trans_b,
            fused,
        } => {
            format!(
                "alpha={alpha} beta={beta} trans_a={trans_a} trans_b={trans_b}{}",
                fused_attr(fused)
            )
        }
        Op::Pool(p) => format!(
            "{} ceil_mode={} kind={:?}{}",
            window(&p.window),
            p.ceil_mode,
            p.kind,
            numerics(p.numerics)
        ),
        Op::GlobalPool(k) => format!("kind={k:?}"),
        Op::BatchNorm { epsilon } | Op::InstanceNorm { epsilon } => format!("epsilon={epsilon}"),
        Op::LayerNorm { axis, epsilon } => format!("axis={axis} epsilon={epsilon}"),
        Op::Lrn {
            size,
            alpha,
            beta,
            bias,
        } => format!("size={size} alpha={alpha} beta={beta} bias={bias}"),
        Op::Softmax { axis } | Op::LogSoftmax { axis } | Op::Hardmax { axis } => format!("axis={axis}"),
        Op::Reshape { shape } => format!("shape={}", list(shape)),
        Op::Transpose { perm } => format!("perm={}", list(perm)),
        Op::Concat { axis } => format!("axis={axis}"),
        Op::Split { axis, sizes } => format!("axis={axis} sizes={}", list(sizes)),
        Op::Slice { axes } => {
            let a: Vec<String> = axes
                .iter()
                .map(|s| format!("{}:{}:{}", s.start, s.step, s.len))
                .collect();
            format!("start:step:len=[{}]", a.join(","))
        }
        Op::Pad { mode, pads } => format!("mode={mode:?} pads={}", list(pads)),
        Op::Gather { axis } | Op::GatherElements { axis } => format!("axis={axis}"),
        Op::GatherNd { batch_dims } => format!("batch_dims={batch_dims}"),
        Op::ScatterElements { axis, reduction } => format!("axis={axis} reduction={reduction:?}"),
        Op::ScatterNd { reduction } => format!("reduction={reduction:?}"),
        Op::Expand { shape } => format!("shape={}", list(shape)),
        Op::Tile { repeats } => format!("repeats={}", list(repeats)),
        Op::Reduce { axes, keep_dims, .. } => format!("axes={} keep_dims={keep_dims}", list(axes)),
        Op::ArgMax { axis, keep_dims, last } | Op::ArgMin { axis, keep_dims, last } => {
            format!("axis={axis} keep_dims={keep_dims} last={last}")
        }
        Op::CumSum {
            axis,
            exclusive,
            reverse,
        } => format!("axis={axis} exclusive={exclusive} reverse={reverse}"),
        Op::OneHot { axis, depth } => format!("axis={axis} depth={depth}"),
        Op::Trilu { upper, k } => format!("upper={upper} k={k}"),
        Op::Einsum { equation } => format!("equation=\"{equation}\""),
        Op::Rnn(r) => format!(
            "hidden={} direction={:?} kind={:?} activations={:?} clip={:?} batch_major={}",
            r.hidden, r.direction, r.kind, r.activations, r.clip, r.batch_major
        ),
        Op::Resize(r) => format!(
            "sizes={} scales={} mode={:?} coord={:?} cubic_a={} exclude_outside={} extrapolation={}",
            list(&r.sizes),
            list(&r.scales),
            r.mode,
            r.coord,
            r.cubic_a,
            r.exclude_outside,
            r.extrapolation
        ),
        Op::TopK {
            axis,
            k,
            largest,
            sorted,
        } => format!("axis={axis} k={k} largest={largest} sorted={sorted}"),
        Op::Quantize { to, scale, zero_point } => format!("to={to} scale={scale:e} zp={zero_point}"),
        Op::Dequantize { scale, zero_point } => format!("scale={scale:e} zp={zero_point}"),
        Op::QConv { window: w, group, q } => format!("{} group={group} {}", window(w), qlinear(q)),
        Op::QMatMul { q } => qlinear(q),
        Op::QBlockMatMul { q, block } => format!("block={block} {}", qlinear(q)),
        Op::DynConv {
            window: w,
            group,
            weight_scales,
        } => format!("{} group={group} weight_scales={}", window(w), scales(weight_scales)),
        Op::DynMatMul {
            weight_scales,
            block: 0,
            weight_bits: 8,
        } => format!("weight_scales={}", scales(weight_scales)),
        Op::DynMatMul {
            weight_scales,
            block,
            weight_bits,
        } => {
            let bits = if *weight_bits == 8 {
                String::new()
            } else {
                format!(" bits={weight_bits}")
            };
            format!("block={block}{bits} weight_scales={}", scales(weight_scales))
        }
        Op::IntConv { window: w, group } => format!("{} group={group}", window(w)),
        Op::QAdd(a) => format!(
            "a_zp={} a={} b_zp={} b={} out={} zp={} act=[{},{}]{}",
            a.a_zp,
            rq(&a.a),
            a.b_zp,
            rq(&a.b),
            rq(&a.out),
            a.output_zp,
            a.act_min,
            a.act_max,
            numerics(a.numerics)
        ),
        Op::QMul(m) => format!(
            "a_zp={} b_zp={} requant={} zp={} act=[{},{}]{}",
            m.a_zp,
            m.b_zp,
            rq(&m.requant),
            m.output_zp,
            m.act_min,
            m.act_max,
            numerics(m.numerics)
        ),
        Op::QPRelu(p) => format!(
            "x_zp={} alpha_zp={} identity={} alpha={} zp={}{}",
            p.input_zp,
            p.alpha_zp,
            rq(&p.identity),
            rq(&p.alpha),
            p.output_zp,
            numerics(p.numerics)
        ),
        Op::QSoftmax { axis, exp_table } => format!("axis={axis} exp[1]={}", exp_table[1]),
        Op::QSoftmax16 { axis, exp_lo, .. } => format!("axis={axis} exp_lo[1]={}", exp_lo[1]),
        Op::Lut { table, zero_point, .. } => {
            // A short fingerprint: the table is data, but a changed table must show in a diff.
            let h = table.iter().fold(0xcbf29ce484222325u64, |h, &b| {
                (h ^ b as u8 as u64).wrapping_mul(0x100000001b3)
            });
            format!("table={h:016x} zp={zero_point}")
        }
        Op::Requant {
            to,
            input_zp,
            requant,
            scale,
            zero_point,
        } => format!(
            "to={to} in_zp={input_zp} requant={} scale={scale:e} zp={zero_point}",
            rq(requant)
        ),
        Op::Lut16 { table, .. } => {
            let h = table.iter().fold(0xcbf29ce484222325u64, |h, &b| {
                (h ^ b as u16 as u64).wrapping_mul(0x100000001b3)
            });
            format!("table16={h:016x}")
        }
    }
}

fn rq(r: &Requant) -> String {
    format!("{}>>{}", r.multiplier, -r.shift + 31)
}

/// The first few of a per-channel scale list (the whole list is in the op).
fn scales(v: &[f32]) -> String {
    let r: Vec<String> = v.iter().take(4).map(|s| format!("{s:e}")).collect();
    let more = if v.len() > 4 { ",..." } else { "" };
    format!("[{}{more}]", r.join(","))
}

fn qlinear(q: &QLinear) -> String {
    let r: Vec<String> = q.requant.iter().take(4).map(rq).collect();
    let more = if q.requant.len() > 4 { ",..." } else { "" };
    let bits = if q.weight_bits == 8 {
        String::new()
    } else {
        format!(" weight_bits={}", q.weight_bits)
    };
    format!(
        "in_zp={} out_zp={} requant=[{}{more}] act=[{},{}]{bits}{}",
        q.input_zp,
        q.output_zp,
        r.join(","),
        q.act_min,
        q.act_max,
        numerics(q.numerics)
    )
}

/// ` numerics=tflite` where an op does not round as ONNX Runtime (the default, unprinted).
fn numerics(n: crate::op::Numerics) -> String {
    if n == crate::op::Numerics::Onnx {
        String::new()
    } else {
        format!(" numerics={}", n.name())
    }
}

/// Renders `g`; errors only on a cyclic graph.
pub fn dump(g: &Graph) -> crate::Result<String> {
    let mut s = String::new();
    let name = |v: ValueId| format!("%{}", g.value(v).name);
    let _ = writeln!(s, "graph {} {{", g.name);
    for &v in g.inputs() {
        let _ = writeln!(s, "  in {}: {}", name(v), g.value(v).ty);
    }
    let order = g.topo_order()?;
    let mut consts: Vec<ValueId> = Vec::new();
    let reads = order
        .iter()
        .flat_map(|&n| g.node(n).inputs.iter().copied())
        .chain(g.outputs().iter().copied());
    for v in reads {
        if matches!(g.value(v).def, ValueDef::Const(_)) && !consts.contains(&v) {
            consts.push(v);
        }
    }
    for v in consts {
        let t = g.const_value(v).expect("const");
        let _ = writeln!(s, "  const {}: {}{}", name(v), g.value(v).ty, small(t));
    }
    for n in order {
        let node = g.node(n);
        let outs: Vec<String> = node
            .outputs
            .iter()
            .map(|&o| format!("{}: {}", name(o), g.value(o).ty))
            .collect();
        let ins: Vec<String> = node.inputs.iter().map(|&i| name(i)).collect();
        let a = attrs(&node.op);
        let a = if a.is_empty() { a } else { format!(" {{{a}}}") };
        let _ = writeln!(
            s,
            "  {} = {}({}){a}  # {}",
            outs.join(", "),
            node.op.name(),
            ins.join(", "),
            node.name
        );
    }
    let outs: Vec<String> = g.outputs().iter().map(|&v| name(v)).collect();
    let _ = writeln!(s, "  out {}", outs.join(", "));
    s.push_str("}\n");
    Ok(s)
}

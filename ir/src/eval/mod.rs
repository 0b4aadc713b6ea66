//! The reference evaluator: the numeric oracle for every backend and for calibration.
//! Kernels are written for clarity first and reasonable speed second (im2col + a cache-
//! friendly GEMM for convolutions); float16 ops compute in float32 and round once per op.

mod elementwise;
mod layout;
mod linalg;
mod norm;
mod quant;
mod reduce;
mod resize;

pub use resize::taps as resize_taps;
mod rnn;
mod window;

use crate::dtype::{Scalar, TensorType};
use crate::error::{IrError, Result};
use crate::graph::{Graph, ValueDef, ValueId};
use crate::op::Op;
use crate::tensor::{Data, Elem, Tensor};

/// Float element types the float kernels are generic over.
pub(crate) trait Flt:
    num_traits::Float + num_traits::FromPrimitive + Elem + std::iter::Sum + std::fmt::Debug
{
}
impl Flt for f32 {}
impl Flt for f64 {}

pub(crate) fn lit<T: Flt>(v: f64) -> T {
    <T as num_traits::FromPrimitive>::from_f64(v).expect("representable")
}

/// Runs the whole graph. `inputs` follow the graph's input order and must match their types.
pub fn run(g: &Graph, inputs: &[Tensor]) -> Result<Vec<Tensor>> {
    run_observed(g, inputs, |_, _| {})
}

/// Like [`run`], calling `observe` with every value a node produces (calibration hooks here).
pub fn run_observed(g: &Graph, inputs: &[Tensor], mut observe: impl FnMut(ValueId, &Tensor)) -> Result<Vec<Tensor>> {
    if inputs.len() != g.inputs().len() {
        return Err(IrError::Invalid(format!(
            "graph has {} inputs, {} given",
            g.inputs().len(),
            inputs.len()
        )));
    }
    let order = g.topo_order()?;
    let mut vals: Vec<Option<std::borrow::Cow<'_, Tensor>>> = vec![None; g.num_values()];
    let mut uses = vec![0usize; g.num_values()];
    for &n in &order {
        for &v in &g.node(n).inputs {
            uses[v.index()] += 1;
        }
    }
    for &v in g.outputs() {
        uses[v.index()] += 1;
    }
    for (i, (&v, t)) in g.inputs().iter().zip(inputs).enumerate() {
        let want = &g.value(v).ty;
        if t.shape != want.shape || t.data.scalar() != want.dtype.scalar {
            return Err(IrError::BadInput {
                index: i,
                name: g.value(v).name.clone(),
                expected: want.to_string(),
                got: t.ty().to_string(),
            });
        }
        vals[v.index()] = Some(std::borrow::Cow::Borrowed(t));
    }
    for &n in &order {
        let node = g.node(n);
        let mut args = Vec::with_capacity(node.inputs.len());
        for &v in &node.inputs {
            let t: &Tensor = match &g.value(v).def {
                ValueDef::Const(c) => c,
                _ => vals[v.index()].as_deref().ok_or_else(|| {
                    IrError::Invalid(format!("value `{}` used before it is computed", g.value(v).name))
                })?,
            };
            args.push(t);
        }
        let types: Vec<TensorType> = node.outputs.iter().map(|&o| g.value(o).ty.clone()).collect();
        let outs = eval_node(&node.op, &args, &types).map_err(|e| e.at(&node.name))?;
        drop(args);
        for &v in &node.inputs {
            uses[v.index()] -= 1;
            if uses[v.index()] == 0 && !matches!(g.value(v).def, ValueDef::Input(_)) {
                vals[v.index()] = None;
            }
        }
        for (&o, t) in node.outputs.iter().zip(outs) {
            observe(o, &t);
            vals[o.index()] = Some(std::borrow::Cow::Owned(t));
        }
    }
    g.outputs()
        .iter()
        .map(|&v| match &g.value(v).def {
            ValueDef::Const(c) => Ok((**c).clone()),
            _ => vals[v.index()]
                .as_deref()
                .cloned()
                .ok_or_else(|| IrError::Invalid(format!("output `{}` was not computed", g.value(v).name))),
        })
        .collect()
}

/// Evaluates one op on concrete inputs; `out` are the node's inferred output types.
pub fn eval_node(op: &Op, inputs: &[&Tensor], out: &[TensorType]) -> Result<Vec<Tensor>> {
    let has_f16 = inputs.iter().any(|t| t.data.scalar() == Scalar::F16);
    if has_f16 && !op.is_layout() && !matches!(op, Op::Cast { .. } | Op::Gather { .. }) {
        // Compute half-precision ops in f32 and round each result once.
        let up: Vec<Tensor> = inputs
            .iter()
            .map(|t| {
                if t.data.scalar() == Scalar::F16 {
                    t.cast(Scalar::F32)
                } else {
                    (*t).clone()
                }
            })
            .collect();
        let refs: Vec<&Tensor> = up.iter().collect();
        let out32: Vec<TensorType> = out
            .iter()
            .map(|t| {
                let s = if t.dtype.scalar == Scalar::F16 {
                    Scalar::F32
                } else {
                    t.dtype.scalar
                };
                TensorType::new(s, t.shape.clone())
            })
            .collect();
        let res = eval_node(op, &refs, &out32)?;
        return Ok(res
            .into_iter()
            .zip(out)
            .map(|(t, ty)| {
                if ty.dtype.scalar == Scalar::F16 {
                    t.cast(Scalar::F16)
                } else {
                    t
                }
            })
            .collect());
    }
    let mut res = dispatch(op, inputs, out)?;
    for (t, ty) in res.iter_mut().zip(out) {
        if t.shape != ty.shape || t.data.scalar() != ty.dtype.scalar {
            return Err(IrError::eval(
                op.name(),
                format!("kernel produced {}, expected {ty}", t.ty()),
            ));
        }
        t.quant = ty.dtype.quant.clone();
    }
    Ok(res)
}

/// Runs `$e` with the type alias `$T` bound to the float type of tensor `$t`.
macro_rules! float {
    ($t:expr, $T:ident => $e:expr) => {
        match $t.data.scalar() {
            Scalar::F32 => {
                type $T = f32;
                $e
            }
            Scalar::F64 => {
                type $T = f64;
                $e
            }
            s => Err(IrError::eval("float kernel", format!("unsupported element type {s}"))),
        }
    };
}

fn dispatch(op: &Op, x: &[&Tensor], out: &[TensorType]) -> Result<Vec<Tensor>> {
    let one = |t: Tensor| Ok(vec![t]);
    let shape0 = || out[0].shape.clone();
    match op {
        Op::Identity => one(x[0].clone()),
        Op::Unary(u) => one(elementwise::unary(*u, x[0])?),
        Op::Binary(b) => one(elementwise::binary(*b, x[0], x[1], &out[0])?),
        Op::Where => one(elementwise::where_(x[0], x[1], x[2], &out[0].shape)),
        Op::Cast { to } => one(x[0].cast(*to)),
        Op::Conv(c) => one(post(
            c.fused,
            float!(x[0], T => window::conv::<T>(c, x, &out[0].shape))?,
        )?),
        Op::ConvTranspose(c) => one(float!(x[0], T => window::conv_transpose::<T>(c, x, &out[0].shape))?),
        Op::Gemm {
            alpha,
            beta,
            trans_a,
            trans_b,
            fused,
        } => one(post(
            *fused,
            float!(x[0], T => linalg::gemm::<T>(x, *alpha, *beta, *trans_a, *trans_b, &out[0].shape))?,
        )?),
        Op::MatMul => one(linalg::matmul(x[0], x[1], &out[0].shape)?),
        Op::Pool(p) => one(window::pool(p, x[0], &out[0].shape)?),
        Op::GlobalPool(k) => one(window::global_pool(*k, x[0], &out[0].shape)?),
        Op::BatchNorm { epsilon } => one(float!(x[0], T => norm::batch_norm::<T>(x, *epsilon))?),
        Op::InstanceNorm { epsilon } => one(float!(x[0], T => norm::instance_norm::<T>(x, *epsilon))?),
        Op::LayerNorm { axis, epsilon } => one(float!(x[0], T => norm::layer_norm::<T>(x, *axis, *epsilon))?),
        Op::Lrn {
            size,
            alpha,
            beta,
            bias,
        } => one(float!(x[0], T => norm::lrn::<T>(x[0], *size, *alpha, *beta, *bias))?),
        Op::Softmax { axis } => one(float!(x[0], T => norm::softmax::<T>(x[0], *axis, norm::SoftKind::Soft))?),
        Op::LogSoftmax { axis } => one(float!(x[0], T => norm::softmax::<T>(x[0], *axis, norm::SoftKind::Log))?),
        Op::Hardmax { axis } => one(float!(x[0], T => norm::softmax::<T>(x[0], *axis, norm::SoftKind::Hard))?),
        Op::Reshape { shape } => one(Tensor::new(shape.clone(), x[0].data.clone())),
        Op::Transpose { perm } => one(layout::transpose(x[0], perm)),
        Op::Concat { axis } => one(layout::concat(x, *axis, shape0())),
        Op::Split { axis, sizes } => Ok(layout::split(x[0], *axis, sizes)),
        Op::Slice { axes } => one(layout::slice(x[0], axes)),
        Op::Pad { mode, pads } => one(layout::pad(x[0], x.get(1).copied(), *mode, pads, shape0())?),
        Op::Gather { axis } => one(layout::gather(x[0], x[1], *axis, shape0())?),
        Op::GatherElements { axis } => one(layout::gather_elements(x[0], x[1], *axis)?),
        Op::GatherNd { batch_dims } => one(layout::gather_nd(x[0], x[1], *batch_dims, shape0())?),
        Op::ScatterElements { axis, reduction } => one(layout::scatter_elements(x[0], x[1], x[2], *axis, *reduction)?),
        Op::ScatterNd { reduction } => one(layout::scatter_nd(x[0], x[1], x[2], *reduction)?),
        Op::Expand { shape } => one(layout::expand(x[0], shape)),
        Op::Tile { repeats } => one(layout::tile(x[0], repeats)),
        Op::Reduce { kind, axes, keep_dims } => one(reduce::reduce(x[0], *kind, axes, *keep_dims)),
        Op::ArgMax { axis, keep_dims, last } => one(reduce::arg(x[0], *axis, *keep_dims, *last, true)),
        Op::ArgMin { axis, keep_dims, last } => one(reduce::arg(x[0], *axis, *keep_dims, *last, false)),
        Op::CumSum {
            axis,
            exclusive,
            reverse,
        } => one(reduce::cumsum(x[0], *axis, *exclusive, *reverse)),
        Op::TopK {
            axis,
            k,
            largest,
            sorted: _,
        } => Ok(reduce::topk(x[0], *axis, *k, *largest)),
        Op::OneHot { axis, depth } => one(layout::one_hot(x[0], x[1], *axis, *depth)?),
        Op::Trilu { upper, k } => one(layout::trilu(x[0], *upper, *k)),
        Op::Einsum { equation } => one(linalg::einsum(equation, x, &out[0])?),
        Op::Rnn(r) => float!(x[0], T => rnn::rnn::<T>(r, x)),
        Op::Resize(rz) => one(resize::resize(rz, x[0], &out[0].shape)?),
        Op::Quantize { to, scale, zero_point } => one(quant::quantize(x[0], *to, *scale, *zero_point)),
        Op::Dequantize { scale, zero_point } => one(quant::dequantize(x[0], *scale, *zero_point)),
        Op::QConv { window, group, q } => one(quant::qconv(window, *group, q, x, &out[0].shape)?),
        Op::QMatMul { q } => one(quant::qmatmul(q, x, &out[0].shape)?),
        Op::QBlockMatMul { q, block } => one(quant::qblock_matmul(q, *block, x, &out[0].shape)),
        Op::DynConv {
            window,
            group,
            weight_scales,
        } => one(quant::dyn_conv(window, *group, weight_scales, x, &out[0].shape)),
        Op::DynMatMul {
            weight_scales, block, ..
        } => one(quant::dyn_matmul(weight_scales, *block, x, &out[0].shape)),
        Op::DynamicQuantize => Ok(quant::dynamic_quantize_u8(x[0])),
        Op::IntConv { window, group } => one(quant::int_conv_op(window, *group, x, &out[0].shape)),
        Op::IntMatMul => one(quant::int_matmul_op(x, &out[0].shape)),
        Op::QAdd(a) => one(quant::qadd(a, x[0], x[1], &out[0].shape)?),
        Op::QMul(m) => one(quant::qmul(m, x[0], x[1], &out[0].shape)),
        Op::QPRelu(p) => one(quant::qprelu(p, x[0], x[1], &out[0].shape)),
        Op::QSoftmax16 { axis, exp_hi, exp_lo } => one(quant::softmax16(*axis, (exp_hi, exp_lo), x[0])),
        Op::Lut { table, .. } => one(quant::lut(table, x[0])),
        Op::Lut16 { table, .. } => one(quant::lut16(table, x[0])),
        Op::Requant {
            to,
            input_zp,
            requant,
            zero_point,
            ..
        } => one(quant::requant(x[0], *to, *input_zp, *requant, *zero_point)),
        Op::QSoftmax { axis, exp_table } => one(quant::softmax(*axis, exp_table, x[0])),
    }
}

/// Applies a fused activation to a producer's result, exactly as the separate op would.
fn post(fused: Option<crate::op::UnaryOp>, t: Tensor) -> Result<Tensor> {
    match fused {
        Some(u) => elementwise::unary(u, &t),
        None => Ok(t),
    }
}

/// Borrow `t`'s elements as `T` (the caller checked the type).
pub(crate) fn sl<T: Elem>(t: &Tensor) -> &[T] {
    t.as_slice::<T>().expect("element type checked by shape inference")
}

/// Walks every multi-index of `shape` in row-major order.
pub(crate) fn for_each_index(shape: &[usize], mut f: impl FnMut(&[usize])) {
    if shape.contains(&0) {
        return;
    }
    let mut idx = vec![0usize; shape.len()];
    loop {
        f(&idx);
        let mut d = shape.len();
        loop {
            if d == 0 {
                return;
            }
            d -= 1;
            idx[d] += 1;
            if idx[d] < shape[d] {
                break;
            }
            idx[d] = 0;
        }
    }
}

/// For each element of `out`, the flat offset of the element of `inp` it broadcasts from.
pub(crate) fn broadcast_offsets(inp: &[usize], out: &[usize]) -> Vec<usize> {
    let r = out.len();
    let st = crate::tensor::strides(inp);
    let mut bst = vec![0usize; r];
    for i in 0..inp.len() {
        let o = r - inp.len() + i;
        bst[o] = if inp[i] == 1 { 0 } else { st[i] };
    }
    let mut v = Vec::with_capacity(out.iter().product());
    for_each_index(out, |idx| v.push(idx.iter().zip(&bst).map(|(a, b)| a * b).sum()));
    v
}

pub(crate) fn unsupported(op: &'static str, d: &Data) -> IrError {
    IrError::eval(op, format!("unsupported element type {}", d.scalar()))
}

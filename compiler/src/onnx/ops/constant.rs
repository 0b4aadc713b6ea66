//! Constants and casts. Constant-producing ops (Constant, ConstantOfShape, Range) become IR
//! constants directly: with static shapes there is nothing left to compute at run time.

use crate::onnx::proto::NodeProto;
use crate::onnx::tensor::{convert, scalar_of};
use crate::onnx::{Attrs, Ctx, ImportError};
use kiln_ir::{Data, Op, Tensor, ValueId};

pub fn cast(cx: &mut Ctx, n: &NodeProto) -> Result<Vec<ValueId>, ImportError> {
    let x = cx.req(n, 0)?;
    let to = if n.op_type == "CastLike" {
        cx.ty(cx.req(n, 1)?).dtype.scalar
    } else {
        let code = Attrs::of(n).i("to", 0) as i32;
        scalar_of(code).ok_or_else(|| {
            cx.err(format!(
                "cast to {} is not supported",
                crate::onnx::proto::data_type::name(code)
            ))
        })?
    };
    cx.add(n, Op::Cast { to }, vec![x])
}

pub fn constant(cx: &mut Ctx, n: &NodeProto) -> Result<Vec<ValueId>, ImportError> {
    let a = Attrs::of(n);
    let t = if let Some(t) = a.get("value").and_then(|v| v.t.as_ref()) {
        convert(t, None)?
    } else if a.has("value_float") {
        Tensor::scalar_f32(a.f("value_float", 0.0))
    } else if let Some(v) = a.floats("value_floats") {
        Tensor::from_vec(vec![v.len()], v)
    } else if a.has("value_int") {
        Tensor::from_vec(vec![], vec![a.i("value_int", 0)])
    } else if let Some(v) = a.ints("value_ints") {
        Tensor::from_vec(vec![v.len()], v)
    } else {
        return Err(cx.err("only value, value_float(s) and value_int(s) are supported (no strings, no sparse)"));
    };
    Ok(vec![cx.constant(&n.output[0], t)])
}

pub fn constant_of_shape(cx: &mut Ctx, n: &NodeProto) -> Result<Vec<ValueId>, ImportError> {
    let shape = cx.const_ints(n, 0)?.ok_or_else(|| cx.err("shape is required"))?;
    let shape = cx.dims(&shape, "ConstantOfShape shape")?;
    let value = match Attrs::of(n).get("value").and_then(|v| v.t.as_ref()) {
        Some(t) => convert(t, None)?,
        None => Tensor::scalar_f32(0.0),
    };
    if value.numel() != 1 {
        return Err(cx.err("value must hold one element"));
    }
    let numel: usize = shape.iter().product();
    cx.make(numel.saturating_mul(value.data.scalar().size()))?;
    let t = Tensor::new(shape, value.data.splat(numel));
    Ok(vec![cx.constant(&n.output[0], t)])
}

pub fn range(cx: &mut Ctx, n: &NodeProto) -> Result<Vec<ValueId>, ImportError> {
    let get = |cx: &Ctx, i: usize| -> Result<std::sync::Arc<Tensor>, ImportError> {
        cx.const_input(n, i)?
            .ok_or_else(|| cx.err(format!("input {i} is required")))
    };
    let (s, l, d) = (get(cx, 0)?, get(cx, 1)?, get(cx, 2)?);
    for (t, what) in [(&s, "start"), (&l, "limit"), (&d, "delta")] {
        if t.numel() != 1 {
            return Err(cx.err(format!("{what} must be a scalar, it has {} elements", t.numel())));
        }
    }
    let scalar = s.data.scalar();
    let (start, limit, delta) = (s.to_f64_vec()[0], l.to_f64_vec()[0], d.to_f64_vec()[0]);
    if delta == 0.0 {
        return Err(cx.err("delta is 0"));
    }
    let len = ((limit - start) / delta).ceil().max(0.0);
    let len = cx.dims(&[len as i64], "Range length")?[0];
    cx.make(len.saturating_mul(8))?;
    let t = if scalar.is_int() {
        let (s, d) = (s.to_i64_vec()[0], d.to_i64_vec()[0]);
        Tensor::new(
            vec![len],
            Data::I64((0..len as i64).map(|i| s + i * d).collect()).cast(scalar),
        )
    } else {
        // Accumulate like the reference (start + i * delta) in the input's precision.
        let v: Vec<f64> = (0..len).map(|i| start + i as f64 * delta).collect();
        Tensor::new(vec![len], Data::F64(v).cast(scalar))
    };
    Ok(vec![cx.constant(&n.output[0], t)])
}

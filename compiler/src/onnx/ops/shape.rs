//! Reshape-likes (all become one static `Reshape`), Transpose, Expand, Tile, the
//! Depth/Space rearrangements (lowered to Reshape + Transpose), and the ops that are
//! constants once shapes are static (Shape, Size).

use crate::onnx::proto::NodeProto;
use crate::onnx::{Attrs, Ctx, ImportError};
use kiln_ir::{Op, Tensor, ValueId};

pub fn identity(cx: &mut Ctx, n: &NodeProto) -> Result<Vec<ValueId>, ImportError> {
    let x = cx.req(n, 0)?;
    if n.op_type == "Dropout" {
        if let Some(t) = cx.const_input(n, 2)?
            && t.to_i64_vec().first() == Some(&1)
        {
            return Err(cx.err("training_mode = true is not supported by an inference compiler"));
        }
        let mut outs = cx.add_first(n, Op::Identity, vec![x])?;
        if n.output.len() > 1 && !n.output[1].is_empty() {
            let shape = cx.ty(x).shape.clone();
            let numel = shape.iter().product();
            outs.push(cx.constant(&n.output[1], Tensor::from_vec(shape, vec![true; numel])));
        }
        return Ok(outs);
    }
    cx.add(n, Op::Identity, vec![x])
}

pub fn reshape(cx: &mut Ctx, n: &NodeProto) -> Result<Vec<ValueId>, ImportError> {
    let x = cx.req(n, 0)?;
    let spec = match cx.const_ints(n, 1)? {
        Some(s) => s,
        None => Attrs::of(n)
            .ints("shape")
            .ok_or_else(|| cx.err("the target shape is required"))?,
    };
    let allow_zero = Attrs::of(n).i("allowzero", 0) != 0;
    let src = cx.ty(x).shape.clone();
    let mut out: Vec<i64> = Vec::with_capacity(spec.len());
    let mut infer = None;
    for (i, &d) in spec.iter().enumerate() {
        match d {
            0 if !allow_zero => out.push(
                *src.get(i)
                    .ok_or_else(|| cx.err(format!("0 at position {i} has no input dimension to copy")))?
                    as i64,
            ),
            -1 if infer.is_none() => {
                infer = Some(i);
                out.push(1);
            }
            d if d < 0 => return Err(cx.err(format!("bad target shape {spec:?}"))),
            d => out.push(d),
        }
    }
    let total: usize = src.iter().product();
    if let Some(i) = infer {
        let known: usize = cx.dims(&out, "reshape target")?.iter().product();
        if known == 0 || !total.is_multiple_of(known) {
            return Err(cx.err(format!("cannot reshape {} to {spec:?}", cx.ty(x))));
        }
        out[i] = (total / known) as i64;
    }
    let shape = cx.dims(&out, "reshape target")?;
    cx.add(n, Op::Reshape { shape }, vec![x])
}

pub fn flatten(cx: &mut Ctx, n: &NodeProto) -> Result<Vec<ValueId>, ImportError> {
    let x = cx.req(n, 0)?;
    let s = cx.ty(x).shape.clone();
    let axis = Attrs::of(n).i("axis", 1);
    let axis = if axis == s.len() as i64 {
        s.len()
    } else {
        cx.axis(axis, s.len())?
    };
    let shape = vec![s[..axis].iter().product(), s[axis..].iter().product()];
    cx.add(n, Op::Reshape { shape }, vec![x])
}

fn axes_of(cx: &Ctx, n: &NodeProto) -> Result<Option<Vec<i64>>, ImportError> {
    Ok(match Attrs::of(n).ints("axes") {
        Some(a) => Some(a),
        None => cx.const_ints(n, 1)?,
    })
}

pub fn squeeze(cx: &mut Ctx, n: &NodeProto) -> Result<Vec<ValueId>, ImportError> {
    let x = cx.req(n, 0)?;
    let s = cx.ty(x).shape.clone();
    let axes = match axes_of(cx, n)? {
        Some(a) => a.iter().map(|&a| cx.axis(a, s.len())).collect::<Result<Vec<_>, _>>()?,
        None => (0..s.len()).filter(|&i| s[i] == 1).collect(),
    };
    if let Some(&bad) = axes.iter().find(|&&a| s[a] != 1) {
        return Err(cx.err(format!("cannot squeeze axis {bad} of {}", cx.ty(x))));
    }
    let shape = (0..s.len()).filter(|i| !axes.contains(i)).map(|i| s[i]).collect();
    cx.add(n, Op::Reshape { shape }, vec![x])
}

pub fn unsqueeze(cx: &mut Ctx, n: &NodeProto) -> Result<Vec<ValueId>, ImportError> {
    let x = cx.req(n, 0)?;
    let s = cx.ty(x).shape.clone();
    let axes = axes_of(cx, n)?.ok_or_else(|| cx.err("axes are required"))?;
    let r = s.len() + axes.len();
    let mut axes = axes.iter().map(|&a| cx.axis(a, r)).collect::<Result<Vec<_>, _>>()?;
    axes.sort();
    if axes.windows(2).any(|w| w[0] == w[1]) {
        return Err(cx.err("repeated axis"));
    }
    let mut it = s.into_iter();
    let shape = (0..r)
        .map(|i| if axes.contains(&i) { 1 } else { it.next().unwrap_or(1) })
        .collect();
    cx.add(n, Op::Reshape { shape }, vec![x])
}

pub fn shape(cx: &mut Ctx, n: &NodeProto) -> Result<Vec<ValueId>, ImportError> {
    let x = cx.req(n, 0)?;
    let s: Vec<i64> = cx.ty(x).shape.iter().map(|&d| d as i64).collect();
    let a = Attrs::of(n);
    let r = s.len() as i64;
    let clamp = |v: i64| (if v < 0 { v + r } else { v }).clamp(0, r) as usize;
    let (start, end) = (clamp(a.i("start", 0)), clamp(a.i("end", r)));
    let v = if start < end { s[start..end].to_vec() } else { vec![] };
    Ok(vec![cx.constant(&n.output[0], Tensor::from_vec(vec![v.len()], v))])
}

pub fn size(cx: &mut Ctx, n: &NodeProto) -> Result<Vec<ValueId>, ImportError> {
    let x = cx.req(n, 0)?;
    let numel = cx.ty(x).numel() as i64;
    Ok(vec![cx.constant(&n.output[0], Tensor::from_vec(vec![], vec![numel]))])
}

pub fn transpose(cx: &mut Ctx, n: &NodeProto) -> Result<Vec<ValueId>, ImportError> {
    let x = cx.req(n, 0)?;
    let r = cx.rank(x);
    let perm = match Attrs::of(n).ints("perm") {
        Some(p) => p.iter().map(|&a| cx.axis(a, r)).collect::<Result<Vec<_>, _>>()?,
        None => (0..r).rev().collect(),
    };
    cx.add(n, Op::Transpose { perm }, vec![x])
}

pub fn expand(cx: &mut Ctx, n: &NodeProto) -> Result<Vec<ValueId>, ImportError> {
    let x = cx.req(n, 0)?;
    let want = cx.const_ints(n, 1)?.ok_or_else(|| cx.err("shape is required"))?;
    let want = cx.dims(&want, "expand shape")?;
    let shape = kiln_ir::shape::broadcast(&cx.ty(x).shape, &want)
        .ok_or_else(|| cx.err(format!("cannot expand {} to {want:?}", cx.ty(x))))?;
    cx.dims(&shape.iter().map(|&d| d as i64).collect::<Vec<_>>(), "expand shape")?;
    cx.add(n, Op::Expand { shape }, vec![x])
}

pub fn tile(cx: &mut Ctx, n: &NodeProto) -> Result<Vec<ValueId>, ImportError> {
    let x = cx.req(n, 0)?;
    let reps = cx.const_ints(n, 1)?.ok_or_else(|| cx.err("repeats are required"))?;
    let repeats = cx.dims(&reps, "repeats")?;
    let out: Vec<i64> = cx
        .ty(x)
        .shape
        .iter()
        .zip(&repeats)
        .map(|(&a, &b)| (a as i64).saturating_mul(b as i64))
        .collect();
    cx.dims(&out, "tile output")?;
    cx.add(n, Op::Tile { repeats }, vec![x])
}

fn rearrange(
    cx: &mut Ctx,
    n: &NodeProto,
    split: Vec<usize>,
    perm: Vec<usize>,
    out: Vec<usize>,
) -> Result<Vec<ValueId>, ImportError> {
    let x = cx.req(n, 0)?;
    let a = cx.add_aux("split", Op::Reshape { shape: split }, vec![x])?;
    let t = cx.add_aux("permute", Op::Transpose { perm }, vec![a])?;
    cx.add(n, Op::Reshape { shape: out }, vec![t])
}

fn nchw(cx: &Ctx, n: &NodeProto) -> Result<(usize, [usize; 4]), ImportError> {
    let x = cx.req(n, 0)?;
    let b = Attrs::of(n).i("blocksize", 0);
    let s = &cx.ty(x).shape;
    if b <= 0 || s.len() != 4 {
        return Err(cx.err(format!("needs a positive blocksize and a 4-D input, got {}", cx.ty(x))));
    }
    Ok((b as usize, [s[0], s[1], s[2], s[3]]))
}

pub fn depth_to_space(cx: &mut Ctx, n: &NodeProto) -> Result<Vec<ValueId>, ImportError> {
    let (b, [bn, c, h, w]) = nchw(cx, n)?;
    if !c.is_multiple_of(b * b) {
        return Err(cx.err(format!("channels {c} not divisible by blocksize² {}", b * b)));
    }
    let cc = c / (b * b);
    let out = vec![bn, cc, h * b, w * b];
    if Attrs::of(n).s("mode", "DCR") == "CRD" {
        rearrange(cx, n, vec![bn, cc, b, b, h, w], vec![0, 1, 4, 2, 5, 3], out)
    } else {
        rearrange(cx, n, vec![bn, b, b, cc, h, w], vec![0, 3, 4, 1, 5, 2], out)
    }
}

pub fn space_to_depth(cx: &mut Ctx, n: &NodeProto) -> Result<Vec<ValueId>, ImportError> {
    let (b, [bn, c, h, w]) = nchw(cx, n)?;
    if !h.is_multiple_of(b) || !w.is_multiple_of(b) {
        return Err(cx.err(format!("spatial size {h}x{w} not divisible by blocksize {b}")));
    }
    rearrange(
        cx,
        n,
        vec![bn, c, h / b, b, w / b, b],
        vec![0, 3, 5, 1, 2, 4],
        vec![bn, c * b * b, h / b, w / b],
    )
}

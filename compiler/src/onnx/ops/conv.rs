//! Conv and ConvTranspose; also the window resolution (auto_pad to explicit pads) that
//! pooling shares.

use crate::onnx::proto::NodeProto;
use crate::onnx::{Attrs, Ctx, ImportError};
use kiln_ir::op::{Conv, ConvTranspose, Window};
use kiln_ir::{Op, ValueId};

fn usizes(cx: &Ctx, v: Option<Vec<i64>>, n: usize, default: usize, what: &str) -> Result<Vec<usize>, ImportError> {
    match v {
        None => Ok(vec![default; n]),
        Some(v) if v.len() == n && v.iter().all(|&x| x >= 0) => Ok(v.into_iter().map(|x| x as usize).collect()),
        Some(v) => Err(cx.err(format!("{what} {v:?} does not fit {n} spatial axes"))),
    }
}

/// Resolves kernel/strides/dilations/pads/auto_pad for a window over `spatial` input dims.
pub(super) fn window(cx: &Ctx, n: &NodeProto, spatial: &[usize], kernel: Vec<usize>) -> Result<Window, ImportError> {
    let a = Attrs::of(n);
    let r = spatial.len();
    if kernel.len() != r || kernel.contains(&0) {
        return Err(cx.err(format!("kernel {kernel:?} does not fit {r} spatial axes")));
    }
    let strides = usizes(cx, a.ints("strides"), r, 1, "strides")?;
    let dilations = usizes(cx, a.ints("dilations"), r, 1, "dilations")?;
    if strides.contains(&0) || dilations.contains(&0) {
        return Err(cx.err("strides and dilations must be positive"));
    }
    let auto = a.s("auto_pad", "NOTSET");
    let pads = match auto.as_str() {
        "NOTSET" => usizes(cx, a.ints("pads"), 2 * r, 0, "pads")?,
        "VALID" => vec![0; 2 * r],
        "SAME_UPPER" | "SAME_LOWER" => {
            let mut p = vec![0; 2 * r];
            for i in 0..r {
                let out = spatial[i].div_ceil(strides[i]);
                let need = (out - 1) * strides[i] + (kernel[i] - 1) * dilations[i] + 1;
                let total = need.saturating_sub(spatial[i]);
                let small = total / 2;
                let (b, e) = if auto == "SAME_UPPER" {
                    (small, total - small)
                } else {
                    (total - small, small)
                };
                p[i] = b;
                p[i + r] = e;
            }
            p
        }
        other => return Err(cx.err(format!("auto_pad `{other}` is not supported"))),
    };
    Ok(Window {
        kernel,
        strides,
        dilations,
        pads,
    })
}

fn kernel_of(cx: &Ctx, n: &NodeProto, w: ValueId) -> Result<Vec<usize>, ImportError> {
    let ws = &cx.ty(w).shape;
    if ws.len() < 3 {
        return Err(cx.err(format!("weight {} must have spatial axes", cx.ty(w))));
    }
    let from_w = ws[2..].to_vec();
    match Attrs::of(n).ints("kernel_shape") {
        Some(k) if k.iter().map(|&v| v as usize).ne(from_w.iter().copied()) => {
            Err(cx.err(format!("kernel_shape {k:?} disagrees with weight {}", cx.ty(w))))
        }
        _ => Ok(from_w),
    }
}

pub fn conv(cx: &mut Ctx, n: &NodeProto) -> Result<Vec<ValueId>, ImportError> {
    let (x, w) = (cx.req(n, 0)?, cx.req(n, 1)?);
    let op = conv_op(cx, n, x, w)?;
    let mut ins = vec![x, w];
    ins.extend(cx.input(n, 2));
    cx.add(n, op, ins)
}

/// The float convolution node `n`'s attributes describe over input `x` and weight `w`
/// (shared with QLinearConv/ConvInteger, whose operands sit in other slots).
pub(super) fn conv_op(cx: &Ctx, n: &NodeProto, x: ValueId, w: ValueId) -> Result<Op, ImportError> {
    let kernel = kernel_of(cx, n, w)?;
    let xs = cx.ty(x).shape.clone();
    if xs.len() < 3 {
        return Err(cx.err(format!("input {} must be N,C,spatial", cx.ty(x))));
    }
    let window = window(cx, n, &xs[2..], kernel)?;
    let group = Attrs::of(n).i("group", 1).max(0) as usize;
    Ok(Op::Conv(Conv {
        window,
        group,
        fused: None,
    }))
}

pub fn conv_transpose(cx: &mut Ctx, n: &NodeProto) -> Result<Vec<ValueId>, ImportError> {
    let a = Attrs::of(n);
    let (x, w) = (cx.req(n, 0)?, cx.req(n, 1)?);
    let kernel = kernel_of(cx, n, w)?;
    let xs = cx.ty(x).shape.clone();
    if xs.len() < 3 {
        return Err(cx.err(format!("input {} must be N,C,spatial", cx.ty(x))));
    }
    let r = xs.len() - 2;
    let strides = usizes(cx, a.ints("strides"), r, 1, "strides")?;
    let dilations = usizes(cx, a.ints("dilations"), r, 1, "dilations")?;
    let mut output_padding = usizes(cx, a.ints("output_padding"), r, 0, "output_padding")?;
    let auto = a.s("auto_pad", "NOTSET");
    let output_shape = a.ints("output_shape").map(|s| s[s.len().saturating_sub(r)..].to_vec());
    let full = |i: usize, op: &[usize]| strides[i] * (xs[i + 2] - 1) + op[i] + (kernel[i] - 1) * dilations[i] + 1;
    let mut pads = usizes(cx, a.ints("pads"), 2 * r, 0, "pads")?;
    let target: Option<Vec<usize>> = match (&output_shape, auto.as_str()) {
        (Some(s), _) => Some(s.iter().map(|&v| v as usize).collect()),
        (None, "SAME_UPPER" | "SAME_LOWER") => Some((0..r).map(|i| xs[i + 2] * strides[i]).collect()),
        (None, "NOTSET") => None,
        (None, "VALID") => {
            pads = vec![0; 2 * r];
            None
        }
        (None, other) => return Err(cx.err(format!("auto_pad `{other}` is not supported"))),
    };
    if let Some(t) = target {
        if t.len() != r {
            return Err(cx.err(format!("output_shape {t:?} does not fit {r} spatial axes")));
        }
        for i in 0..r {
            let f = full(i, &output_padding);
            if t[i] > f {
                // The requested shape is larger than the kernel reaches: extend with output padding.
                output_padding[i] += t[i] - f;
                pads[i] = 0;
                pads[i + r] = 0;
                continue;
            }
            let total = f - t[i];
            let small = total / 2;
            let (b, e) = if auto == "SAME_UPPER" {
                (small, total - small)
            } else {
                (total - small, small)
            };
            pads[i] = b;
            pads[i + r] = e;
        }
    }
    let group = a.i("group", 1).max(0) as usize;
    let mut ins = vec![x, w];
    ins.extend(cx.input(n, 2));
    let op = ConvTranspose {
        window: Window {
            kernel,
            strides,
            dilations,
            pads,
        },
        group,
        output_padding,
    };
    cx.add(n, Op::ConvTranspose(op), ins)
}

//! Resize (opset 10 and 11+) and the older Upsample, resolved to explicit output sizes and
//! per-axis scales.

use crate::onnx::proto::NodeProto;
use crate::onnx::{Attrs, Ctx, ImportError};
use kiln_ir::op::{CoordMode, NearestMode, Resize, ResizeMode};
use kiln_ir::{Op, ValueId};

fn mode(cx: &Ctx, a: &Attrs, legacy: bool) -> Result<ResizeMode, ImportError> {
    Ok(match a.s("mode", "nearest").as_str() {
        "nearest" => ResizeMode::Nearest(if legacy {
            NearestMode::Floor
        } else {
            match a.s("nearest_mode", "round_prefer_floor").as_str() {
                "round_prefer_floor" => NearestMode::RoundPreferFloor,
                "round_prefer_ceil" => NearestMode::RoundPreferCeil,
                "floor" => NearestMode::Floor,
                "ceil" => NearestMode::Ceil,
                m => return Err(cx.err(format!("nearest_mode `{m}` is not supported"))),
            }
        }),
        "linear" | "bilinear" | "trilinear" => ResizeMode::Linear,
        "cubic" if !legacy => ResizeMode::Cubic,
        m => return Err(cx.err(format!("mode `{m}` is not supported"))),
    })
}

fn finish(
    cx: &mut Ctx,
    n: &NodeProto,
    x: ValueId,
    scales: Vec<f32>,
    sizes: Vec<usize>,
    rz: Resize,
) -> Result<Vec<ValueId>, ImportError> {
    cx.dims(&sizes.iter().map(|&d| d as i64).collect::<Vec<_>>(), "resize output")?;
    if scales.iter().any(|s| !(s.is_finite() && *s > 0.0)) {
        return Err(cx.err(format!("scales {scales:?} must be positive")));
    }
    cx.add(n, Op::Resize(Resize { scales, sizes, ..rz }), vec![x])
}

pub fn upsample(cx: &mut Ctx, n: &NodeProto) -> Result<Vec<ValueId>, ImportError> {
    let a = Attrs::of(n);
    let x = cx.req(n, 0)?;
    let scales = match a.floats("scales") {
        Some(s) => s,
        None => cx
            .const_input(n, 1)?
            .ok_or_else(|| cx.err("scales are required"))?
            .to_f64_vec()
            .iter()
            .map(|&v| v as f32)
            .collect(),
    };
    let shape = cx.ty(x).shape.clone();
    if scales.len() != shape.len() {
        return Err(cx.err("one scale per axis expected"));
    }
    let sizes = shape
        .iter()
        .zip(&scales)
        .map(|(&d, &s)| (d as f64 * s as f64).floor() as usize)
        .collect();
    let rz = Resize {
        sizes: vec![],
        mode: mode(cx, &a, true)?,
        coord: CoordMode::Asymmetric,
        scales: vec![],
        roi: vec![],
        cubic_a: -0.75,
        exclude_outside: false,
        extrapolation: 0.0,
    };
    finish(cx, n, x, scales, sizes, rz)
}

pub fn resize(cx: &mut Ctx, n: &NodeProto) -> Result<Vec<ValueId>, ImportError> {
    let a = Attrs::of(n);
    let x = cx.req(n, 0)?;
    let shape = cx.ty(x).shape.clone();
    let r = shape.len();
    let legacy = cx.opset < 11;
    if a.i("antialias", 0) != 0 {
        return Err(cx.err("antialias is not supported"));
    }
    let (roi, scales, sizes) = if legacy {
        (None, cx.const_input(n, 1)?, None)
    } else {
        (cx.const_input(n, 1)?, cx.const_input(n, 2)?, cx.const_input(n, 3)?)
    };
    let axes = match a.ints("axes") {
        Some(ax) => ax.iter().map(|&v| cx.axis(v, r)).collect::<Result<Vec<_>, _>>()?,
        None => (0..r).collect(),
    };
    let k = axes.len();
    let mut full_scales = vec![1f32; r];
    let mut full_sizes = shape.clone();
    match (scales.filter(|t| t.numel() > 0), sizes.filter(|t| t.numel() > 0)) {
        (Some(s), None) => {
            let s = s.to_f64_vec();
            if s.len() != k {
                return Err(cx.err(format!("{} scales for {k} axes", s.len())));
            }
            for (i, &ax) in axes.iter().enumerate() {
                full_scales[ax] = s[i] as f32;
                full_sizes[ax] = (shape[ax] as f64 * s[i] as f32 as f64).floor().max(0.0) as usize;
            }
        }
        (None, Some(sz)) => {
            let sz = sz.to_i64_vec();
            if sz.len() != k || sz.iter().any(|&v| v < 0) {
                return Err(cx.err(format!("sizes {sz:?} do not fit {k} axes")));
            }
            let policy = a.s("keep_aspect_ratio_policy", "stretch");
            let ratio = |i: usize| sz[i] as f64 / shape[axes[i]] as f64;
            let common = match policy.as_str() {
                "stretch" => None,
                "not_larger" => Some((0..k).map(ratio).fold(f64::INFINITY, f64::min)),
                "not_smaller" => Some((0..k).map(ratio).fold(f64::NEG_INFINITY, f64::max)),
                p => return Err(cx.err(format!("keep_aspect_ratio_policy `{p}` is not supported"))),
            };
            for (i, &ax) in axes.iter().enumerate() {
                match common {
                    None => {
                        full_sizes[ax] = sz[i] as usize;
                        full_scales[ax] = ratio(i) as f32;
                    }
                    Some(c) => {
                        full_scales[ax] = c as f32;
                        full_sizes[ax] = (shape[ax] as f64 * c).round() as usize;
                    }
                }
            }
        }
        _ => return Err(cx.err("exactly one of scales and sizes must be given")),
    }
    let coord = if legacy {
        CoordMode::Asymmetric
    } else {
        match a.s("coordinate_transformation_mode", "half_pixel").as_str() {
            "half_pixel" => CoordMode::HalfPixel,
            "half_pixel_symmetric" => CoordMode::HalfPixelSymmetric,
            "pytorch_half_pixel" => CoordMode::PytorchHalfPixel,
            "align_corners" => CoordMode::AlignCorners,
            "asymmetric" => CoordMode::Asymmetric,
            "tf_crop_and_resize" => CoordMode::TfCropAndResize,
            m => return Err(cx.err(format!("coordinate_transformation_mode `{m}` is not supported"))),
        }
    };
    let mut full_roi = vec![0f32; r];
    full_roi.extend(vec![1f32; r]);
    if coord == CoordMode::TfCropAndResize {
        let roi = roi.ok_or_else(|| cx.err("tf_crop_and_resize needs roi"))?.to_f64_vec();
        if roi.len() != 2 * k {
            return Err(cx.err("roi must hold a start and an end per axis"));
        }
        for (i, &ax) in axes.iter().enumerate() {
            full_roi[ax] = roi[i] as f32;
            full_roi[r + ax] = roi[k + i] as f32;
        }
    }
    let rz = Resize {
        sizes: vec![],
        mode: mode(cx, &a, legacy)?,
        coord,
        scales: vec![],
        roi: full_roi,
        cubic_a: a.f("cubic_coeff_a", -0.75),
        exclude_outside: a.i("exclude_outside", 0) != 0,
        extrapolation: a.f("extrapolation_value", 0.0),
    };
    finish(cx, n, x, full_scales, full_sizes, rz)
}

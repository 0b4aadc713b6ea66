//! Integer and hybrid lowerings: one call into `k::int` (or `k::mcu` on Cortex-M parts)
//! per node, with each node's requantization constants as module-level items.

use super::f32_lit;
use super::kernel::{
    At, Lowered, conv_shape, list, qlinear, requant_lit, scalar, scales_table, shape, spatial_2d, split_axis, table,
};
use crate::Refusal;
use crate::shapes::bcast;
use kiln_ir::{Op, Scalar};
use std::fmt::Write;

/// Quantize, Dequantize and the integer and hybrid products. The last arm takes what the
/// guards above leave (the dispatcher routes only these ops here).
pub(super) fn products(at: &At, items: &mut String) -> Lowered {
    let (g, n, ins, kk, cortex_m) = (at.g, at.n, at.ins, at.k, at.cortex_m);
    let (x0s, o0) = (&at.x0s, &at.o0);
    let _ = n;
    Ok(match &g.node(n).op {
        Op::Quantize { to, scale, zero_point } if scalar(g, ins[0]) == Scalar::F32 => {
            let (lo, hi, t) = match to {
                Scalar::I8 => (-128, 127, "i8"),
                Scalar::U8 => (0, 255, "u8"),
                Scalar::I16 => (-32768, 32767, "i16"),
                _ => return Err(Refusal("no integer Rust kernel for this form")),
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
            let flat = window.plane(x0s, o0).flattened();
            format!(
                "k::mcu::patch_conv::<{}, {}, {}>(x0, x1, {bias}, y0, {}, &{});",
                crate::pack::padded_taps(taps),
                flat.kh,
                flat.kw,
                conv_shape(x0s, o0, *group, window),
                qlinear(items, kk, q)
            )
        }
        Op::QConv { window, group, q } if cortex_m && crate::pack::plane_conv_fits(g, n) => {
            let bias = if ins.len() > 2 { "Some(x2)" } else { "None" };
            let (ph, pw) = crate::pack::plane_dims(&window.plane(x0s, o0));
            let flat = window.plane(x0s, o0).flattened();
            format!(
                "k::mcu::plane_conv::<{}, {}, {}>(x0, x1, {bias}, y0, {}, &{});",
                ph * pw,
                flat.kh,
                flat.kw,
                conv_shape(x0s, o0, *group, window),
                qlinear(items, kk, q)
            )
        }
        Op::QConv { window, group, q } if spatial_2d(g, ins[0]) && scalar(g, ins[0]) == Scalar::I8 => {
            let bias = if ins.len() > 2 { "Some(x2)" } else { "None" };
            format!(
                "k::int::qconv(x0, x1, {bias}, y0, s, {}, &{});",
                conv_shape(x0s, o0, *group, window),
                qlinear(items, kk, q)
            )
        }
        Op::QConv { window, group, q } if spatial_2d(g, ins[0]) && scalar(g, ins[0]) == Scalar::I16 => {
            let bias = if ins.len() > 2 { "Some(x2)" } else { "None" };
            format!(
                "k::int::qconv16(x0, x1, {bias}, y0, s, {}, &{});",
                conv_shape(x0s, o0, *group, window),
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
            conv_shape(x0s, o0, *group, window),
            scales_table(items, kk, weight_scales)
        ),
        Op::DynMatMul {
            weight_scales, block, ..
        } => format!(
            "k::int::dyn_matmul(x0, x1, y0, s, {}, &{}, {block});",
            shape(g, ins[1])[1],
            scales_table(items, kk, weight_scales)
        ),
        _ => return Err(Refusal("no integer Rust kernel for this form")),
    })
}

/// The integer elementwise ops, softmax and tables (routed here by the dispatcher, as
/// `products`).
pub(super) fn pointwise(at: &At, items: &mut String) -> Lowered {
    let (g, n, ins, kk) = (at.g, at.n, at.ins, at.k);
    let (x0s, o0) = (&at.x0s, &at.o0);
    Ok(match &g.node(n).op {
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
                list(&bcast(x0s, o0)),
                list(&bcast(shape(g, ins[1]), o0)),
                list(o0),
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
                list(&bcast(x0s, o0)),
                list(&bcast(shape(g, ins[1]), o0)),
                list(o0),
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
                list(&bcast(x0s, o0)),
                list(&bcast(shape(g, ins[1]), o0)),
                list(o0),
            )
        }
        Op::QSoftmax { axis, exp_table } => {
            let (_, len, inner) = split_axis(x0s, *axis);
            if inner != 1 {
                return Err(Refusal("no integer Rust kernel for this form"));
            }
            let t = table(items, &format!("T{kk}"), "i32", exp_table);
            format!("k::int::qsoftmax(x0, y0, {len}, &{t});")
        }
        Op::QSoftmax16 { axis, exp_hi, exp_lo } => {
            let (_, len, inner) = split_axis(x0s, *axis);
            if inner != 1 {
                return Err(Refusal("no integer Rust kernel for this form"));
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
        _ => return Err(Refusal("no integer Rust kernel for this form")),
    })
}

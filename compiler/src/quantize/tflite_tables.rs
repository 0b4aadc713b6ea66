//! Int8 tables that reproduce TFLite's fixed-point activation kernels (RELU, RELU6,
//! RELU_N1_TO_1, LEAKY_RELU, HARD_SWISH) and its int8 requantization for TFLite numerics. An int8 function of one
//! int8 is a 256-entry table whatever computes it, so running TFLite's integer algorithm once
//! per input value at compile time gives its bytes at run time, on every backend, with no
//! kernel of its own. The arithmetic follows TFLite's reference kernels: multipliers from
//! the scales in f32 as TFLite computes them, then `QuantizeMultiplier`.

use super::quantize_static::Q;
use kiln_ir::op::UnaryOp;
use kiln_runtime as rt;

/// The table of `u` from int8 `px` to int8 `po`, when TFLite has a fixed-point kernel for it
/// (else the caller evaluates the float function).
pub fn table(u: &UnaryOp, px: Q, po: Q) -> Option<Vec<i8>> {
    let entry: Box<dyn Fn(i32) -> i32> = match *u {
        UnaryOp::Relu => relu_x(px, po, 0.0, None)?,
        UnaryOp::Clip { min, max } => relu_x(px, po, min, Some(max))?,
        UnaryOp::LeakyRelu { alpha } => leaky_relu(px, po, alpha)?,
        UnaryOp::HardSwish => hard_swish(px, po)?,
        _ => return None,
    };
    Some((-128..128).map(|q| entry(q).clamp(-128, 127) as i8).collect())
}

/// TFLite's int8-to-int8 QUANTIZE: `zp_out + M(x - zp_in)` with `M = s_in / s_out`
/// (computed in f64, as TFLite does for this kernel).
pub fn requantize(px: Q, po: Q) -> Option<Vec<i8>> {
    let m = rt::quantize_multiplier(px.scale as f64 / po.scale as f64)?;
    let entry = |q: i32| po.zp + rt::multiply_by_quantized_multiplier_tflite(q - px.zp, m);
    Some((-128..128).map(|q| entry(q).clamp(-128, 127) as i8).collect())
}

fn multiplier(real: f32) -> Option<rt::Requant> {
    rt::quantize_multiplier(real as f64)
}

/// `y = clamp(zp_out + M(x - zp_in))` to the quantized activation range (TFLite's ReluX).
fn relu_x(px: Q, po: Q, lo: f32, hi: Option<f32>) -> Option<Box<dyn Fn(i32) -> i32>> {
    let m = multiplier(px.scale / po.scale)?;
    let bound = |v: f32| po.zp + (v / po.scale).round() as i32;
    let lo = bound(lo).max(-128);
    let hi = hi.map_or(127, |h| bound(h).min(127));
    Some(Box::new(move |q| {
        (po.zp + rt::multiply_by_quantized_multiplier_tflite(q - px.zp, m)).clamp(lo, hi)
    }))
}

/// Identity above the input's zero point, `alpha` times below, each with its own multiplier.
fn leaky_relu(px: Q, po: Q, alpha: f32) -> Option<Box<dyn Fn(i32) -> i32>> {
    let identity = multiplier(px.scale / po.scale)?;
    let slope = multiplier(px.scale * alpha / po.scale)?;
    Some(Box::new(move |q| {
        let x = q - px.zp;
        po.zp + rt::multiply_by_quantized_multiplier_tflite(x, if x >= 0 { identity } else { slope })
    }))
}

/// A Q31 multiplier rounded to Q15.
fn to_q15(m: i32) -> i16 {
    if m >= i32::MAX - (1 << 15) {
        i16::MAX
    } else {
        ((m + (1 << 15)) >> 16) as i16
    }
}

/// `a * b * 2 / 2^16` rounded half away from zero, saturating the one overflow.
fn rounding_doubling_high_mul16(a: i16, b: i16) -> i16 {
    if a == b && a == i16::MIN {
        return i16::MAX;
    }
    let ab = a as i32 * b as i32;
    let nudge = if ab >= 0 { 1 << 14 } else { 1 - (1 << 14) };
    ((ab + nudge) / (1 << 15)) as i16
}

/// `a * b * 2 / 2^16` truncated toward zero.
fn doubling_high_mul16(a: i16, b: i16) -> i16 {
    if a == b && a == i16::MIN {
        return i16::MAX;
    }
    ((a as i32 * b as i32) / (1 << 15)) as i16
}

fn saturating_shift_left16(x: i16, n: i32) -> i16 {
    (x as i32 * (1 << n)).clamp(i16::MIN as i32, i16::MAX as i32) as i16
}

fn rounding_divide_by_pot16(x: i16, exponent: i32) -> i16 {
    rt::rounding_divide_by_pot(x as i32, exponent) as i16
}

/// `x * relu6(x + 3) / 6` in TFLite's int16 fixed point: the input at 2^7 times its
/// resolution, a "reluish" factor in [0, 1] from a saturating rescale, their product.
fn hard_swish(px: Q, po: Q) -> Option<Box<dyn Fn(i32) -> i32>> {
    let hires = (1.0f32 / 128.0) * px.scale;
    let out = multiplier(hires / po.scale)?;
    if out.shift > 0 {
        return None;
    }
    let reluish = multiplier(hires / (3.0f32 / 32768.0))?;
    let (out_m, reluish_m) = (to_q15(out.multiplier), to_q15(reluish.multiplier));
    let (out_exp, reluish_exp) = (out.shift, reluish.shift);
    Some(Box::new(move |q| {
        let hi = ((q - px.zp) * (1 << 7)) as i16;
        let preshift = rounding_doubling_high_mul16(hi, out_m);
        let mut r = hi;
        if reluish_exp > 0 {
            r = saturating_shift_left16(r, reluish_exp - 1);
        }
        r = rounding_doubling_high_mul16(r, reluish_m);
        if reluish_exp > 0 {
            r = saturating_shift_left16(r, 1);
        }
        if reluish_exp < 0 {
            r = rounding_divide_by_pot16(r, -reluish_exp);
        }
        let r = ((r as i32 + (1 << 15)) >> 1) as i16;
        let y = rounding_divide_by_pot16(doubling_high_mul16(r, preshift), -out_exp);
        y as i32 + po.zp
    }))
}

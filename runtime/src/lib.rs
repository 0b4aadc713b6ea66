//! Integer arithmetic shared, bit for bit, by the reference evaluator and generated code.
//! `no_std` and allocation-free so the same functions can be linked into firmware.
//!
//! The contract is TFLite's fixed-point arithmetic in its single-rounding form (the
//! `TFLITE_SINGLE_ROUNDING` build of TFLite and CMSIS-NN):
//! - a real rescale factor `m` becomes a 31-bit multiplier and a power-of-two shift
//!   ([`quantize_multiplier`]);
//! - an int32 accumulator is rescaled by one 64-bit product and one rounding shift
//!   ([`multiply_by_quantized_multiplier`]), so the result is the exactly rounded real
//!   product up to the multiplier's 31 bits. The two-step form (rounding high multiply, then
//!   rounding shift) is off by one whenever the exact value lies within ~2^-10 of a half,
//!   which made imported ONNX models disagree with ONNX Runtime in about 0.2% of outputs;
//! - float to integer rounds half to even, as ONNX `QuantizeLinear` ([`quantize`]).
//!
//! Every backend prints these same steps; `tests` below and the property tests in
//! `tests/requant.rs` pin them down.
#![no_std]

pub mod kernels;

/// A rescale factor `multiplier * 2^(shift - 31)`, `multiplier` in `[2^30, 2^31)` (or 0).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Requant {
    pub multiplier: i32,
    pub shift: i32,
}

/// Splits a non-negative real factor into a Q31 multiplier and a shift (TFLite's
/// `QuantizeMultiplier`). Factors below 2^-31 become zero; non-finite or negative input
/// gives `None`.
pub fn quantize_multiplier(real: f64) -> Option<Requant> {
    if real.is_nan() || real < 0.0 || !real.is_finite() {
        return None;
    }
    if real == 0.0 {
        return Some(Requant {
            multiplier: 0,
            shift: 0,
        });
    }
    // real = frac * 2^exp with frac in [0.5, 1), from the bits (no libm in no_std).
    let (mut frac, mut exp) = (real, 0i32);
    while frac >= 1.0 {
        frac *= 0.5;
        exp += 1;
    }
    while frac < 0.5 {
        frac *= 2.0;
        exp -= 1;
    }
    let t = frac * 2147483648.0;
    let mut q = t as i64;
    if t - q as f64 >= 0.5 {
        q += 1;
    }
    if q == 1i64 << 31 {
        q /= 2;
        exp += 1;
    }
    if exp < -31 {
        return Some(Requant {
            multiplier: 0,
            shift: 0,
        });
    }
    if exp > 30 {
        return None;
    }
    Some(Requant {
        multiplier: q as i32,
        shift: exp,
    })
}

/// Rescales an accumulator: `x * multiplier * 2^(shift - 31)` in one step, the 64-bit
/// product shifted right by `31 - shift` rounding half up, saturated to i32. `shift` lies in
/// `-31..=30` ([`quantize_multiplier`]), so the shift is 1..=62 and nothing overflows.
#[inline]
pub fn multiply_by_quantized_multiplier(x: i32, r: Requant) -> i32 {
    let total = 31 - r.shift;
    let p = (x as i64 * r.multiplier as i64 + (1i64 << (total - 1))) >> total;
    p.clamp(i32::MIN as i64, i32::MAX as i64) as i32
}

/// TFLite's `SaturatingRoundingDoublingHighMul`: the high word of `2 * a * b`, rounded half
/// away from zero; the one overflowing case (both `i32::MIN`) saturates.
#[inline]
pub fn saturating_rounding_doubling_high_mul(a: i32, b: i32) -> i32 {
    if a == i32::MIN && b == i32::MIN {
        return i32::MAX;
    }
    let ab = a as i64 * b as i64;
    let nudge = if ab >= 0 { 1i64 << 30 } else { 1 - (1i64 << 30) };
    // C++'s division truncates toward zero
    ((ab + nudge) / (1i64 << 31)) as i32
}

/// TFLite's `RoundingDivideByPOT`: `x / 2^exponent` rounded half away from zero.
#[inline]
pub fn rounding_divide_by_pot(x: i32, exponent: i32) -> i32 {
    let mask = ((1i64 << exponent) - 1) as i32;
    let remainder = x & mask;
    let threshold = (mask >> 1) + i32::from(x < 0);
    (x >> exponent) + i32::from(remainder > threshold)
}

/// TFLite's `MultiplyByQuantizedMultiplier` (double rounding, its reference kernels' and
/// TFLite Micro's default): `x` shifted left by a positive `shift`, the doubling high
/// multiply, then a rounding divide by `2^-shift` for a negative one.
#[inline]
pub fn multiply_by_quantized_multiplier_tflite(x: i32, r: Requant) -> i32 {
    let (left, right) = (r.shift.max(0), (-r.shift).max(0));
    rounding_divide_by_pot(
        saturating_rounding_doubling_high_mul(x.wrapping_mul(1 << left), r.multiplier),
        right,
    )
}

/// An i64 total in units of `2^(shift - 31)` output steps shifted down to steps, rounding
/// half up, saturated to i32: the last step of [`multiply_by_quantized_multiplier`], for
/// totals of several products (blocked products). `shift` lies in `-31..=30`, and the
/// quantizer keeps `|total| < 2^62 + 2^61`, so adding the half cannot overflow.
#[inline]
pub fn rounding_shift_wide(total: i64, shift: i32) -> i32 {
    let e = 31 - shift;
    let p = (total + (1i64 << (e - 1))) >> e;
    p.clamp(i32::MIN as i64, i32::MAX as i64) as i32
}

/// The 64-bit rescale of 16x8 kernels (int16 activations, int8 weights, int64 sums), as
/// TFLite's reference: the Q31 multiplier rounded to 16 bits, then `x * m16` shifted right
/// by `15 - shift` rounding half up. `shift` must lie in `-31..=7` (the quantizer checks),
/// so the shift is 8..=46 and `x * m16` fits for sums up to 2^47.
#[inline]
pub fn multiply_by_quantized_multiplier_wide(x: i64, r: Requant) -> i64 {
    let m16 = if r.multiplier < 0x7FFF_0000 {
        (r.multiplier as i64 + (1 << 15)) >> 16
    } else {
        0x7FFF
    };
    let total = 15 - r.shift;
    x.wrapping_mul(m16).wrapping_add(1i64 << (total - 1)) >> total
}

/// Rounds half to even to an integer, saturating to ±1e9 (NaN gives 0): the rounding of
/// ONNX `QuantizeLinear` and ONNX Runtime. Integer steps only, so no libm and no rounding
/// mode are involved on any target.
#[inline]
pub fn round_even(y: f32) -> i32 {
    if y.is_nan() {
        return 0;
    }
    let y = y.clamp(-1.0e9, 1.0e9);
    let t = y as i32;
    let f = y - t as f32;
    if f > 0.5 || (f == 0.5 && t & 1 != 0) {
        t + 1
    } else if f < -0.5 || (f == -0.5 && t & 1 != 0) {
        t - 1
    } else {
        t
    }
}

/// Float to integer: `clamp(round(x / scale) + zero_point, lo, hi)`, division in f32 and
/// rounding half to even (ONNX `QuantizeLinear`, so imported QDQ models quantize their
/// inputs exactly as ONNX Runtime does).
#[inline]
pub fn quantize(x: f32, scale: f32, zero_point: i32, lo: i32, hi: i32) -> i32 {
    let q = round_even(x / scale).saturating_add(zero_point);
    if q < lo {
        lo
    } else if q > hi {
        hi
    } else {
        q
    }
}

/// Dynamic-range quantization parameters for a run of activations (the rule of hybrid
/// int8 mode, where activations are quantized at run time): the observed range widened to
/// include 0 and mapped onto int8, `scale = (max - min) / 255` and `zero_point =
/// round_even(-128 - min / scale)` clamped to int8, all in f32 so every backend agrees
/// (ONNX `DynamicQuantizeLinear`'s rule, shifted from uint8 to int8).
/// NaNs are ignored; an empty, all-zero or non-finite range gives `(1.0, 0)`.
pub fn dynamic_qparams(values: &[f32]) -> (f32, i32) {
    let (mut lo, mut hi) = (0.0f32, 0.0f32);
    for &v in values {
        if v < lo {
            lo = v;
        }
        if v > hi {
            hi = v;
        }
    }
    let scale = (hi - lo) / 255.0;
    if !(scale > 0.0 && scale.is_finite()) {
        return (1.0, 0);
    }
    let zp = round_even(-128.0 - lo / scale).clamp(-128, 127);
    (scale, zp)
}

/// Quantizes `x` into `q` by the dynamic rule of [`dynamic_qparams`] and returns the
/// parameters it chose.
pub fn dynamic_quantize(x: &[f32], q: &mut [i8]) -> (f32, i32) {
    let (scale, zp) = dynamic_qparams(x);
    for (d, &v) in q.iter_mut().zip(x) {
        *d = quantize(v, scale, zp, -128, 127) as i8;
    }
    (scale, zp)
}

/// The float result of a hybrid product: the i32 sum converted to f32 (rounded to nearest)
/// times `input_scale * weight_scale`, two f32 roundings in this order on every backend.
#[inline]
pub fn dynamic_rescale(acc: i32, input_scale: f32, weight_scale: f32) -> f32 {
    acc as f32 * (input_scale * weight_scale)
}

/// Entries of a 16-bit lookup table: one per 128 steps of the int16 domain, both ends.
pub const LUT16_LEN: usize = 513;

/// TFLite's int16 function table: `table[j]` is the function at input `j * 128 - 32768`;
/// between entries the result is interpolated linearly in integers (rounding half up), so a
/// one-input function of an int16 costs 1 KiB of table instead of 128 KiB.
#[inline]
pub fn lut16(table: &[i16], x: i16) -> i16 {
    let u = x as i32 + 32768;
    let (j, f) = ((u >> 7) as usize, u & 127);
    let base = table[j] as i32;
    let delta = (table[j + 1] as i32 - base) * f;
    (base + ((delta + 64) >> 7)) as i16
}

/// Bytes that hold `n` weights of `bits` (8, 4 or 2) bits each.
pub const fn packed_len(n: usize, bits: u8) -> usize {
    (n * bits as usize).div_ceil(8)
}

/// Packs weights of `bits` bits, `8 / bits` to a byte, element `i` in bits
/// `(i % (8 / bits)) * bits` up (the low bits first), two's complement. `out` holds
/// [`packed_len`] bytes.
pub fn pack_weights(w: &[i8], bits: u8, out: &mut [u8]) {
    let per = (8 / bits) as usize;
    let mask = ((1u16 << bits) - 1) as u8;
    out.fill(0);
    for (i, &v) in w.iter().enumerate() {
        out[i / per] |= ((v as u8) & mask) << ((i % per) * bits as usize);
    }
}

/// Weight `i` of weights packed by [`pack_weights`].
#[inline]
pub fn packed_weight(p: &[u8], bits: u8, i: usize) -> i8 {
    let per = (8 / bits) as usize;
    let field = (p[i / per] >> ((i % per) * bits as usize)) as i32 & ((1 << bits) - 1);
    let sign = 1 << (bits - 1);
    ((field ^ sign) - sign) as i8
}

/// Integer to float: `(q - zero_point) * scale` in f32.
#[inline]
pub fn dequantize(q: i32, scale: f32, zero_point: i32) -> f32 {
    (q - zero_point) as f32 * scale
}

/// Rounded integer division of a pooling sum by the element count (positive), half to
/// even: the exact average rounded as ONNX Runtime's integer pooling does (a global average
/// over an even count meets exact halves often).
#[inline]
pub fn rounded_average(sum: i32, count: i32) -> i32 {
    let (q, r) = (sum / count, sum % count);
    let r2 = 2 * r.abs();
    if r2 > count || (r2 == count && q & 1 != 0) {
        q + if sum < 0 { -1 } else { 1 }
    } else {
        q
    }
}

/// TFLite's integer average: `sum / count` rounded half away from zero (its reference
/// average pool; [`rounded_average`] is ONNX Runtime's, half to even).
pub fn rounded_average_away(sum: i32, count: i32) -> i32 {
    let half = count / 2;
    if sum > 0 {
        (sum + half) / count
    } else {
        (sum - half) / count
    }
}

/// Longest softmax axis: the Q16 exponentials of a row must sum within i32.
pub const SOFTMAX_MAX_LEN: usize = 32767;

/// Integer softmax of one row into int8 probabilities with scale 1/256 and zero point -128.
/// `exp_table[d]` holds `round(exp(-scale_in * d) * 2^16)` for `d = max - x` in `0..=255`
/// (built at compile time); each output is `-128 + round(256 * e / sum)`, the division
/// rounded half up in 64-bit integers, clamped to 127.
pub fn softmax_i8(row: &[i8], exp_table: &[i32], out: &mut [i8]) {
    let max = row.iter().copied().max().unwrap_or(0) as i32;
    let sum: i64 = row.iter().map(|&x| exp_table[(max - x as i32) as usize] as i64).sum();
    for (o, &x) in out.iter_mut().zip(row) {
        let e = exp_table[(max - x as i32) as usize] as i64;
        let q = (e * 512 + sum) / (2 * sum);
        *o = (q - 128).min(127) as i8;
    }
}

/// Integer softmax of one int16 row (16x8 layers): the exponential of each difference from
/// the row's maximum, `d` input steps, is `hi[d >> 8] * lo[d & 255]` in Q30
/// ([`softmax16_tables`]: exp of a 256-step and of a one-step multiple, so exact to the
/// tables' rounding), and the result `e * 32768 / sum` rounded half up, saturated to 32767
/// (output scale 1/32768, zero point 0). Rows hold at most 65536 values.
pub fn softmax_i16(row: &[i16], hi: &[i32], lo: &[i32], out: &mut [i16]) {
    let max = row.iter().copied().max().unwrap_or(0) as i32;
    let e = |x: i16| {
        let d = (max - x as i32) as usize;
        (hi[d >> 8] as i64 * lo[d & 255] as i64 + (1 << 29)) >> 30
    };
    let sum: i64 = row.iter().map(|&x| e(x)).sum();
    for (o, &x) in out.iter_mut().zip(row) {
        *o = ((e(x) * 65536 + sum) / (2 * sum)).min(32767) as i16;
    }
}

/// The Q30 tables of [`softmax_i16`] for an input scale: `exp(-256 k scale)` and
/// `exp(-k scale)` for `k` in 0..256.
pub fn softmax16_tables(scale_in: f32) -> ([i32; 256], [i32; 256]) {
    let (mut hi, mut lo) = ([0i32; 256], [0i32; 256]);
    for k in 0..256 {
        let q30 = |x: f64| (exp_neg(x) * (1u64 << 30) as f64 + 0.5) as i32;
        hi[k] = q30(256.0 * k as f64 * scale_in as f64);
        lo[k] = q30(k as f64 * scale_in as f64);
    }
    (hi, lo)
}

/// The Q16 exponential table of [`softmax_i8`] for an input scale.
pub fn softmax_exp_table(scale_in: f32) -> [i32; 256] {
    let mut t = [0i32; 256];
    let step = exp_neg(scale_in as f64);
    let mut e = 1.0f64;
    for v in t.iter_mut() {
        *v = (e * 65536.0 + 0.5) as i32;
        e *= step;
    }
    t
}

/// `exp(-x)` for `x >= 0` without libm: halve until below 1/2, sum the Taylor series, square
/// back (the table keeps 16 fractional bits, far above the series' error).
fn exp_neg(x: f64) -> f64 {
    let mut k = 0;
    let mut r = x;
    while r > 0.5 {
        r *= 0.5;
        k += 1;
    }
    let (mut term, mut s) = (1.0, 1.0);
    for i in 1..20 {
        term *= -r / i as f64;
        s += term;
    }
    for _ in 0..k {
        s *= s;
    }
    s
}

/// Left shift applied to both inputs of an integer Add before rescaling, so that the two
/// rescaled operands keep 20 fractional bits (TFLite's int8 Add).
pub const ADD_LEFT_SHIFT: i32 = 20;

/// The left shift of an int16 Add (16x8 layers, zero points 0): 15 bits keep
/// `(x - zp) << 15` within i32 for every int16 `x`.
pub const ADD_LEFT_SHIFT_16: i32 = 15;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dynamic_ranges_keep_zero_exact_and_cover_the_values() {
        for values in [
            &[0.5f32, -1.25, 3.0, 0.0][..],
            &[2.0, 4.0, 8.0],
            &[-7.0, -0.5],
            &[1e-30, 0.0],
            &[0.0, 0.0],
            &[],
            &[f32::NAN, 1.0],
        ] {
            let (s, zp) = super::dynamic_qparams(values);
            assert!(s > 0.0 && (-128..=127).contains(&zp), "{values:?}");
            assert_eq!(super::quantize(0.0, s, zp, -128, 127), zp, "zero is exact: {values:?}");
            for &v in values.iter().filter(|v| !v.is_nan()) {
                let q = super::quantize(v, s, zp, -128, 127);
                let back = super::dequantize(q, s, zp);
                assert!(
                    (back - v).abs() <= s * 0.5 + s * 1e-3,
                    "{v} -> {q} -> {back} ({values:?})"
                );
            }
        }
        assert_eq!(super::dynamic_qparams(&[0.0, 0.0]), (1.0, 0));
        assert_eq!(super::dynamic_qparams(&[f32::INFINITY]), (1.0, 0));
    }

    #[test]
    fn packed_weights_round_trip() {
        let w4: [i8; 7] = [-7, 7, 0, -1, 3, -8, 5];
        let mut p = [0u8; packed_len(7, 4)];
        pack_weights(&w4, 4, &mut p);
        assert_eq!(p, [0x79, 0xF0, 0x83, 0x05]);
        for (i, &v) in w4.iter().enumerate() {
            assert_eq!(packed_weight(&p, 4, i), v);
        }
        let w2: [i8; 5] = [-1, 1, 0, -2, 1];
        let mut p = [0u8; packed_len(5, 2)];
        pack_weights(&w2, 2, &mut p);
        for (i, &v) in w2.iter().enumerate() {
            assert_eq!(packed_weight(&p, 2, i), v);
        }
        let mut p = [0u8; 2];
        pack_weights(&[-128, 127], 8, &mut p);
        assert_eq!((packed_weight(&p, 8, 0), packed_weight(&p, 8, 1)), (-128, 127));
    }

    #[test]
    fn known_values() {
        // 0.5 = 2^30 * 2^(0-31)
        assert_eq!(
            quantize_multiplier(0.5),
            Some(Requant {
                multiplier: 1 << 30,
                shift: 0
            })
        );
        assert_eq!(quantize_multiplier(1.0).unwrap().shift, 1);
        assert_eq!(quantize_multiplier(0.0).unwrap().multiplier, 0);
        assert_eq!(quantize_multiplier(-1.0), None);
        // 0.5 = 2^30 * 2^(0 - 31): halves round up
        let half = quantize_multiplier(0.5).unwrap();
        assert_eq!(multiply_by_quantized_multiplier(5, half), 3);
        assert_eq!(multiply_by_quantized_multiplier(-5, half), -2);
        assert_eq!(multiply_by_quantized_multiplier(-4, half), -2);
        assert_eq!(
            multiply_by_quantized_multiplier(i32::MAX, quantize_multiplier(4.0).unwrap()),
            i32::MAX
        );
        assert_eq!(
            multiply_by_quantized_multiplier(i32::MIN, quantize_multiplier(4.0).unwrap()),
            i32::MIN
        );
        for (y, r) in [
            (2.5, 2),
            (3.5, 4),
            (-2.5, -2),
            (-3.5, -4),
            (0.5, 0),
            (-0.5, 0),
            (1.5, 2),
            (2.4999998, 2),
            (2.5000002, 3),
        ] {
            assert_eq!(round_even(y), r, "{y}");
        }
        assert_eq!(round_even(f32::NAN), 0);
        assert_eq!(round_even(3.0e9), 1_000_000_000);
        assert_eq!(quantize(1000.0, 0.1, 3, -128, 127), 127);
        assert_eq!(rounded_average(-3, 2), -2);
        assert_eq!(rounded_average(3, 2), 2);
        assert_eq!(rounded_average(5, 2), 2);
        assert_eq!(rounded_average(-5, 2), -2);
        assert_eq!(rounded_average(7, 4), 2);
        assert_eq!(rounded_average(-7, 4), -2);
        assert_eq!(rounded_average(6, 4), 2);
        assert_eq!(rounded_average(10, 4), 2);
        assert_eq!(rounded_average(-10, 4), -2);
        assert_eq!(rounded_average(0, 3), 0);
    }
}

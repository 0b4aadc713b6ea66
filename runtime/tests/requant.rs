//! Property tests of the fixed-point contract against exact rational arithmetic.

use kiln_runtime::*;
use proptest::prelude::*;

proptest! {
    #[test]
    fn multiplier_reconstructs_the_real_factor(real in 1e-9f64..1e3) {
        let r = quantize_multiplier(real).unwrap();
        prop_assert!(r.multiplier >= 1 << 30);
        let back = r.multiplier as f64 * 2f64.powi(r.shift - 31);
        prop_assert!(((back - real) / real).abs() <= 2f64.powi(-31));
    }

    #[test]
    fn rescale_is_the_product_rounded_once(x in any::<i32>(), real in 1e-9f64..1e3) {
        // x * multiplier / 2^(31 - shift) rounded half up, saturated: exactly, in i128
        let r = quantize_multiplier(real).unwrap();
        let t = (31 - r.shift) as u32;
        let want = ((x as i128 * r.multiplier as i128 + (1i128 << (t - 1))) >> t).clamp(i32::MIN as i128, i32::MAX as i128);
        prop_assert_eq!(multiply_by_quantized_multiplier(x, r) as i128, want);
    }

    #[test]
    fn rescale_is_within_half_a_step_of_exact(x in -(1i32 << 24)..(1 << 24), real in 1e-6f64..0.999) {
        // One rounding: within half a step of the exact real product, plus the multiplier's
        // own 2^-31 relative error.
        let r = quantize_multiplier(real).unwrap();
        let got = multiply_by_quantized_multiplier(x, r) as f64;
        let exact = x as f64 * real;
        prop_assert!((got - exact).abs() <= 0.5 + (x as f64).abs() * real * 2f64.powi(-30), "{got} vs {exact}");
    }

    #[test]
    fn tflite_rescale_rounds_twice_as_tflite_writes_it(x in any::<i32>(), real in 1e-9f64..0.999) {
        // TFLite's two steps spelled out in i128: the doubling high multiply with its nudge,
        // C++'s truncating division, then RoundingDivideByPOT's mask and threshold
        let r = quantize_multiplier(real).unwrap();
        let (left, right) = (r.shift.max(0), (-r.shift).max(0));
        let a = x.wrapping_mul(1 << left) as i128;
        let ab = a * r.multiplier as i128;
        let nudge = if ab >= 0 { 1i128 << 30 } else { 1 - (1i128 << 30) };
        let v = (ab + nudge) / (1i128 << 31);
        let mask = (1i128 << right) - 1;
        let (rem, threshold) = (v & mask, (mask >> 1) + i128::from(v < 0));
        let want = (v >> right) + i128::from(rem > threshold);
        prop_assert_eq!(multiply_by_quantized_multiplier_tflite(x, r) as i128, want);
        // and it is at most one step from the single rounding
        let once = multiply_by_quantized_multiplier(x, r) as i128;
        prop_assert!((want - once).abs() <= 1);
    }

    #[test]
    fn tflite_average_rounds_half_away(sum in -100000i32..100000, count in 1i32..1000) {
        let exact = sum as f64 / count as f64;
        let want = if exact >= 0.0 { (exact + 0.5).floor() } else { (exact - 0.5).ceil() };
        prop_assert_eq!(rounded_average_away(sum, count) as f64, want);
    }

    #[test]
    fn blocked_total_is_shifted_once(total in -(3i64 << 61)..(3i64 << 61), shift in -31i32..=30) {
        // the bounded totals of a blocked product: the exact rounding half up, saturated
        let e = (31 - shift) as u32;
        let want = ((total as i128 + (1i128 << (e - 1))) >> e).clamp(i32::MIN as i128, i32::MAX as i128);
        prop_assert_eq!(rounding_shift_wide(total, shift) as i128, want);
    }

    #[test]
    fn int16_softmax_is_the_real_one_rounded(row in proptest::collection::vec(any::<i16>(), 1..64), scale in 1e-5f32..1e-2) {
        // exp from two Q30 tables is exact to ~2^-29: the output is the real softmax of the
        // int16 input rounded to 1/32768 (one step where 1.0 saturates to 32767)
        let (hi, lo) = softmax16_tables(scale);
        let mut out = vec![0i16; row.len()];
        softmax_i16(&row, &hi, &lo, &mut out);
        let max = *row.iter().max().unwrap() as f64;
        let e: Vec<f64> = row.iter().map(|&x| ((x as f64 - max) * scale as f64).exp()).collect();
        let sum: f64 = e.iter().sum();
        for (&y, &ei) in out.iter().zip(&e) {
            let want = ei / sum * 32768.0;
            let err = (y as f64 - want).abs();
            prop_assert!(err <= 0.5 + 1e-3 || (y == 32767 && want > 32766.5), "{y} vs {want}");
        }
    }

    #[test]
    fn round_even_matches_std(y in -1e9f32..1e9) {
        prop_assert_eq!(round_even(y) as f32, y.round_ties_even());
        let t = y.trunc();
        prop_assert_eq!(round_even(t + 0.5) as f32, (t + 0.5).round_ties_even());
    }

    #[test]
    fn quantize_saturates_and_rounds(x in -1e6f32..1e6, scale in 1e-4f32..10.0, zp in -128i32..128) {
        let q = quantize(x, scale, zp, -128, 127);
        prop_assert!((-128..=127).contains(&q));
        let y = x / scale;
        let r = round_even(y);
        // round_even saturates at ±1e9 (x / scale reaches 1e10 here)
        prop_assert_eq!(r as f32, y.round_ties_even().clamp(-1e9, 1e9));
        if (r + zp) >= -128 && (r + zp) <= 127 {
            prop_assert_eq!(q, r + zp);
        }
    }

    #[test]
    fn wide_rescale_rounds_half_up_with_a_16_bit_multiplier(x in -(1i64 << 46)..(1i64 << 46), real in 1e-9f64..127.0) {
        // The 16x8 rule: the multiplier rounded to 16 bits, one shift rounding half up.
        let r = quantize_multiplier(real).unwrap();
        prop_assume!((-31..=7).contains(&r.shift));
        let m16 = if r.multiplier < 0x7FFF_0000 { (r.multiplier as i128 + (1 << 15)) >> 16 } else { 0x7FFF };
        let total = (15 - r.shift) as u32;
        let num = x as i128 * m16;
        let want = (num + (1i128 << (total - 1))).div_euclid(1i128 << total);
        prop_assert_eq!(multiply_by_quantized_multiplier_wide(x, r) as i128, want);
        // and it stays close to the real product: 2^-15 relative from the multiplier, plus one step
        let exact = x as f64 * r.multiplier as f64 * 2f64.powi(r.shift - 31);
        let got = multiply_by_quantized_multiplier_wide(x, r) as f64;
        prop_assert!((got - exact).abs() <= 1.0 + exact.abs() * 2f64.powi(-15), "{got} vs {exact}");
    }

    #[test]
    fn average_rounds_half_to_even(sum in -100000i32..100000, count in 1i32..1000) {
        let want = round_div(sum as i64, count as i64);
        prop_assert_eq!(rounded_average(sum, count) as i64, want);
    }
}

/// `n / d` rounded half to even, from the exact quotient in f64 (exact for these sizes).
fn round_div(n: i64, d: i64) -> i64 {
    (n as f64 / d as f64).round_ties_even() as i64
}

#[test]
fn saturation_extremes() {
    let big = quantize_multiplier(1000.0).unwrap();
    assert_eq!(multiply_by_quantized_multiplier(i32::MAX, big), i32::MAX);
    assert_eq!(multiply_by_quantized_multiplier(i32::MIN, big), i32::MIN);
    assert_eq!(quantize(f32::INFINITY, 1.0, 0, -128, 127), 127);
    assert_eq!(quantize(f32::NEG_INFINITY, 1.0, 0, -128, 127), -128);
    assert!(quantize_multiplier(f64::NAN).is_none());
    assert_eq!(quantize_multiplier(1e-12).unwrap().multiplier, 0);
}

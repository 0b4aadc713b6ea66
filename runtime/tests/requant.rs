//! Property tests of the fixed-point contract against exact rational arithmetic.

use kiln_runtime::*;
use proptest::prelude::*;

/// `n / 2^k` rounded half away from zero, exactly.
fn round_div_pow2(n: i128, k: u32) -> i128 {
    let d = 1i128 << k;
    let q = n / d;
    let r = n % d;
    if 2 * r.abs() >= d { q + n.signum() } else { q }
}

proptest! {
    #[test]
    fn multiplier_reconstructs_the_real_factor(real in 1e-9f64..1e3) {
        let r = quantize_multiplier(real).unwrap();
        prop_assert!(r.multiplier >= 1 << 30);
        let back = r.multiplier as f64 * 2f64.powi(r.shift - 31);
        prop_assert!(((back - real) / real).abs() <= 2f64.powi(-31));
    }

    #[test]
    fn high_mul_is_the_rounded_product(a in any::<i32>(), b in any::<i32>()) {
        prop_assume!(!(a == i32::MIN && b == i32::MIN));
        let want = round_div_pow2(a as i128 * b as i128, 31);
        prop_assert_eq!(saturating_rounding_doubling_high_mul(a, b) as i128, want);
    }

    #[test]
    fn divide_by_pot_rounds_half_away(x in any::<i32>(), e in 0i32..31) {
        prop_assert_eq!(rounding_divide_by_pot(x, e) as i128, round_div_pow2(x as i128, e as u32));
    }

    #[test]
    fn rescale_is_within_one_step_of_exact(x in -(1i32 << 24)..(1 << 24), real in 1e-6f64..0.999) {
        // Two roundings (high mul, then shift) land within one step of the exact product.
        let r = quantize_multiplier(real).unwrap();
        let got = multiply_by_quantized_multiplier(x, r) as f64;
        let exact = x as f64 * r.multiplier as f64 * 2f64.powi(r.shift - 31);
        prop_assert!((got - exact).abs() <= 1.0, "{got} vs {exact}");
    }

    #[test]
    fn quantize_saturates_and_rounds(x in -1e6f32..1e6, scale in 1e-4f32..10.0, zp in -128i32..128) {
        let q = quantize(x, scale, zp, -128, 127);
        prop_assert!((-128..=127).contains(&q));
        let y = x / scale;
        let r = round_away(y);
        prop_assert!((r as f32 - y).abs() <= 0.5 || y.abs() > 1e9);
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
    fn average_rounds_half_away(sum in -100000i32..100000, count in 1i32..1000) {
        let want = round_div(sum as i64, count as i64);
        prop_assert_eq!(rounded_average(sum, count) as i64, want);
    }
}

fn round_div(n: i64, d: i64) -> i64 {
    let q = n / d;
    let r = n % d;
    if 2 * r.abs() >= d { q + n.signum() } else { q }
}

#[test]
fn saturation_extremes() {
    assert_eq!(saturating_rounding_doubling_high_mul(i32::MIN, i32::MIN), i32::MAX);
    assert_eq!(saturating_rounding_doubling_high_mul(i32::MAX, i32::MAX), i32::MAX - 1);
    assert_eq!(rounding_divide_by_pot(i32::MIN, 31), -1);
    assert_eq!(quantize(f32::INFINITY, 1.0, 0, -128, 127), 127);
    assert_eq!(quantize(f32::NEG_INFINITY, 1.0, 0, -128, 127), -128);
    assert!(quantize_multiplier(f64::NAN).is_none());
    assert_eq!(quantize_multiplier(1e-12).unwrap().multiplier, 0);
}

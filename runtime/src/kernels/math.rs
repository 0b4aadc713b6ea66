//! exp, sigmoid and tanh as the C and native backends compute them (Cephes-style reductions
//! and polynomials), so the three code generators agree and need no libm. The
//! constants are spelled exactly as in the C prelude.
#![allow(clippy::excessive_precision, clippy::approx_constant)]

#[inline]
fn nearby(x: f32) -> f32 {
    // round half to even for |x| < 2^23 (exp's range reduction only needs small x)
    const BIG: f32 = 8388608.0;
    let a = if x < 0.0 { -x } else { x };
    if a.is_nan() || a >= BIG {
        return x;
    }
    let r = (a + BIG) - BIG;
    if x < 0.0 { -r } else { r }
}

/// e^x: Cody-Waite reduction by ln 2 and a degree-6 polynomial; max relative error 2 ULP
/// over the normal range.
pub fn exp(x: f32) -> f32 {
    if x.is_nan() {
        return x;
    }
    if x > 88.72283 {
        return f32::INFINITY;
    }
    let xc = if x < -87.33654 { -87.33654 } else { x };
    let n = nearby(xc * 1.44269504);
    let r = xc - n * 0.693359375;
    let r = r - n * -2.12194440e-4;
    let mut p = 1.9875691500e-4;
    p = p * r + 1.3981999507e-3;
    p = p * r + 8.3334519073e-3;
    p = p * r + 4.1665795894e-2;
    p = p * r + 1.6666665459e-1;
    p = p * r + 5.0000001201e-1;
    p = p * (r * r) + r + 1.0;
    let e = n as i32;
    if e >= 128 {
        return p * f32::from_bits(((127 + 127) as u32) << 23) * 2.0;
    }
    p * f32::from_bits(((e + 127) as u32) << 23)
}

/// 1 / (1 + e^-x) from e^-|x|, which never overflows.
pub fn sigmoid(x: f32) -> f32 {
    if x.is_nan() {
        return x;
    }
    let e = exp(-x.abs());
    let d = 1.0 + e;
    if x >= 0.0 { 1.0 / d } else { e / d }
}

/// tanh: an odd polynomial below 0.625, `1 - 2 / (e^2|x| + 1)` above.
pub fn tanh(x: f32) -> f32 {
    let a = x.abs();
    if a < 0.625 {
        let z = x * x;
        let mut p = -5.70498872745e-3;
        p = p * z + 2.06390887954e-2;
        p = p * z - 5.37397155531e-2;
        p = p * z + 1.33314422036e-1;
        p = p * z - 3.33332819422e-1;
        return p * z * x + x;
    }
    let r = 1.0 - 2.0 / (exp(a + a) + 1.0);
    if x < 0.0 { -r } else { r }
}

/// The larger of `a` and `b`, NaN if either is (as the C backend's `kiln_maxf`).
#[inline]
#[allow(clippy::eq_op)]
pub fn max(a: f32, b: f32) -> f32 {
    if a != a || b != b {
        a + b
    } else if a > b {
        a
    } else {
        b
    }
}

/// The smaller of `a` and `b`, NaN if either is.
#[inline]
#[allow(clippy::eq_op)]
pub fn min(a: f32, b: f32) -> f32 {
    if a != a || b != b {
        a + b
    } else if a < b {
        a
    } else {
        b
    }
}

#[cfg(test)]
mod tests {
    extern crate std;

    #[test]
    fn close_to_libm() {
        let mut x = -20.0f32;
        while x < 20.0 {
            let rel = |a: f32, b: f32| ((a - b) / b).abs();
            assert!(rel(super::exp(x), x.exp()) < 4e-7, "exp({x})");
            assert!((super::tanh(x) - x.tanh()).abs() < 4e-7, "tanh({x})");
            assert!(
                (super::sigmoid(x) - 1.0 / (1.0 + (-x).exp())).abs() < 4e-7,
                "sigmoid({x})"
            );
            x += 0.01;
        }
        assert_eq!(super::exp(100.0), f32::INFINITY);
        assert!(super::exp(f32::NAN).is_nan());
    }
}

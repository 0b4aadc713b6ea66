//! Slice kernels for generated Rust source. A generated module is a static schedule of calls
//! into these functions with every shape a constant, over `static` weights and one caller
//! arena; nothing here allocates, so it links into `no_std` firmware.
//!
//! Each kernel reproduces the reference evaluator's order of operations (float sums run in
//! the same index order; integer kernels call the fixed-point contract of the crate root), so
//! integer results are bit-exact and float results differ only where Kiln's own exp/tanh
//! approximations ([`math`]) stand in for libm.

pub mod float;
pub mod index;
pub mod int;
pub mod layout;
pub mod math;
pub mod mcu;
pub mod reduce;
pub mod rnn;

pub use float::max_pool;
pub use layout::{
    PadMode, ResizeAxis, copy_nd, for_each_nd, gather, gather_elements, map, pad, resize, trilu, zip_nd, zip3_nd,
};

/// An IEEE binary16 weight (its bit pattern), widened exactly to f32 when read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(transparent)]
pub struct F16(pub u16);

/// Binary16 constants from their bit patterns, for generated `static`s.
pub const fn f16s<const N: usize>(bits: [u16; N]) -> [F16; N] {
    let mut out = [F16(0); N];
    let mut i = 0;
    while i < N {
        out[i] = F16(bits[i]);
        i += 1;
    }
    out
}

/// A weight element the float kernels read: f32, or binary16 widened on the fly.
pub trait Weight: Copy {
    fn f32(self) -> f32;
}

impl Weight for f32 {
    #[inline]
    fn f32(self) -> f32 {
        self
    }
}

impl Weight for F16 {
    /// Exact: every binary16 value is an f32.
    #[inline]
    fn f32(self) -> f32 {
        let h = self.0 as u32;
        let (s, e, m) = ((h & 0x8000) << 16, (h >> 10) & 0x1f, h & 0x3ff);
        let u = if e == 0x1f {
            s | 0x7f80_0000 | (m << 13)
        } else if e != 0 {
            s | ((e + 112) << 23) | (m << 13)
        } else if m != 0 {
            // subnormal: shift the leading one up to the implicit bit
            let k = m.leading_zeros() - 21;
            s | ((113 - k) << 23) | (((m << k) & 0x3ff) << 13)
        } else {
            s
        };
        f32::from_bits(u)
    }
}

/// A binary16 value (its bit pattern, as generated code stores it) widened to f32, exactly.
#[inline]
pub fn h2f(h: u16) -> f32 {
    F16(h).f32()
}

/// `v` rounded to the nearest binary16 (ties to even), as its bit pattern: the evaluator's
/// `f16::from_f64`, rounding once from f64.
pub fn d2h(v: f64) -> u16 {
    let u = v.to_bits();
    let s = ((u >> 48) & 0x8000) as u16;
    let e = ((u >> 52) & 0x7ff) as i32 - 1023 + 15;
    let m = u & ((1u64 << 52) - 1);
    if e == 0x7ff - 1023 + 15 {
        return s | 0x7c00 | if m != 0 { 0x200 } else { 0 };
    }
    if e >= 31 {
        return s | 0x7c00;
    }
    let (q, rem, half) = if e <= 0 {
        let shift = 43 - e;
        if shift > 53 {
            return s;
        }
        let m = m | (1u64 << 52);
        (m >> shift, m & ((1u64 << shift) - 1), 1u64 << (shift - 1))
    } else {
        ((e as u64) << 10 | m >> 42, m & ((1u64 << 42) - 1), 1u64 << 41)
    };
    let q = if rem > half || (rem == half && q & 1 == 1) {
        q + 1
    } else {
        q
    };
    s | q as u16
}

/// Element types that convert through f64 as the evaluator's casts do (`as`: rounding to
/// floats, saturating into integers with NaN to 0).
pub trait Num: Copy + PartialOrd {
    fn to_f64(self) -> f64;
    fn from_f64(v: f64) -> Self;
}

macro_rules! num {
    ($($t:ty),*) => {$(
        impl Num for $t {
            #[inline]
            fn to_f64(self) -> f64 {
                self as f64
            }
            #[inline]
            fn from_f64(v: f64) -> Self {
                v as $t
            }
        }
    )*};
}
num!(f32, f64, i8, u8, i16, u16, i32, u32, i64, u64);

/// Binary16 activations are stored as their bit patterns; read as weights they widen too.
impl Weight for u16 {
    #[inline]
    fn f32(self) -> f32 {
        F16(self).f32()
    }
}

/// Plain element types a kernel may view arena bytes as.
pub trait Elem: bytemuck::Pod {}
impl Elem for f32 {}
impl Elem for f64 {}
impl Elem for i8 {}
impl Elem for u8 {}
impl Elem for i16 {}
impl Elem for u16 {}
impl Elem for i32 {}
impl Elem for u32 {}
impl Elem for i64 {}
impl Elem for u64 {}

/// Arena bytes as elements. The generated code only asks for ranges the memory plan aligned
/// to the element size, so the checked cast cannot fail there.
#[inline]
pub fn view<T: Elem>(bytes: &[u8]) -> &[T] {
    bytemuck::cast_slice(bytes)
}

/// Mutable [`view`].
#[inline]
pub fn view_mut<T: Elem>(bytes: &mut [u8]) -> &mut [T] {
    bytemuck::cast_slice_mut(bytes)
}

/// A 1-D or 2-D window seen as 2-D (a 1-D window is one row): input and output extents,
/// kernel, strides, dilations and leading pads. Every backend's windowed kernels loop over it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Plane {
    pub h: usize,
    pub w: usize,
    pub oh: usize,
    pub ow: usize,
    pub kh: usize,
    pub kw: usize,
    pub sh: usize,
    pub sw: usize,
    pub dh: usize,
    pub dw: usize,
    pub ph: usize,
    pub pw: usize,
}

impl Plane {
    /// Output rows `[lo, hi)` whose kernel row `kh` lands inside the input.
    #[inline]
    pub fn rows_reached(&self, kh: usize) -> (usize, usize) {
        span(kh * self.dh, self.sh, self.ph, self.h, self.oh)
    }

    /// Output columns `[lo, hi)` whose kernel column `kw` lands inside the input.
    #[inline]
    pub fn cols_reached(&self, kw: usize) -> (usize, usize) {
        span(kw * self.dw, self.sw, self.pw, self.w, self.ow)
    }

    /// The same window with its rows run as one long row where that reads the same elements:
    /// a column plane (`w == 1`) becomes a row, and a 1x1 stride-1 window without padding
    /// covers the plane as one row. Kernels then loop over long contiguous rows.
    pub fn flattened(self) -> Plane {
        let p = self;
        if p.kh == 1 && p.kw == 1 && p.sh == 1 && p.sw == 1 && p.ph == 0 && p.pw == 0 && p.oh == p.h && p.ow == p.w {
            let n = p.h * p.w;
            return Plane {
                h: 1,
                w: n,
                oh: 1,
                ow: n,
                ..p
            };
        }
        if p.w == 1 && p.ow == 1 && p.kw == 1 && p.pw == 0 {
            return Plane {
                h: 1,
                w: p.h,
                oh: 1,
                ow: p.oh,
                kh: 1,
                kw: p.kh,
                sh: 1,
                sw: p.sh,
                dh: 1,
                dw: p.dh,
                ph: 0,
                pw: p.ph,
            };
        }
        p
    }

    /// Kernel rows `[lo, hi)` that land inside the input at output row `oy`.
    #[inline]
    pub fn taps_y(&self, oy: usize) -> (usize, usize) {
        span(oy * self.sh, self.dh, self.ph, self.h, self.kh)
    }

    /// Kernel columns `[lo, hi)` that land inside the input at output column `ox`.
    #[inline]
    pub fn taps_x(&self, ox: usize) -> (usize, usize) {
        span(ox * self.sw, self.dw, self.pw, self.w, self.kw)
    }

    /// The input offset (row-major `h x w`) read by tap `(ky, kx)` at output `(oy, ox)`, or
    /// `None` in the padding.
    #[inline]
    pub fn tap(&self, oy: usize, ox: usize, ky: usize, kx: usize) -> Option<usize> {
        let iy = (oy * self.sh + ky * self.dh).checked_sub(self.ph)?;
        let ix = (ox * self.sw + kx * self.dw).checked_sub(self.pw)?;
        (iy < self.h && ix < self.w).then_some(iy * self.w + ix)
    }
}

/// The `i < count` with `0 <= base + i * step - pad < n`, as `[lo, hi)`: the output
/// positions a kernel tap reaches, or the kernel taps an output position reads.
#[inline]
fn span(base: usize, step: usize, pad: usize, n: usize, count: usize) -> (usize, usize) {
    let lo = if pad > base { (pad - base).div_ceil(step) } else { 0 };
    let hi = if n + pad > base {
        ((n - 1 + pad - base) / step + 1).min(count)
    } else {
        0
    };
    if lo < hi { (lo, hi) } else { (0, 0) }
}

/// Batch, channels and window of a convolution.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvShape {
    pub batch: usize,
    pub cin: usize,
    pub cout: usize,
    pub group: usize,
    pub plane: Plane,
}

/// Float functions without a `core` form (sqrt, log, erf, trigonometry, rounding).
pub use libm;

#[cfg(test)]
mod tests {
    use super::{F16, Plane, Weight, d2h, h2f};

    /// Rounding to binary16: every value round-trips, halfway points go to the even
    /// neighbour and anything off the midpoint to the nearer one, overflow to infinity.
    #[test]
    fn binary16_rounding_is_to_nearest_even() {
        for bits in 0..0x7c00u16 {
            let v = h2f(bits) as f64;
            assert_eq!(d2h(v), bits, "{v}");
            assert_eq!(d2h(-v), bits | 0x8000, "{v}");
            let next = if bits == 0x7bff { 65536.0 } else { h2f(bits + 1) as f64 };
            let mid = (v + next) / 2.0;
            let even = if bits & 1 == 0 { bits } else { bits + 1 };
            let even = if even == 0x7c00 { 0x7c00 } else { even };
            assert_eq!(d2h(mid), even, "midpoint of {bits:#x}");
            let step = (next - v) / 1024.0;
            assert_eq!(d2h(mid - step), bits, "below the midpoint of {bits:#x}");
            assert_eq!(
                d2h(mid + step),
                (bits + 1).min(0x7c00),
                "above the midpoint of {bits:#x}"
            );
        }
        assert_eq!(d2h(f64::INFINITY), 0x7c00);
        assert_eq!(d2h(1.0e6), 0x7c00);
        assert!(h2f(d2h(f64::NAN)).is_nan());
        assert_eq!(d2h(1.0e-30), 0);
    }

    /// Every binary16 pattern widens to the value the `half` crate's reference gives.
    #[test]
    fn binary16_widening_is_exact() {
        for bits in 0..=u16::MAX {
            let want = half_reference(bits);
            let got = F16(bits).f32();
            assert!(
                got.to_bits() == want.to_bits() || (got.is_nan() && want.is_nan()),
                "{bits:#x}: {got} vs {want}"
            );
        }
    }

    /// binary16 by its definition: (-1)^s * 2^(e-15) * 1.m, or 2^-14 * 0.m when e = 0.
    fn half_reference(bits: u16) -> f32 {
        let s = if bits & 0x8000 != 0 { -1.0f64 } else { 1.0 };
        let e = ((bits >> 10) & 0x1f) as i32;
        let m = (bits & 0x3ff) as f64;
        let v = match e {
            0 => m / 1024.0 * 2f64.powi(-14),
            31 if m == 0.0 => f64::INFINITY,
            31 => f64::NAN,
            _ => (1.0 + m / 1024.0) * 2f64.powi(e - 15),
        };
        (s * v) as f32
    }

    /// The closed-form ranges agree with testing every position, over many geometries.
    #[test]
    fn reach_ranges_match_brute_force() {
        let inside = |o: usize, s: usize, k: usize, d: usize, p: usize, h: usize| {
            let pos = (o * s + k * d) as i64 - p as i64;
            pos >= 0 && pos < h as i64
        };
        let cases: [(usize, usize, usize, usize, usize); 7] = [
            (5, 3, 1, 1, 1),
            (7, 3, 2, 1, 0),
            (4, 5, 1, 1, 3),
            (9, 3, 3, 2, 2),
            (1, 3, 1, 1, 1),
            (3, 1, 2, 1, 4),
            (6, 4, 3, 1, 3),
        ];
        for (h, k, s, d, p) in cases {
            let oh = (h + 2 * p).saturating_sub(d * (k - 1) + 1) / s + 1;
            let pl = Plane {
                h,
                w: h,
                oh,
                ow: oh,
                kh: k,
                kw: k,
                sh: s,
                sw: s,
                dh: d,
                dw: d,
                ph: p,
                pw: p,
            };
            let run = |f: &dyn Fn(usize) -> bool, n: usize| {
                let lo = (0..n).find(|&i| f(i)).unwrap_or(0);
                let hi = (lo..n).take_while(|&i| f(i)).last().map_or(lo, |i| i + 1);
                assert!((hi..n).all(|i| !f(i)), "not contiguous");
                (lo, hi)
            };
            for o in 0..oh {
                assert_eq!(
                    pl.taps_y(o),
                    run(&|t| inside(o, s, t, d, p, h), k),
                    "taps h={h} k={k} s={s} d={d} p={p} o={o}"
                );
                assert_eq!(pl.taps_x(o), pl.taps_y(o));
            }
            for t in 0..k {
                assert_eq!(
                    pl.rows_reached(t),
                    run(&|o| inside(o, s, t, d, p, h), oh),
                    "reach h={h} k={k} s={s} d={d} p={p} t={t}"
                );
                assert_eq!(pl.cols_reached(t), pl.rows_reached(t));
            }
        }
    }
}

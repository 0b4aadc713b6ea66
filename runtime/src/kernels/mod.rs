//! Slice kernels for generated Rust source. A generated module is a static schedule of calls
//! into these functions with every shape a constant, over `static` weights and one caller
//! arena; nothing here allocates, so it links into `no_std` firmware.
//!
//! Each kernel reproduces the reference evaluator's order of operations (float sums run in
//! the same index order; integer kernels call the fixed-point contract of the crate root), so
//! integer results are bit-exact and float results differ only where Kiln's own exp/tanh
//! approximations ([`math`]) stand in for libm.

pub mod float;
pub mod int;
pub mod layout;
pub mod math;

pub use float::max_pool;
pub use layout::{PadMode, copy_nd, for_each_nd, gather, map, pad, zip_nd};

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
    pub fn rows_reached(&self, kh: usize) -> (usize, usize) {
        reached(self.h, self.oh, kh, self.sh, self.dh, self.ph)
    }

    /// Output columns `[lo, hi)` whose kernel column `kw` lands inside the input.
    pub fn cols_reached(&self, kw: usize) -> (usize, usize) {
        reached(self.w, self.ow, kw, self.sw, self.dw, self.pw)
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

/// Output positions `[lo, hi)` along one axis whose tap `k` reads inside `0..input`.
fn reached(input: usize, out: usize, k: usize, s: usize, d: usize, p: usize) -> (usize, usize) {
    let ok = |o: usize| (0..input as i64).contains(&((o * s + k * d) as i64 - p as i64));
    match (0..out).find(|&o| ok(o)) {
        Some(lo) => (lo, (lo..out).take_while(|&o| ok(o)).last().map_or(lo, |h| h + 1)),
        None => (0, 0),
    }
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

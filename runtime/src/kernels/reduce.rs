//! Reductions as the evaluator computes them: each output accumulates its inputs in index
//! order in f64 and is rounded once at the end.

use super::Num;
use super::layout::for_each_nd;

/// Which reduction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reduce {
    Sum,
    Mean,
    Max,
    Min,
    Prod,
    L1,
    L2,
    SumSquare,
    LogSum,
    LogSumExp,
}

/// Reduces `x` (row-major, `strides` per axis) to `y`: `kept` is the input shape with the
/// reduced axes set to 1 and `reduced` the reverse, so outputs run in the order of `kept`.
pub fn reduce<T: Num>(x: &[T], strides: &[isize], kept: &[usize], reduced: &[usize], y: &mut [T], kind: Reduce) {
    let count: usize = reduced.iter().product();
    let mut o = 0;
    for_each_nd(kept, [0], [strides], |[base]| {
        let each = |f: &mut dyn FnMut(f64)| for_each_nd(reduced, [base], [strides], |[i]| f(x[i].to_f64()));
        let shift = if kind == Reduce::LogSumExp {
            let mut m = f64::NEG_INFINITY;
            each(&mut |v| m = m.max(v));
            if m.is_finite() { m } else { 0.0 }
        } else {
            0.0
        };
        let mut a = match kind {
            Reduce::Max => f64::NEG_INFINITY,
            Reduce::Min => f64::INFINITY,
            Reduce::Prod => 1.0,
            _ => 0.0,
        };
        each(&mut |v| {
            a = match kind {
                Reduce::Sum | Reduce::Mean | Reduce::LogSum => a + v,
                Reduce::Max => {
                    if v.is_nan() || v > a {
                        v
                    } else {
                        a
                    }
                }
                Reduce::Min => {
                    if v.is_nan() || v < a {
                        v
                    } else {
                        a
                    }
                }
                Reduce::Prod => a * v,
                Reduce::L1 => a + v.abs(),
                Reduce::L2 | Reduce::SumSquare => a + v * v,
                Reduce::LogSumExp => a + libm::exp(v - shift),
            }
        });
        a = match kind {
            Reduce::Mean => a / count as f64,
            Reduce::L2 => libm::sqrt(a),
            Reduce::LogSum => libm::log(a),
            Reduce::LogSumExp => libm::log(a) + shift,
            _ => a,
        };
        y[o] = T::from_f64(a);
        o += 1;
    });
}

/// Index of the largest (`max`) or smallest element along the middle axis of
/// `[outer, len, inner]`; ties go to the first, or with `last` to the last.
pub fn arg<T: Copy + PartialOrd>(
    x: &[T],
    y: &mut [i64],
    outer: usize,
    len: usize,
    inner: usize,
    max: bool,
    last: bool,
) {
    for o in 0..outer {
        for i in 0..inner {
            let at = |j: usize| x[(o * len + j) * inner + i];
            let mut best = 0usize;
            for j in 1..len {
                let (v, b) = (at(j), at(best));
                let better = if max { v > b } else { v < b };
                if better || (last && v == b) {
                    best = j;
                }
            }
            y[o * inner + i] = best as i64;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mean_over_the_middle_axis() {
        // x [2, 3, 2] reduced over axis 1
        let x: [f32; 12] = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0, 11.0, 12.0];
        let mut y = [0.0f32; 4];
        reduce(&x, &[6, 2, 1], &[2, 1, 2], &[1, 3, 1], &mut y, Reduce::Mean);
        assert_eq!(y, [3.0, 4.0, 9.0, 10.0]);
        let mut a = [0i64; 4];
        arg(&x, &mut a, 2, 3, 2, true, false);
        assert_eq!(a, [2, 2, 2, 2]);
    }
}

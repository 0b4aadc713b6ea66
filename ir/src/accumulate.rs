//! Accumulator-range analysis: for each integer convolution or product, a proven bound of
//! every partial sum its kernel can form, and the narrowest accumulator that holds it.
//!
//! Kernels add the bias and the products `(x - zp) * w` in whatever order suits the part
//! (pairs for `SMLAD`, blocks, the bias first or last), and padded taps add nothing. So the
//! bound holds for any subset of the terms: each term contributes between `min(term, 0)` and
//! `max(term, 0)`, with `x` anywhere in its storage type. A backend may pick a 16-bit or
//! 24-bit accumulator where the bound fits: the same sums, the same bytes.

use crate::dtype::Scalar;
use crate::graph::{Graph, NodeId};
use crate::op::Op;

/// The closed range every partial sum of one output channel lies in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SumRange {
    pub min: i64,
    pub max: i64,
}

impl SumRange {
    /// The narrowest of 16, 24 and 32 signed bits that holds the range (64 when none does).
    pub fn bits(&self) -> u32 {
        [16, 24, 32]
            .into_iter()
            .find(|&b| self.min >= -(1i64 << (b - 1)) && self.max < (1i64 << (b - 1)))
            .unwrap_or(64)
    }

    fn union(self, o: SumRange) -> SumRange {
        SumRange {
            min: self.min.min(o.min),
            max: self.max.max(o.max),
        }
    }
}

/// Per output channel, the range of the partial sums of integer node `n` (`QConv` or
/// `QMatMul` with constant weights and bias); `None` for other nodes.
pub fn channel_ranges(g: &Graph, n: NodeId) -> Option<Vec<SumRange>> {
    let node = g.node(n);
    let (zp, rows): (i32, Vec<Vec<i64>>) = match &node.op {
        Op::QConv { q, .. } => {
            let w = g.const_value(node.inputs[1])?;
            let m = w.shape[0];
            let per = w.numel() / m.max(1);
            (
                q.input_zp,
                w.to_i64_vec().chunks(per.max(1)).map(<[i64]>::to_vec).collect(),
            )
        }
        Op::QMatMul { q } => {
            let w = g.const_value(node.inputs[1])?;
            let (k, nn) = (w.shape[0], w.shape[1]);
            let v = w.to_i64_vec();
            (
                q.input_zp,
                (0..nn).map(|j| (0..k).map(|i| v[i * nn + j]).collect()).collect(),
            )
        }
        _ => return None,
    };
    let (lo, hi) = match g.value(node.inputs[0]).ty.dtype.scalar {
        Scalar::I8 => (-128i64, 127i64),
        Scalar::U8 => (0, 255),
        Scalar::I16 => (-32768, 32767),
        _ => return None,
    };
    let (dlo, dhi) = (lo - i64::from(zp), hi - i64::from(zp));
    let bias = match node.inputs.get(2) {
        Some(&b) => g.const_value(b)?.to_i64_vec(),
        None => vec![0; rows.len()],
    };
    Some(
        rows.iter()
            .zip(&bias)
            .map(|(row, &b)| {
                let (mut min, mut max) = (b.min(0), b.max(0));
                for &w in row {
                    let (a, c) = (w * dlo, w * dhi);
                    min += a.min(c).min(0);
                    max += a.max(c).max(0);
                }
                SumRange { min, max }
            })
            .collect(),
    )
}

/// The range over all output channels of node `n`.
pub fn node_range(g: &Graph, n: NodeId) -> Option<SumRange> {
    channel_ranges(g, n)?.into_iter().reduce(SumRange::union)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dtype::{DType, QParams, TensorType};
    use crate::op::{QLinear, Requant, Window};
    use crate::tensor::Tensor;
    use std::sync::Arc;

    fn qlinear(zp: i32) -> QLinear {
        QLinear {
            input_zp: zp,
            output_scale: 1.0,
            output_zp: 0,
            requant: Arc::from(vec![Requant {
                multiplier: 1 << 30,
                shift: -8,
            }]),
            act_min: -128,
            act_max: 127,
            weight_bits: 8,
            numerics: Default::default(),
        }
    }

    fn qtype(shape: Vec<usize>, zp: i32) -> TensorType {
        TensorType {
            shape,
            dtype: DType::quantized(
                Scalar::I8,
                QParams::PerTensor {
                    scale: 1.0,
                    zero_point: zp,
                },
            ),
        }
    }

    /// A padded 3x3 convolution over `c` int8 channels with every weight `w`, one output.
    fn conv(c: usize, w: i8, zp: i32, bias: i32) -> (Graph, NodeId) {
        let mut g = Graph::new("t");
        let x = g.add_input("x", qtype(vec![1, c, 5, 5], zp));
        let wv = g.add_const("w", Tensor::from_vec(vec![1, c, 3, 3], vec![w; c * 9]));
        let bv = g.add_const("b", Tensor::from_vec(vec![1], vec![bias]));
        let op = Op::QConv {
            window: Window {
                kernel: vec![3, 3],
                strides: vec![1, 1],
                dilations: vec![1, 1],
                pads: vec![1, 1, 1, 1],
            },
            group: 1,
            q: qlinear(zp),
        };
        let (n, _) = g.add_node_typed("c", op, vec![x, wv, bv], vec![("y".into(), qtype(vec![1, 1, 5, 5], 0))]);
        (g, n)
    }

    /// A `[1, k] x [k, 1]` int8 product.
    fn matmul(w: &[i8], zp: i32, bias: i32) -> (Graph, NodeId) {
        let mut g = Graph::new("t");
        let k = w.len();
        let x = g.add_input("x", qtype(vec![1, k], zp));
        let wv = g.add_const("w", Tensor::from_vec(vec![k, 1], w.to_vec()));
        let bv = g.add_const("b", Tensor::from_vec(vec![1], vec![bias]));
        let (n, _) = g.add_node_typed(
            "m",
            Op::QMatMul { q: qlinear(zp) },
            vec![x, wv, bv],
            vec![("y".into(), qtype(vec![1, 1], 0))],
        );
        (g, n)
    }

    #[test]
    fn a_small_layer_fits_sixteen_bits() {
        let (g, n) = conv(1, 3, -128, 100);
        let r = node_range(&g, n).unwrap();
        // 9 taps of 3 * (x + 128), each in 0..=765, plus the bias 100.
        assert_eq!(
            r,
            SumRange {
                min: 0,
                max: 9 * 765 + 100
            }
        );
        assert_eq!(r.bits(), 16);
    }

    #[test]
    fn weights_that_would_overflow_int16_are_not_narrowed() {
        // 16 channels x 9 taps x 127 x 255 = 4.66e6: beyond int16, within 24 bits.
        let (g, n) = conv(16, 127, -128, 0);
        let r = node_range(&g, n).unwrap();
        assert!(r.max > i64::from(i16::MAX), "{r:?}");
        assert_eq!(r.bits(), 24);
        // Negative weights and a zero point of 0: each tap reaches -128 * 127 and 128 * 128.
        let (g, n) = conv(2, -128, 0, -5);
        let r = node_range(&g, n).unwrap();
        assert_eq!(
            r,
            SumRange {
                min: -5 + 18 * -128 * 127,
                max: 18 * 128 * 128
            }
        );
        assert_eq!(r.bits(), 24);
    }

    #[test]
    fn every_partial_sum_of_random_products_lies_in_the_range() {
        let mut s = 0x1234_5678u32;
        let mut next = move || {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            s
        };
        for _ in 0..200 {
            let taps = 1 + (next() % 40) as usize;
            let zp = (next() % 256) as i32 - 128;
            let w: Vec<i8> = (0..taps).map(|_| (next() % 256) as i32 as u8 as i8).collect();
            let bias = (next() % 20001) as i32 - 10000;
            let (g, n) = matmul(&w, zp, bias);
            let r = channel_ranges(&g, n).unwrap()[0];
            // Any order, any subset (padding), the bias first or not at all.
            for _ in 0..20 {
                let mut acc = if next() % 2 == 0 { i64::from(bias) } else { 0 };
                for &wv in &w {
                    if next() % 4 == 0 {
                        continue;
                    }
                    let x = (next() % 256) as i64 - 128;
                    acc += (x - i64::from(zp)) * i64::from(wv);
                    assert!((r.min..=r.max).contains(&acc), "{acc} outside {r:?}");
                }
            }
            // The bound is reached: all inputs at the extreme that maximises each term.
            let top: i64 = i64::from(bias.max(0))
                + w.iter()
                    .map(|&wv| {
                        (i64::from(wv) * (-128 - i64::from(zp)))
                            .max(i64::from(wv) * (127 - i64::from(zp)))
                            .max(0)
                    })
                    .sum::<i64>();
            assert_eq!(r.max, top);
        }
    }
}

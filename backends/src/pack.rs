//! Weight layouts for the microcontroller int8 kernels, decided once for every backend that
//! runs them: the Cortex-M ones (the C backend's `c::mcu`, the Rust-source backend's
//! `kiln_runtime::kernels::mcu`) and the AVR ones (`c::avr`, see [`avr_product`]): which
//! nodes use them, and the order their weight constants are stored in. Only the order
//! changes (patch rows gain at most three zero bytes, packed AVR rows at most half a byte),
//! so flash stays the same.

use kiln_ir::{Graph, NodeId, Op, Scalar, ValueId};

fn shape(g: &Graph, v: ValueId) -> &[usize] {
    &g.value(v).ty.shape
}

/// The values of weight constant `v` as its kernel reads them, when that differs from the
/// graph's order (the kernels of this module that own their weights).
pub fn const_values(g: &Graph, v: ValueId) -> Option<Vec<i64>> {
    let n = *g.consumers(v).first()?;
    if g.node(n).inputs.get(2) == Some(&v) && dense_bias_folded(g, n) {
        return dense_bias(g, n);
    }
    if g.node(n).inputs.get(1) != Some(&v) {
        return None;
    }
    if packed_patch(g, n) {
        patch_weights(g, n)
    } else if packed_dense(g, n) {
        dense_weights(g, n)
    } else {
        None
    }
}

/// Whether constant `v` is the weight of a [`packed_dense`] node: the Rust-source backend
/// stores those as little-endian words (aligned, so pairs load as one `LDRD`).
pub fn dense_weight(g: &Graph, v: ValueId) -> bool {
    g.consumers(v)
        .first()
        .is_some_and(|&n| g.node(n).inputs.get(1) == Some(&v) && packed_dense(g, n))
}

/// Bytes (int8 values) as little-endian 32-bit words; `b.len()` is a multiple of four.
pub fn words(b: &[i64]) -> Vec<u32> {
    b.chunks_exact(4)
        .map(|c| u32::from_le_bytes([c[0] as u8, c[1] as u8, c[2] as u8, c[3] as u8]))
        .collect()
}

/// Largest im2col patch (taps per output) kept on the stack as int16 (two of them).
pub const MAX_PATCH: usize = 1024;

/// Whether node `n` is a one-group int8 convolution (pointwise included) whose weights
/// are stored in patch order (a constant read by this node alone).
pub fn packed_patch(g: &Graph, n: NodeId) -> bool {
    let node = g.node(n);
    let Op::QConv { group, q, .. } = &node.op else {
        return false;
    };
    let xs = shape(g, node.inputs[0]);
    let ws = shape(g, node.inputs[1]);
    let w = node.inputs[1];
    let kk: usize = ws[1..].iter().product();
    *group == 1
        && q.weight_bits == 8
        && xs.len() == 4
        && g.value(node.inputs[0]).ty.dtype.scalar == Scalar::I8
        && (4..=MAX_PATCH).contains(&kk)
        && g.const_value(w).is_some()
        && !g.is_output(w)
        && g.consumers(w) == [n]
}

/// Position of tap `i` of a weight row in the patch order: within each group of four taps
/// `[w0 w2 w1 w3]`, so `SXTB16` of one word gives `(w0, w1)` and with `ROR #8` `(w2, w3)`,
/// the pairs the int16 patch holds; a last partial group stays in order.
pub fn patch_index(i: usize, kk: usize) -> usize {
    if i >= kk & !3 {
        return i;
    }
    (i & !3) | ((i & 1) << 1) | ((i >> 1) & 1)
}

/// Taps of a patch row rounded up to whole groups of four.
pub fn padded_taps(taps: usize) -> usize {
    taps.div_ceil(4) * 4
}

/// The weights of a [`packed_patch`] node in patch order, each row padded with zeros to
/// [`padded_taps`] (at most three bytes per output channel).
pub fn patch_weights(g: &Graph, n: NodeId) -> Option<Vec<i64>> {
    let node = g.node(n);
    let ws = shape(g, node.inputs[1]);
    let taps: usize = ws[1..].iter().product();
    let kk = padded_taps(taps);
    let w = g.const_value(node.inputs[1])?.to_i64_vec();
    let mut out = vec![0; ws[0] * kk];
    for (r, row) in w.chunks(taps).enumerate() {
        for (i, &x) in row.iter().enumerate() {
            out[r * kk + patch_index(i, kk)] = x;
        }
    }
    Some(out)
}

/// Whether node `n` is an int8 matrix product whose weights are stored for the dense kernels
/// (K a multiple of 4, N even, a constant read by this node alone).
pub fn packed_dense(g: &Graph, n: NodeId) -> bool {
    let node = g.node(n);
    let Op::QMatMul { q } = &node.op else {
        return false;
    };
    let ws = shape(g, node.inputs[1]);
    let w = node.inputs[1];
    ws.len() == 2
        && q.weight_bits == 8
        && g.value(node.inputs[0]).ty.dtype.scalar == Scalar::I8
        && ws[0].is_multiple_of(4)
        && ws[1].is_multiple_of(2)
        && g.const_value(w).is_some()
        && !g.is_output(w)
        && g.consumers(w) == [n]
}

/// Columns a pass of the dense kernels takes: four when they divide the width, else two
/// (every column shares the activations' unpacked pairs; eight measured worse, spilling).
pub fn dense_cols(nn: usize) -> usize {
    if nn.is_multiple_of(4) { 4 } else { 2 }
}

/// Position of weight (k, j) of a `[kk, nn]` product in the dense order: per group of
/// `cols` columns and four rows, per column pair two words, `[w(0,j) w(0,j+1) w(2,j)
/// w(2,j+1)]` and the same of rows 1 and 3, matching `SXTB16` of four activations
/// `(x0, x2)` and, rotated, `(x1, x3)`.
pub fn dense_index(k: usize, j: usize, kk: usize, cols: usize) -> usize {
    (j / cols) * cols * kk + (k & !3) * cols + (j % cols / 2) * 8 + (k & 1) * 4 + ((k >> 1) & 1) * 2 + (j & 1)
}

/// Whether the input zero point of [`packed_dense`] node `n` is folded into its bias at
/// compile time (`b[j] - zp * sum_k w[k][j]`), so its kernels multiply the activations as
/// they are: the bias is a constant read by this node alone. With the sums wrapping at 32
/// bits the result is the same.
pub fn dense_bias_folded(g: &Graph, n: NodeId) -> bool {
    let node = g.node(n);
    let Op::QMatMul { q } = &node.op else {
        return false;
    };
    packed_dense(g, n)
        && q.input_zp != 0
        && node
            .inputs
            .get(2)
            .is_some_and(|&b| g.const_value(b).is_some() && !g.is_output(b) && g.consumers(b) == [n])
}

/// The zero point the kernels of [`packed_dense`] node `n` subtract at run time: none when
/// it is folded into the bias.
pub fn dense_zero_point(g: &Graph, n: NodeId) -> i32 {
    match &g.node(n).op {
        Op::QMatMul { q } if !dense_bias_folded(g, n) => q.input_zp,
        _ => 0,
    }
}

/// The bias of a [`dense_bias_folded`] node with the zero point folded in, as i32 values.
fn dense_bias(g: &Graph, n: NodeId) -> Option<Vec<i64>> {
    let node = g.node(n);
    let Op::QMatMul { q } = &node.op else {
        return None;
    };
    let nn = shape(g, node.inputs[1])[1];
    let w = g.const_value(node.inputs[1])?.to_i64_vec();
    let b = g.const_value(node.inputs[2])?.to_i64_vec();
    let mut sums = vec![0i64; nn];
    for row in w.chunks(nn) {
        for (s, &x) in sums.iter_mut().zip(row) {
            *s += x;
        }
    }
    Some(
        b.iter()
            .zip(&sums)
            .map(|(&b, &s)| (b - q.input_zp as i64 * s) as i32 as i64)
            .collect(),
    )
}

pub fn dense_weights(g: &Graph, n: NodeId) -> Option<Vec<i64>> {
    let ws = shape(g, g.node(n).inputs[1]);
    let (kk, nn) = (ws[0], ws[1]);
    let cols = dense_cols(nn);
    let w = g.const_value(g.node(n).inputs[1])?.to_i64_vec();
    let mut out = vec![0; w.len()];
    for k in 0..kk {
        for j in 0..nn {
            out[dense_index(k, j, kk, cols)] = w[k * nn + j];
        }
    }
    Some(out)
}

/// Largest zero-point-padded input plane kept on the stack.
pub const MAX_PLANE: usize = 4096;

/// Whether node `n` is an int8 convolution with one input channel per group over a 2-D
/// plane small enough for the stack-buffered plane kernels.
pub fn plane_conv_fits(g: &Graph, n: NodeId) -> bool {
    let node = g.node(n);
    let Op::QConv { window, group, q } = &node.op else {
        return false;
    };
    let xs = shape(g, node.inputs[0]);
    if xs.len() != 4 || g.value(node.inputs[0]).ty.dtype.scalar != Scalar::I8 || q.weight_bits != 8 {
        return false;
    }
    let ge = window.plane(xs, shape(g, node.outputs[0]));
    let (ph, pw) = plane_dims(&ge);
    xs[1] == *group && window.kernel.iter().product::<usize>() > 1 && ph * pw <= MAX_PLANE
}

/// Rows and columns of the zero-point-padded plane the outputs read.
pub fn plane_dims(ge: &kiln_ir::op::Plane) -> (usize, usize) {
    (
        (ge.oh - 1) * ge.sh + (ge.kh - 1) * ge.dh + 1,
        (ge.ow - 1) * ge.sw + (ge.kw - 1) * ge.dw + 1,
    )
}

/// How an AVR kernel (`c::avr`) runs an int8 product: every output's weights one row,
/// streamed by post-increment loads; the input zero point folded into the bias at compile
/// time, so the inner loop multiplies the stored int8 activations as they are (`MULS`);
/// sums in `acc_bits` (16 or 24) bits, which `kiln_ir::accumulate` proves hold every
/// channel's total. The sums wrap modulo 2^acc_bits on the way (the bias is folded, the
/// order changes), and since the total fits, the result is exactly the evaluator's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AvrProduct {
    pub acc_bits: u32,
    pub weight_bits: u8,
    /// Weights (multiply-adds) per output.
    pub taps: usize,
    /// Stored bytes per output row: `taps`, or with 4-bit weights half of it rounded up.
    pub row_bytes: usize,
    /// No weight is -128, so two products (each within ±128 * 127) add in 16 bits before
    /// joining a 24-bit sum.
    pub pairs: bool,
}

/// Largest row of AVR convolution weights, copied into a stack buffer per output row.
pub const AVR_MAX_TAPS: usize = 256;

/// The AVR layout of int8 node `n`, if it has one: a `QMatMul` with a 2-D constant weight
/// or a 1-D/2-D `QConv` with unit horizontal dilation, int8 input, 8- or 4-bit weights
/// and a bias (if any) of its own, whose sums fit 24 bits.
pub fn avr_product(g: &Graph, n: NodeId) -> Option<AvrProduct> {
    let node = g.node(n);
    let (q, taps) = match &node.op {
        Op::QMatMul { q } if shape(g, node.inputs[1]).len() == 2 => (q, shape(g, node.inputs[1])[0]),
        Op::QConv { q, window, .. } => {
            let ws = shape(g, node.inputs[1]);
            let dw = *window.dilations.last()?;
            if !matches!(ws.len(), 3 | 4) || dw != 1 {
                return None;
            }
            let taps: usize = ws[1..].iter().product();
            (q, taps)
        }
        _ => return None,
    };
    let own = |v: ValueId| g.const_value(v).is_some() && !g.is_output(v) && g.consumers(v) == [n];
    let conv_fits = !matches!(node.op, Op::QConv { .. }) || taps <= AVR_MAX_TAPS;
    if g.value(node.inputs[0]).ty.dtype.scalar != Scalar::I8
        || !matches!(q.weight_bits, 4 | 8)
        || !own(node.inputs[1])
        || node.inputs.get(2).is_some_and(|&b| !own(b))
        || !conv_fits
    {
        return None;
    }
    let acc_bits = kiln_ir::accumulate::node_range(g, n)?.bits();
    if acc_bits > 24 {
        return None;
    }
    let w = g.const_value(node.inputs[1])?.to_i64_vec();
    Some(AvrProduct {
        acc_bits,
        weight_bits: q.weight_bits,
        taps,
        row_bytes: if q.weight_bits == 4 { taps.div_ceil(2) } else { taps },
        pairs: w.iter().all(|&x| x != -128),
    })
}

/// The weight rows of AVR node `n` (one per output: `w[.., j]` of a product, `w[oc, ..]`
/// of a convolution), as stored bytes: int8 values, or 4-bit ones two to a byte (the even
/// tap in the low nibble), each row padded to whole bytes.
fn avr_weights(g: &Graph, n: NodeId, p: &AvrProduct) -> Option<Vec<i64>> {
    let node = g.node(n);
    let w = g.const_value(node.inputs[1])?.to_i64_vec();
    let rows: Vec<Vec<i64>> = match node.op {
        Op::QMatMul { .. } => {
            let nn = shape(g, node.inputs[1])[1];
            (0..nn).map(|j| (0..p.taps).map(|k| w[k * nn + j]).collect()).collect()
        }
        _ => w.chunks(p.taps).map(<[i64]>::to_vec).collect(),
    };
    Some(if p.weight_bits == 4 {
        rows.iter()
            .flat_map(|r| {
                r.chunks(2)
                    .map(|c| (c[0] & 15) | (c.get(1).map_or(0, |&h| h & 15) << 4))
            })
            .collect()
    } else {
        rows.concat()
    })
}

/// Per output channel of AVR node `n`, the bias with the input zero point folded in,
/// `b - zp * sum(w)`, wrapped to i32 (the kernels need it modulo 2^acc_bits only).
pub fn avr_bias(g: &Graph, n: NodeId) -> Option<Vec<i64>> {
    let node = g.node(n);
    let q = match &node.op {
        Op::QMatMul { q } | Op::QConv { q, .. } => q,
        _ => return None,
    };
    let w = g.const_value(node.inputs[1])?.to_i64_vec();
    let sums: Vec<i64> = match node.op {
        Op::QMatMul { .. } => {
            let nn = shape(g, node.inputs[1])[1];
            (0..nn).map(|j| w.iter().skip(j).step_by(nn).sum()).collect()
        }
        _ => {
            let m = shape(g, node.inputs[1])[0];
            w.chunks(w.len() / m.max(1)).map(|r| r.iter().sum()).collect()
        }
    };
    let b = match node.inputs.get(2) {
        Some(&b) => g.const_value(b)?.to_i64_vec(),
        None => vec![0; sums.len()],
    };
    Some(
        b.iter()
            .zip(&sums)
            .map(|(&b, &s)| (b - i64::from(q.input_zp) * s) as i32 as i64)
            .collect(),
    )
}

/// The values of constant `v` as the AVR kernels read them, when they differ from the
/// graph's: weight rows ([`avr_weights`]) and folded biases ([`avr_bias`]).
pub fn avr_const_values(g: &Graph, v: ValueId) -> Option<Vec<i64>> {
    let n = *g.consumers(v).first()?;
    let p = avr_product(g, n)?;
    match g.node(n).inputs.iter().position(|&i| i == v)? {
        1 => avr_weights(g, n, &p),
        2 => avr_bias(g, n),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patch_order_is_a_permutation_within_each_group() {
        for kk in [4, 8, 12, 28] {
            let mut seen: Vec<usize> = (0..kk).map(|i| patch_index(i, kk)).collect();
            assert!((0..kk).all(|i| patch_index(i, kk) / 4 == i / 4));
            seen.sort_unstable();
            assert_eq!(seen, (0..kk).collect::<Vec<_>>());
        }
        // [w0 w2 w1 w3]: tap 1 is stored third, tap 2 second.
        assert_eq!((0..4).map(|i| patch_index(i, 4)).collect::<Vec<_>>(), [0, 2, 1, 3]);
    }

    #[test]
    fn dense_order_is_a_permutation() {
        for (kk, nn) in [(4, 2), (8, 4), (12, 6), (640, 128)] {
            let cols = dense_cols(nn);
            let mut seen: Vec<usize> = (0..kk)
                .flat_map(|k| (0..nn).map(move |j| dense_index(k, j, kk, cols)))
                .collect();
            seen.sort_unstable();
            assert_eq!(seen, (0..kk * nn).collect::<Vec<_>>(), "{kk}x{nn}");
        }
        // The first word of a column pair holds rows 0 and 2 of both columns.
        let at = |k, j| dense_index(k, j, 8, 2);
        assert_eq!([at(0, 0), at(0, 1), at(2, 0), at(2, 1)], [0, 1, 2, 3]);
        assert_eq!([at(1, 0), at(1, 1), at(3, 0), at(3, 1)], [4, 5, 6, 7]);
    }
}

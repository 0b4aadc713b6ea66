//! ONNX Runtime's `MatMulNBits` (com.microsoft): a product with weights quantized to 2, 4 or
//! 8 bits in blocks along K, what its `matmul_nbits_quantizer` writes by default. The
//! weights become a float constant that records its blocked grid, exactly as a blocked
//! `DequantizeLinear` of the same data would, so the float path computes ONNX Runtime's
//! product and `--quantize dynamic` keeps the model's integers and block scales.

use crate::onnx::proto::NodeProto;
use crate::onnx::{Attrs, Ctx, ImportError};
use kiln_ir::op::BinaryOp;
use kiln_ir::{Op, QParams, Scalar, Tensor, ValueId};

/// The `i`-th `bits`-wide unsigned field of `bytes`, lowest bits first.
fn field(bytes: &[i64], bits: usize, i: usize) -> i64 {
    let per = 8 / bits;
    (bytes[i / per] >> (bits * (i % per))) & ((1 << bits) - 1)
}

pub fn matmul_nbits(cx: &mut Ctx, n: &NodeProto) -> Result<Vec<ValueId>, ImportError> {
    let at = Attrs::of(n);
    let (k, nn) = (at.i("K", 0), at.i("N", 0));
    let (bits, block) = (at.i("bits", 4), at.i("block_size", 0));
    if k <= 0 || nn <= 0 || !matches!(bits, 2 | 4 | 8) || block <= 0 || block * bits % 8 != 0 {
        return Err(cx.err(format!(
            "K = {k}, N = {nn}, bits = {bits}, block_size = {block}: K and N must be positive, bits 2, 4 or 8, and a block whole bytes"
        )));
    }
    let (k, nn, bits, block) = (k as usize, nn as usize, bits as usize, block as usize);
    let blocks = k.div_ceil(block);
    let blob = block * bits / 8;
    let a = cx.req(n, 0)?;
    if cx.ty(a).shape.last() != Some(&k) || cx.ty(a).dtype.scalar != Scalar::F32 {
        return Err(cx.err(format!("input A must be f32 ending in K = {k}, not {}", cx.ty(a))));
    }
    let constant = |i: usize, what: &str| {
        cx.const_input(n, i)?
            .ok_or_else(|| cx.err(format!("input {i} ({what}) must be a constant")))
    };
    let b = constant(1, "B")?;
    if b.data.scalar() != Scalar::U8 || b.numel() != nn * blocks * blob {
        return Err(cx.err(format!(
            "B must be uint8 [{nn}, {blocks}, {blob}] for K = {k}, N = {nn}, bits = {bits}, block_size = {block}, not {}",
            b.ty()
        )));
    }
    let scales = constant(2, "scales")?.to_f32_vec();
    if scales.len() != nn * blocks || scales.iter().any(|s| !s.is_finite() || *s <= 0.0) {
        return Err(cx.err(format!(
            "scales must be {} positive finite values ({nn} columns x {blocks} blocks)",
            nn * blocks
        )));
    }
    // zero point of column j, block b: packed like B, or float, or the middle of the range
    let zp: Vec<f32> = match cx.const_input(n, 3)? {
        None => vec![(1 << (bits - 1)) as f32; nn * blocks],
        Some(z) if z.data.scalar() == Scalar::U8 => {
            let per_col = (blocks * bits).div_ceil(8);
            if z.numel() != nn * per_col {
                return Err(cx.err(format!(
                    "packed zero points must be {} bytes, not {}",
                    nn * per_col,
                    z.numel()
                )));
            }
            let zb = z.to_i64_vec();
            (0..nn * blocks)
                .map(|i| field(&zb[(i / blocks) * per_col..], bits, i % blocks) as f32)
                .collect()
        }
        Some(z) if z.numel() == nn * blocks => z.to_f32_vec(),
        Some(z) => return Err(cx.err(format!("zero points {} do not match the scales", z.ty()))),
    };
    if let Some(gi) = cx.const_input(n, 4)? {
        let trivial = gi.numel() == k
            && gi
                .to_i64_vec()
                .iter()
                .enumerate()
                .all(|(i, &g)| g == (i / block) as i64);
        if !trivial {
            return Err(cx.err("g_idx (act-order block mapping) is not supported"));
        }
    } else if cx.input(n, 4).is_some() {
        return Err(cx.err("input 4 (g_idx) must be a constant"));
    }
    let q = b.to_i64_vec();
    let w: Vec<f32> = (0..k * nn)
        .map(|i| {
            let (kk, j) = (i / nn, i % nn);
            let (bl, r) = (kk / block, kk % block);
            let s = j * blocks + bl;
            (field(&q[s * blob..], bits, r) as f32 - zp[s]) * scales[s]
        })
        .collect();
    let mut wt = Tensor::from_vec(vec![k, nn], w);
    if zp.iter().all(|z| z.fract() == 0.0) {
        // scales and zero points as [blocks, N], the layout of a blocked DequantizeLinear's
        let t = |v: &[f32]| -> Vec<f32> { (0..blocks * nn).map(|i| v[(i % nn) * blocks + i / nn]).collect() };
        wt.quant = Some(QParams::Blocked {
            axis: 0,
            block,
            scales: t(&scales).into(),
            zero_points: t(&zp).iter().map(|&z| z as i32).collect(),
        });
    }
    let name = cx.node_name().to_string();
    let wv = cx.constant(&format!("{name}/weight"), wt);
    let Some(bias) = cx.input(n, 5) else {
        return cx.add(n, Op::MatMul, vec![a, wv]);
    };
    if cx.ty(bias).shape != [nn] {
        return Err(cx.err(format!("bias must be [{nn}], not {}", cx.ty(bias))));
    }
    let y = cx.add_aux("product", Op::MatMul, vec![a, wv])?;
    cx.add(n, Op::Binary(BinaryOp::Add), vec![y, bias])
}

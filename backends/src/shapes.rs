//! Facts about a node's operands that more than one backend's kernels need: row-major and
//! broadcast strides, a constant exponent, and the float16-weight exception.

use kiln_ir::{Graph, NodeId, Op, Scalar};

/// Row-major strides in elements.
pub fn strides(s: &[usize]) -> Vec<i64> {
    kiln_ir::tensor::strides(s).into_iter().map(|x| x as i64).collect()
}

/// Strides reading `inp` broadcast to `out` (0 along broadcast axes).
pub fn bcast(inp: &[usize], out: &[usize]) -> Vec<i64> {
    let st = strides(inp);
    let r = out.len();
    let mut s = vec![0i64; r];
    for i in 0..inp.len() {
        s[r - inp.len() + i] = if inp[i] == 1 { 0 } else { st[i] };
    }
    s
}

/// The exponent of a `Pow` when it is a constant 1, 2 or 0.5 for every element.
pub fn pow_exponent(g: &Graph, n: NodeId) -> Option<f32> {
    let t = g.const_value(g.node(n).inputs[1])?;
    let v = t.to_f64_vec();
    (!v.is_empty() && v.iter().all(|&x| x == v[0]) && [1.0, 2.0, 0.5].contains(&v[0])).then(|| v[0] as f32)
}

/// f32 throughout, except that a Conv, Gemm or MatMul may take its weight (input 1) as a
/// binary16 constant (`--quantize fp16`), which the kernel widens as it reads it.
pub fn f32_half_weight(g: &Graph, n: NodeId) -> bool {
    let node = g.node(n);
    let products = matches!(node.op, Op::Conv(_) | Op::Gemm { .. } | Op::MatMul);
    node.inputs
        .iter()
        .chain(&node.outputs)
        .enumerate()
        .all(|(i, &v)| match g.value(v).ty.dtype.scalar {
            Scalar::F32 => true,
            Scalar::F16 => products && i == 1 && g.const_value(v).is_some(),
            _ => false,
        })
}

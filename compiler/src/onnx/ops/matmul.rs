//! Gemm, MatMul and Einsum.

use crate::onnx::proto::NodeProto;
use crate::onnx::{Attrs, Ctx, ImportError};
use kiln_ir::{Op, ValueId};

pub fn gemm(cx: &mut Ctx, n: &NodeProto) -> Result<Vec<ValueId>, ImportError> {
    let a = Attrs::of(n);
    let mut ins = vec![cx.req(n, 0)?, cx.req(n, 1)?];
    ins.extend(cx.input(n, 2));
    let op = Op::Gemm {
        alpha: a.f("alpha", 1.0),
        beta: a.f("beta", 1.0),
        trans_a: a.i("transA", 0) != 0,
        trans_b: a.i("transB", 0) != 0,
        fused: None,
    };
    cx.add(n, op, ins)
}

pub fn matmul(cx: &mut Ctx, n: &NodeProto) -> Result<Vec<ValueId>, ImportError> {
    let ins = vec![cx.req(n, 0)?, cx.req(n, 1)?];
    cx.add(n, Op::MatMul, ins)
}

pub fn einsum(cx: &mut Ctx, n: &NodeProto) -> Result<Vec<ValueId>, ImportError> {
    let equation = Attrs::of(n).s("equation", "");
    let ins = cx.inputs(n);
    cx.add(n, Op::Einsum { equation }, ins)
}

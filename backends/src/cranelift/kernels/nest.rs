//! Affine loop nests: most kernels walk an output shape while every operand's address is a
//! base plus a linear function of the loop indices. Adjacent dimensions that all operands
//! walk contiguously are merged first, and the innermost loop runs four lanes at a time
//! when every operand is unit-stride (or broadcast) there.

use super::super::fx::Fx;
use cranelift_codegen::ir::types::{F32, F32X4};
use cranelift_codegen::ir::{InstBuilder, Type, Value};

/// An operand: `base` pointer, element `offset`, per-dimension element `strides`.
#[derive(Clone)]
pub(crate) struct Opnd {
    pub base: Value,
    pub offset: i64,
    pub strides: Vec<i64>,
    pub bytes: i64,
}

impl Opnd {
    pub fn new(base: Value, strides: Vec<i64>, bytes: i64) -> Self {
        Opnd {
            base,
            offset: 0,
            strides,
            bytes,
        }
    }
}

fn collapse(dims: &[i64], ops: &[Opnd]) -> (Vec<i64>, Vec<Vec<i64>>) {
    let mut d: Vec<i64> = Vec::new();
    let mut s: Vec<Vec<i64>> = vec![Vec::new(); ops.len()];
    for (i, &n) in dims.iter().enumerate() {
        if n == 1 {
            continue;
        }
        let mergeable = !d.is_empty()
            && ops
                .iter()
                .enumerate()
                .all(|(k, o)| *s[k].last().unwrap() == o.strides[i] * n);
        if mergeable {
            *d.last_mut().unwrap() *= n;
            for (k, o) in ops.iter().enumerate() {
                *s[k].last_mut().unwrap() = o.strides[i];
            }
        } else {
            d.push(n);
            for (k, o) in ops.iter().enumerate() {
                s[k].push(o.strides[i]);
            }
        }
    }
    (d, s)
}

/// The per-point code of a nest: lane type, operand addresses, which operands broadcast.
pub(crate) type Body<'a> = dyn FnMut(&mut Fx, Type, &[Value], &[bool]) + 'a;

/// Loads a float operand as `ty` lanes; a broadcast operand (stride 0) is splatted.
pub(crate) fn ld(fx: &mut Fx, ty: Type, addr: Value, bcast: bool) -> Value {
    if ty == F32 || !bcast {
        fx.load(ty, addr)
    } else {
        let s = fx.load(F32, addr);
        fx.b.ins().splat(ty, s)
    }
}

/// Runs `body(fx, lane_type, addresses)` for every point of `dims`. `lanes` is the vector
/// type to use when the innermost dimension allows it (`None`: scalar only). The body
/// learns which operands are broadcast across lanes from `bcast`.
pub(crate) fn nest(fx: &mut Fx, dims: &[i64], ops: &[Opnd], scalar: Type, lanes: Option<Type>, body: &mut Body) {
    if dims.contains(&0) {
        return;
    }
    let (d, s) = collapse(dims, ops);
    let bases: Vec<Value> = ops.iter().map(|o| fx.add_imm(o.base, o.offset * o.bytes)).collect();
    let bytes: Vec<i64> = ops.iter().map(|o| o.bytes).collect();
    let inner_ok = |k: usize| s[k].last().is_none_or(|&x| x == 0 || x == 1);
    let vec_ok = lanes.is_some()
        && !d.is_empty()
        && *d.last().unwrap() >= 4
        && s[0].last() == Some(&1)
        && (0..ops.len()).all(inner_ok);
    let bcast: Vec<bool> = s.iter().map(|st| st.last().is_none_or(|&x| x == 0)).collect();
    rec(
        fx,
        &d,
        &s,
        &bytes,
        bases,
        0,
        scalar,
        if vec_ok { lanes } else { None },
        &bcast,
        body,
    );
}

#[allow(clippy::too_many_arguments)]
fn rec(
    fx: &mut Fx,
    d: &[i64],
    s: &[Vec<i64>],
    bytes: &[i64],
    bases: Vec<Value>,
    depth: usize,
    scalar: Type,
    lanes: Option<Type>,
    bcast: &[bool],
    body: &mut Body,
) {
    if depth == d.len() {
        body(fx, scalar, &bases, bcast);
        return;
    }
    let n = d[depth];
    let step = |k: usize| s[k][depth] * bytes[k];
    if depth + 1 == d.len()
        && let Some(vt) = lanes
    {
        let width = vt.lane_count() as i64;
        let full = n / width;
        fx.for_n(full, &mut |fx, i| {
            let addrs: Vec<Value> = bases
                .iter()
                .enumerate()
                .map(|(k, &b)| fx.addr(b, i, step(k) * width))
                .collect();
            body(fx, vt, &addrs, bcast);
        });
        for j in full * width..n {
            let addrs: Vec<Value> = bases
                .iter()
                .enumerate()
                .map(|(k, &b)| fx.add_imm(b, step(k) * j))
                .collect();
            body(fx, scalar, &addrs, bcast);
        }
        return;
    }
    fx.for_n(n, &mut |fx, i| {
        let addrs: Vec<Value> = bases.iter().enumerate().map(|(k, &b)| fx.addr(b, i, step(k))).collect();
        rec(fx, d, s, bytes, addrs, depth + 1, scalar, lanes, bcast, body);
    });
}

pub(crate) const F4: Type = F32X4;

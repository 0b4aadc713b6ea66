//! Folds int8 tables that only clamp into the op before them. A quantized model often
//! keeps a ReLU after an Add on the same grid (TFLite's Add then ReLU, each with its own
//! Quantize): as a 256-entry table that is `clamp(q, lo, hi)`, or the identity when the
//! grid's zero point is the low end, it costs a pass over the tensor for what the producer's
//! own clamp does for free. A table on the same grid as its input that is the identity goes
//! (consumers read the input); one that clamps tightens the clamp of an integer producer
//! (QAdd, QMul, QConv, QMatMul) whose result nothing else reads. Exact: clamping a clamped
//! integer equals clamping once to the intersection.

use kiln_ir::{Graph, IrError, NodeId, Op, ValueDef};

pub fn run(g: &mut Graph) -> Result<bool, IrError> {
    let mut changed = false;
    for n in g.topo_order()? {
        let Some((lo, hi)) = clamp_of(g, n) else {
            continue;
        };
        let (x, y) = (g.node(n).inputs[0], g.node(n).outputs[0]);
        let x_is_source = !matches!(g.value(x).def, ValueDef::Node(..));
        if g.is_output(y) && (x_is_source || g.is_output(x)) {
            continue;
        }
        if (lo, hi) != (-128, 127) {
            let Some(p) = g.producer(x).filter(|_| g.consumers(x).len() == 1 && !g.is_output(x)) else {
                continue;
            };
            let Some((a, b)) = bounds(g.op_mut(p)) else {
                continue;
            };
            if (*a).max(lo) > (*b).min(hi) {
                continue;
            }
            (*a, *b) = ((*a).max(lo), (*b).min(hi));
        }
        let name = g.value(y).name.clone();
        let y_is_output = g.is_output(y);
        g.replace_uses(y, x);
        g.remove_node(n);
        if y_is_output {
            g.rename(x, &name);
        }
        changed = true;
    }
    Ok(changed)
}

/// `(lo, hi)` when node `n` is an int8 table on its input's grid that maps every `q` to
/// `clamp(q, lo, hi)`.
fn clamp_of(g: &Graph, n: NodeId) -> Option<(i32, i32)> {
    let node = g.node(n);
    let Op::Lut { table, .. } = &node.op else {
        return None;
    };
    if g.value(node.inputs[0]).ty != g.value(node.outputs[0]).ty || table.len() != 256 {
        return None;
    }
    let (lo, hi) = (table[0] as i32, table[255] as i32);
    let clamps = table
        .iter()
        .enumerate()
        .all(|(i, &t)| t as i32 == (i as i32 - 128).clamp(lo, hi.max(lo)));
    (clamps && lo <= hi).then_some((lo, hi))
}

/// The output clamp of an integer op that has one.
fn bounds(op: &mut Op) -> Option<(&mut i32, &mut i32)> {
    match op {
        Op::QAdd(q) => Some((&mut q.act_min, &mut q.act_max)),
        Op::QMul(q) => Some((&mut q.act_min, &mut q.act_max)),
        Op::QConv { q, .. } | Op::QMatMul { q } => Some((&mut q.act_min, &mut q.act_max)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::run;
    use kiln_ir::op::{Numerics, QAdd};
    use kiln_ir::{DType, Graph, Op, QParams, Scalar, Tensor, TensorType};

    fn q8(zp: i32) -> TensorType {
        let q = QParams::PerTensor {
            scale: 0.05,
            zero_point: zp,
        };
        TensorType::new(DType::quantized(Scalar::I8, q), vec![1, 256])
    }

    /// An int8 Add on grid `zp`, then a table `f` of its result (as a ReLU on that grid is),
    /// the Add's result also a graph output when `shared`.
    fn add_then_table(zp: i32, f: impl Fn(i32) -> i32, shared: bool) -> Graph {
        let mut g = Graph::new("g");
        let a = g.add_input("a", q8(zp));
        let b = g.add_input("b", q8(zp));
        let r = kiln_runtime::quantize_multiplier(0.5).unwrap();
        let add = Op::QAdd(QAdd {
            a_zp: zp,
            a: r,
            b_zp: zp,
            b: r,
            output_scale: 0.05,
            output_zp: zp,
            out: kiln_runtime::quantize_multiplier(2.0 / (1u64 << kiln_runtime::ADD_LEFT_SHIFT) as f64).unwrap(),
            act_min: -128,
            act_max: 100,
            numerics: Numerics::Tflite,
        });
        let s = g.add_node("add", add, vec![a, b], &[]).unwrap().1[0];
        let table: std::sync::Arc<[i8]> = (-128..128).map(|q| f(q) as i8).collect();
        let lut = Op::Lut {
            table,
            scale: 0.05,
            zero_point: zp,
        };
        let y = g.add_node("relu", lut, vec![s], &["y"]).unwrap().1[0];
        g.add_output(y);
        if shared {
            g.add_output(s);
        }
        g
    }

    fn inputs() -> Vec<Tensor> {
        let a: Vec<i8> = (-128..128).map(|q| q as i8).collect();
        let b: Vec<i8> = (-128..128).rev().map(|q| (q / 3) as i8).collect();
        vec![Tensor::from_vec(vec![1, 256], a), Tensor::from_vec(vec![1, 256], b)]
    }

    /// Runs the pass; the graph verifies, gives the same bytes, and has `tables` Luts left.
    fn check(mut g: Graph, tables: usize) -> Graph {
        let want = kiln_ir::eval::run(&g, &inputs()).unwrap();
        let changed = run(&mut g).unwrap();
        kiln_ir::verify::verify(&g).unwrap();
        let got = kiln_ir::eval::run(&g, &inputs()).unwrap();
        for (w, o) in want.iter().zip(&got) {
            assert_eq!(w.data.to_le_bytes(), o.data.to_le_bytes());
        }
        let left = g.node_ids().filter(|&n| matches!(g.node(n).op, Op::Lut { .. })).count();
        assert_eq!(left, tables);
        assert_eq!(changed, tables == 0);
        g
    }

    #[test]
    fn a_relu_at_the_low_end_of_its_grid_goes() {
        let g = check(add_then_table(-128, |q| q.max(-128), false), 0);
        // the graph output keeps the table's name
        assert_eq!(g.value(g.outputs()[0]).name, "y");
    }

    #[test]
    fn a_relu_above_the_low_end_becomes_the_adds_clamp() {
        let g = check(add_then_table(-20, |q| q.max(-20), false), 0);
        let n = g.producer(g.outputs()[0]).unwrap();
        let Op::QAdd(q) = &g.node(n).op else { panic!() };
        assert_eq!((q.act_min, q.act_max), (-20, 100));
    }

    #[test]
    fn tables_that_do_not_only_clamp_or_have_other_readers_stay() {
        // a table that is not a clamp
        check(add_then_table(-20, |q| (q / 2).max(-20), false), 1);
        // the Add's own result is read too (a graph output)
        check(add_then_table(-20, |q| q.max(-20), true), 1);
    }
}

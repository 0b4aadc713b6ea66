//! Rewrites an int8 convolution whose window covers its whole input (no padding, so one
//! output position: the classifier of a keyword-spotting net after its last pooling-free
//! depthwise layer) into the product it is: the input flattened, a `QMatMul` against the
//! weights transposed to `[C*kh*kw, M]`, and the result reshaped back. The convolution
//! kernels are built for many positions (blocks of eight, im2col) and fall back to scalar
//! loops on one; the product kernels are built for exactly this. Same sums, same int8
//! output stage (`QLinear`), so the same bytes.

use kiln_ir::{Graph, IrError, NodeId, Op, QParams, Scalar, Tensor};

pub fn run(g: &mut Graph) -> Result<bool, IrError> {
    let mut changed = false;
    for n in g.topo_order()? {
        let Some(k) = full_window(g, n) else {
            continue;
        };
        let node = g.node(n).clone();
        let Op::QConv { q, .. } = node.op else { unreachable!() };
        let (x, y) = (node.inputs[0], node.outputs[0]);
        let batch = g.value(x).ty.shape[0];
        let name = g.value(y).name.clone();
        let flat = g.add_node(
            &format!("{name}:flat"),
            Op::Reshape { shape: vec![batch, k] },
            vec![x],
            &[],
        )?;
        let w = transposed(g, node.inputs[1], k);
        let wv = g.add_const(&g.fresh_name(&format!("{}:kxm", g.value(node.inputs[1]).name)), w);
        let mut ins = vec![flat.1[0], wv];
        ins.extend(node.inputs.get(2));
        let prod = g.add_node(&format!("{name}:product"), Op::QMatMul { q }, ins, &[])?;
        let shape = g.value(y).ty.shape.clone();
        let tmp = g.fresh_name(&format!("{name}:conv"));
        let back = g.add_node(
            &format!("{name}:shape"),
            Op::Reshape { shape },
            vec![prod.1[0]],
            &[&tmp],
        )?;
        // readers and graph outputs move to the reshaped product, which takes the name
        g.replace_uses(y, back.1[0]);
        g.remove_node(n);
        g.rename(back.1[0], &name);
        changed = true;
    }
    Ok(changed)
}

/// `C * kh * kw` when node `n` is a one-group int8 convolution with 8-bit constant weights
/// whose window, without padding or dilation, is exactly its input's plane.
fn full_window(g: &Graph, n: NodeId) -> Option<usize> {
    let node = g.node(n);
    let Op::QConv { window, group: 1, q } = &node.op else {
        return None;
    };
    let xs = &g.value(node.inputs[0]).ty.shape;
    let int8 = g.value(node.inputs[0]).ty.dtype.scalar == Scalar::I8 && q.weight_bits == 8;
    let plain = window.pads.iter().all(|&p| p == 0) && window.dilations.iter().all(|&d| d == 1);
    let covers = xs.len() == window.kernel.len() + 2 && xs[2..] == window.kernel[..];
    let w = g.const_value(node.inputs[1])?;
    (int8 && plain && covers && w.data.scalar() == Scalar::I8).then(|| xs[1..].iter().product())
}

/// The weights `[M, C, kh, kw]` as `[C*kh*kw, M]`, per-channel parameters moved to axis 1.
fn transposed(g: &Graph, w: kiln_ir::ValueId, k: usize) -> Tensor {
    let t = g.const_value(w).expect("checked by `full_window`");
    let m = t.shape[0];
    let v: Vec<i8> = t.as_slice::<i8>().expect("checked by `full_window`").to_vec();
    let out: Vec<i8> = (0..k * m).map(|i| v[(i % m) * k + i / m]).collect();
    let mut r = Tensor::from_vec(vec![k, m], out);
    r.quant = g.value(w).ty.dtype.quant.clone().map(|p| match p {
        QParams::PerAxis {
            axis: 0,
            scales,
            zero_points,
        } => QParams::PerAxis {
            axis: 1,
            scales,
            zero_points,
        },
        other => other,
    });
    r
}

#[cfg(test)]
mod tests {
    use super::run;
    use kiln_ir::op::{Numerics, QLinear, Window};
    use kiln_ir::{DType, Graph, Op, QParams, Scalar, Tensor, TensorType};

    fn bytes(seed: u32, n: usize) -> Vec<i8> {
        (0..n as u32)
            .map(|i| (i.wrapping_mul(2654435761).wrapping_add(seed) >> 13) as i8)
            .collect()
    }

    /// `[2, c, h, w] -> [2, 5, 1, 1]` through a window of `kernel` with `pads`.
    fn conv(
        c: usize,
        hw: (usize, usize),
        kernel: (usize, usize),
        pads: usize,
        numerics: Numerics,
    ) -> (Graph, Vec<Tensor>) {
        let q = QParams::PerTensor {
            scale: 0.1,
            zero_point: -7,
        };
        let mut g = Graph::new("g");
        let x = g.add_input(
            "x",
            TensorType::new(DType::quantized(Scalar::I8, q), vec![2, c, hw.0, hw.1]),
        );
        let wn = 5 * c * kernel.0 * kernel.1;
        let w = g.add_const("w", Tensor::from_vec(vec![5, c, kernel.0, kernel.1], bytes(1, wn)));
        let b = g.add_const("b", Tensor::from_vec(vec![5], vec![300i32, -200, 0, 7, 1000]));
        let requant: std::sync::Arc<[_]> = (0..5)
            .map(|i| kiln_runtime::quantize_multiplier(0.003 * (1.0 + i as f64)).unwrap())
            .collect();
        let op = Op::QConv {
            window: Window {
                kernel: vec![kernel.0, kernel.1],
                strides: vec![1, 1],
                dilations: vec![1, 1],
                pads: vec![pads; 4],
            },
            group: 1,
            q: QLinear {
                input_zp: -7,
                output_scale: 0.2,
                output_zp: 3,
                requant,
                act_min: -128,
                act_max: 127,
                weight_bits: 8,
                numerics,
            },
        };
        let y = g.add_node("c", op, vec![x, w, b], &["y"]).unwrap().1[0];
        // the conv's result is both an output and read by another node
        let numel = g.value(y).ty.numel();
        let z = g
            .add_node("r", Op::Reshape { shape: vec![numel] }, vec![y], &["z"])
            .unwrap()
            .1[0];
        g.add_output(y);
        g.add_output(z);
        let xs = Tensor::from_vec(vec![2, c, hw.0, hw.1], bytes(9, 2 * c * hw.0 * hw.1));
        (g, vec![xs])
    }

    #[test]
    fn a_window_over_the_whole_input_becomes_a_product() {
        for numerics in [Numerics::Onnx, Numerics::Tflite] {
            for (c, hw) in [(128, (1, 1)), (6, (3, 4))] {
                let (mut g, xs) = conv(c, hw, hw, 0, numerics);
                let want = kiln_ir::eval::run(&g, &xs).unwrap();
                assert!(run(&mut g).unwrap());
                kiln_ir::verify::verify(&g).unwrap();
                let got = kiln_ir::eval::run(&g, &xs).unwrap();
                for (w, o) in want.iter().zip(&got) {
                    assert_eq!(w.shape, o.shape);
                    assert_eq!(w.data.to_le_bytes(), o.data.to_le_bytes());
                }
                assert!(g.node_ids().all(|n| !matches!(g.node(n).op, Op::QConv { .. })));
                assert_eq!(g.value(g.outputs()[0]).name, "y");
            }
        }
    }

    #[test]
    fn a_padded_or_partial_window_stays_a_convolution() {
        for (hw, kernel, pads) in [((3, 4), (3, 4), 1), ((3, 4), (3, 3), 0)] {
            let (mut g, _) = conv(4, hw, kernel, pads, Numerics::Onnx);
            assert!(!run(&mut g).unwrap());
        }
    }
}

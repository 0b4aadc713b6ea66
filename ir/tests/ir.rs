//! IR-level behaviour: graph structure, verifier, text form, shape inference and a few
//! evaluator kernels checked against values worked out by hand.

use kiln_ir::op::{BinaryOp, Conv, Pool, PoolKind, UnaryOp, Window};
use kiln_ir::{Graph, IrError, Op, Scalar, Tensor, TensorType, eval, shape, text, verify};

fn f32s(shape: &[usize], v: &[f32]) -> Tensor {
    Tensor::from_vec(shape.to_vec(), v.to_vec())
}

#[test]
fn text_form_is_stable() {
    let mut g = Graph::new("tiny");
    let x = g.add_input("x", TensorType::new(Scalar::F32, vec![1, 4]));
    let w = g.add_const("w", f32s(&[4, 2], &[1.0, 0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 1.0]));
    let (_, y) = g.add_node("mm", Op::MatMul, vec![x, w], &["y"]).unwrap();
    let (_, z) = g
        .add_node("act", Op::Unary(UnaryOp::LeakyRelu { alpha: 0.5 }), vec![y[0]], &["z"])
        .unwrap();
    g.add_output(z[0]);
    let want = "graph tiny {\n  in %x: f32[1,4]\n  const %w: f32[4,2] = [1, 0, 0, 1, 1, 0, 0, 1]\n  %y: f32[1,2] = MatMul(%x, %w)  # mm\n  %z: f32[1,2] = LeakyRelu(%y) {alpha=0.5}  # act\n  out %z\n}\n";
    assert_eq!(text::dump(&g).unwrap(), want);
}

#[test]
fn cycle_is_reported_with_a_node_name() {
    let mut g = Graph::new("c");
    let x = g.add_input("x", TensorType::new(Scalar::F32, vec![2]));
    let (a, av) = g.add_node("a", Op::Unary(UnaryOp::Relu), vec![x], &["av"]).unwrap();
    let (_, bv) = g.add_node("b", Op::Unary(UnaryOp::Neg), vec![av[0]], &["bv"]).unwrap();
    g.set_input(a, 0, bv[0]);
    match g.topo_order() {
        Err(IrError::Cycle(n)) => assert!(n == "a" || n == "b"),
        other => panic!("expected a cycle, got {other:?}"),
    }
    assert!(verify::verify(&g).is_err());
}

#[test]
fn verifier_catches_a_stale_type() {
    let mut g = Graph::new("v");
    let x = g.add_input("x", TensorType::new(Scalar::F32, vec![2, 3]));
    let (n, y) = g
        .add_node("r", Op::Reshape { shape: vec![3, 2] }, vec![x], &["y"])
        .unwrap();
    g.add_output(y[0]);
    verify::verify(&g).unwrap();
    *g.op_mut(n) = Op::Reshape { shape: vec![6] };
    let e = verify::verify(&g).unwrap_err().to_string();
    assert!(e.contains("recorded as f32[3,2]") && e.contains("f32[6]"), "{e}");
}

#[test]
fn shape_inference_rejects_bad_inputs() {
    let a = TensorType::new(Scalar::F32, vec![2, 3]);
    let b = TensorType::new(Scalar::F32, vec![4, 3]);
    let e = shape::infer(&Op::Binary(BinaryOp::Add), &[&a, &b])
        .unwrap_err()
        .to_string();
    assert!(e.contains("cannot broadcast f32[2,3] with f32[4,3]"), "{e}");
    let i = TensorType::new(Scalar::I32, vec![2, 3]);
    assert!(shape::infer(&Op::Binary(BinaryOp::Add), &[&a, &i]).is_err());
    assert_eq!(shape::broadcast(&[3, 1, 5], &[4, 1]), Some(vec![3, 4, 5]));
    // ceil_mode may not start a window inside the end padding.
    assert_eq!(shape::window_out(5, 2, 2, 1, 0, 1, true), Some(3));
    assert_eq!(shape::window_out(4, 3, 2, 1, 0, 0, true), Some(2));
    assert_eq!(shape::window_out(4, 3, 2, 1, 0, 0, false), Some(1));
}

fn run1(op: Op, inputs: &[Tensor]) -> Vec<Tensor> {
    let mut g = Graph::new("k");
    let ids: Vec<_> = inputs
        .iter()
        .enumerate()
        .map(|(i, t)| g.add_input(&format!("i{i}"), t.ty()))
        .collect();
    let (_, outs) = g.add_node("n", op, ids, &[]).unwrap();
    for o in outs {
        g.add_output(o);
    }
    eval::run(&g, inputs).unwrap()
}

#[test]
fn conv_padded_strided_by_hand() {
    // 1x1x3x3 input 1..9, 2x2 kernel of ones, pad 1 at the start only, stride 2.
    let x = f32s(&[1, 1, 3, 3], &[1., 2., 3., 4., 5., 6., 7., 8., 9.]);
    let w = f32s(&[1, 1, 2, 2], &[1., 1., 1., 1.]);
    let b = f32s(&[1], &[0.5]);
    let op = Op::Conv(Conv {
        window: Window {
            kernel: vec![2, 2],
            strides: vec![2, 2],
            dilations: vec![1, 1],
            pads: vec![1, 1, 0, 0],
        },
        group: 1,
        fused: None,
    });
    let y = run1(op, &[x, w, b]);
    // Windows start at (-1,-1), (-1,1), (1,-1), (1,1).
    assert_eq!(y[0].shape, vec![1, 1, 2, 2]);
    assert_eq!(y[0].as_slice::<f32>().unwrap(), &[1.5, 5.5, 11.5, 28.5]);
}

#[test]
fn depthwise_conv_and_avg_pool_by_hand() {
    let x = f32s(&[1, 2, 1, 3], &[1., 2., 3., 10., 20., 30.]);
    let w = f32s(&[2, 1, 1, 2], &[1., -1., 2., 0.5]);
    let op = Op::Conv(Conv {
        window: Window {
            kernel: vec![1, 2],
            strides: vec![1, 1],
            dilations: vec![1, 1],
            pads: vec![0; 4],
        },
        group: 2,
        fused: None,
    });
    let y = run1(op, &[x.clone(), w]);
    assert_eq!(y[0].as_slice::<f32>().unwrap(), &[-1., -1., 30., 55.]);
    let pool = |count_include_pad| {
        Op::Pool(Pool {
            kind: PoolKind::Avg { count_include_pad },
            window: Window {
                kernel: vec![1, 2],
                strides: vec![1, 2],
                dilations: vec![1, 1],
                pads: vec![0, 0, 0, 1],
            },
            ceil_mode: false,
            numerics: Default::default(),
        })
    };
    assert_eq!(
        run1(pool(false), std::slice::from_ref(&x))[0]
            .as_slice::<f32>()
            .unwrap(),
        &[1.5, 3., 15., 30.]
    );
    assert_eq!(
        run1(pool(true), &[x])[0].as_slice::<f32>().unwrap(),
        &[1.5, 1.5, 15., 15.]
    );
}

#[test]
fn gemm_transposes_and_bias() {
    let a = f32s(&[2, 1], &[1., 2.]); // transposed: [1, 2]
    let b = f32s(&[3, 2], &[1., 0., 0., 1., 1., 1.]); // transposed: [2, 3]
    let c = f32s(&[3], &[10., 20., 30.]);
    let y = run1(
        Op::Gemm {
            alpha: 2.0,
            beta: 0.5,
            trans_a: true,
            trans_b: true,
            fused: None,
        },
        &[a, b, c],
    );
    assert_eq!(y[0].shape, vec![1, 3]);
    assert_eq!(y[0].as_slice::<f32>().unwrap(), &[7., 14., 21.]);
}

#[test]
fn softmax_is_stable_for_large_inputs() {
    let y = run1(Op::Softmax { axis: 1 }, &[f32s(&[1, 3], &[1000., 1000., 1000.])]);
    for v in y[0].as_slice::<f32>().unwrap() {
        assert!((v - 1.0 / 3.0).abs() < 1e-7);
    }
}

#[test]
fn float16_computes_in_f32_and_rounds_once() {
    use half::f16;
    let a = Tensor::from_vec(vec![2], vec![f16::from_f32(1.0), f16::from_f32(2048.0)]);
    let b = Tensor::from_vec(vec![2], vec![f16::from_f32(0.0004883), f16::from_f32(1.0)]);
    let y = run1(Op::Binary(BinaryOp::Add), &[a, b]);
    let v = y[0].as_slice::<f16>().unwrap();
    assert_eq!(v[0], f16::from_f32(1.0 + 0.0004883));
    assert_eq!(v[1], f16::from_f32(2048.0)); // 2049 is not representable in f16: ties to even
}

#[test]
fn integer_division_by_zero_is_an_error_not_a_panic() {
    let a = Tensor::from_vec(vec![2], vec![4i32, 5]);
    let b = Tensor::from_vec(vec![2], vec![2i32, 0]);
    let mut g = Graph::new("d");
    let (x, y) = (g.add_input("a", a.ty()), g.add_input("b", b.ty()));
    let (_, o) = g
        .add_node("div", Op::Binary(BinaryOp::Div), vec![x, y], &["o"])
        .unwrap();
    g.add_output(o[0]);
    let e = eval::run(&g, &[a, b]).unwrap_err().to_string();
    assert!(e.contains("div") && e.contains("division by zero"), "{e}");
}

#[test]
fn wrong_input_type_is_named() {
    let mut g = Graph::new("w");
    let x = g.add_input("x", TensorType::new(Scalar::F32, vec![2]));
    g.add_output(x);
    let e = eval::run(&g, &[Tensor::from_vec(vec![3], vec![1i64, 2, 3])])
        .unwrap_err()
        .to_string();
    assert!(e.contains("`x`") && e.contains("expected f32[2], got i64[3]"), "{e}");
}

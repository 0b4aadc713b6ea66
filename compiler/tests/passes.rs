//! Each pass on a small graph: what it rewrites, what it leaves, and that the evaluator gives
//! the same answer before and after (the pipeline never changes results beyond rounding).

use kiln::passes::{eliminate_dead_nodes, fold_constants, fuse_batch_norm, fuse_matmul_add, remove_identities};
use kiln_ir::op::{BinaryOp, Conv, UnaryOp, Window};
use kiln_ir::{Graph, Op, Scalar, Tensor, TensorType, eval, verify};

fn f32s(shape: &[usize], v: Vec<f32>) -> Tensor {
    Tensor::from_vec(shape.to_vec(), v)
}

fn ramp(n: usize, scale: f32) -> Vec<f32> {
    (0..n).map(|i| ((i * 7 % 11) as f32 - 5.0) * scale).collect()
}

fn same(a: &[Tensor], b: &[Tensor], tol: f32) {
    for (x, y) in a.iter().zip(b) {
        assert_eq!(x.shape, y.shape);
        for (p, q) in x.to_f32_vec().iter().zip(y.to_f32_vec()) {
            assert!((p - q).abs() <= tol * (1.0 + q.abs()), "{p} vs {q}");
        }
    }
}

#[test]
fn fold_constants_evaluates_constant_subgraphs() {
    let mut g = Graph::new("f");
    let x = g.add_input("x", TensorType::new(Scalar::F32, vec![3]));
    let a = g.add_const("a", f32s(&[3], vec![1., 2., 3.]));
    let b = g.add_const("b", f32s(&[3], vec![10., 20., 30.]));
    let (_, s) = g
        .add_node("sum", Op::Binary(BinaryOp::Add), vec![a, b], &["s"])
        .unwrap();
    let (_, y) = g
        .add_node("mul", Op::Binary(BinaryOp::Mul), vec![x, s[0]], &["y"])
        .unwrap();
    g.add_output(y[0]);
    assert!(fold_constants::run(&mut g).unwrap());
    verify::verify(&g).unwrap();
    assert_eq!(g.node_count(), 1);
    assert_eq!(
        g.const_value(s[0]).unwrap().as_slice::<f32>().unwrap(),
        &[11., 22., 33.]
    );
    assert!(!fold_constants::run(&mut g).unwrap(), "a second run finds nothing");
}

#[test]
fn fold_constants_keeps_large_expansions() {
    let mut g = Graph::new("e");
    let c = g.add_const("c", f32s(&[1], vec![1.0]));
    let (_, y) = g
        .add_node("big", Op::Expand { shape: vec![512, 512] }, vec![c], &["y"])
        .unwrap();
    g.add_output(y[0]);
    assert!(
        !fold_constants::run(&mut g).unwrap(),
        "a 1-element constant must not become 1 MiB of flash"
    );
    assert_eq!(g.node_count(), 1);
}

fn conv_bn_graph() -> (Graph, Tensor) {
    let mut g = Graph::new("cb");
    let x = g.add_input("x", TensorType::new(Scalar::F32, vec![1, 2, 4, 4]));
    let w = g.add_const("w", f32s(&[3, 2, 3, 3], ramp(54, 0.1)));
    let bias = g.add_const("bias", f32s(&[3], vec![0.1, -0.2, 0.3]));
    let conv = Conv {
        window: Window {
            kernel: vec![3, 3],
            strides: vec![1, 1],
            dilations: vec![1, 1],
            pads: vec![1, 1, 1, 1],
        },
        group: 1,
        fused: None,
    };
    let (_, c) = g.add_node("conv", Op::Conv(conv), vec![x, w, bias], &["c"]).unwrap();
    let p: Vec<_> = [
        ("scale", vec![1.5, 0.5, -1.0]),
        ("b", vec![0.1, 0.2, 0.3]),
        ("mean", vec![0.3, -0.1, 0.0]),
        ("var", vec![2.0, 0.5, 1.0]),
    ]
    .into_iter()
    .map(|(n, v)| g.add_const(n, f32s(&[3], v)))
    .collect();
    let (_, y) = g
        .add_node(
            "bn",
            Op::BatchNorm { epsilon: 1e-5 },
            vec![c[0], p[0], p[1], p[2], p[3]],
            &["y"],
        )
        .unwrap();
    let (_, z) = g
        .add_node("relu", Op::Unary(UnaryOp::Relu), vec![y[0]], &["z"])
        .unwrap();
    g.add_output(z[0]);
    (g, f32s(&[1, 2, 4, 4], ramp(32, 0.25)))
}

#[test]
fn batch_norm_folds_into_conv() {
    let (mut g, x) = conv_bn_graph();
    let before = eval::run(&g, std::slice::from_ref(&x)).unwrap();
    assert!(fuse_batch_norm::run(&mut g).unwrap());
    verify::verify(&g).unwrap();
    assert_eq!(g.node_count(), 2, "Conv + Relu remain");
    assert!(g.node_ids().all(|n| !matches!(g.node(n).op, Op::BatchNorm { .. })));
    same(&before, &eval::run(&g, &[x]).unwrap(), 1e-5);
}

#[test]
fn batch_norm_stays_when_conv_output_has_another_reader() {
    let (mut g, _) = conv_bn_graph();
    let c = g.value_by_name("c").unwrap();
    g.add_output(c);
    assert!(!fuse_batch_norm::run(&mut g).unwrap());
    assert_eq!(g.node_count(), 3);
}

#[test]
fn batch_norm_folds_into_gemm() {
    let mut g = Graph::new("gb");
    let x = g.add_input("x", TensorType::new(Scalar::F32, vec![2, 4]));
    let w = g.add_const("w", f32s(&[3, 4], ramp(12, 0.3)));
    let c = g.add_const("c", f32s(&[3], vec![1., 2., 3.]));
    let gemm = Op::Gemm {
        alpha: 0.5,
        beta: 2.0,
        trans_a: false,
        trans_b: true,
        fused: None,
    };
    let (_, m) = g.add_node("gemm", gemm, vec![x, w, c], &["m"]).unwrap();
    let p: Vec<_> = [
        vec![2.0, -1.0, 0.5],
        vec![0.0, 1.0, 2.0],
        vec![1.0, 1.0, 1.0],
        vec![4.0, 1.0, 0.25],
    ]
    .into_iter()
    .enumerate()
    .map(|(i, v)| g.add_const(&format!("p{i}"), f32s(&[3], v)))
    .collect();
    let (_, y) = g
        .add_node(
            "bn",
            Op::BatchNorm { epsilon: 0.0 },
            vec![m[0], p[0], p[1], p[2], p[3]],
            &["y"],
        )
        .unwrap();
    g.add_output(y[0]);
    let xin = f32s(&[2, 4], ramp(8, 0.5));
    let before = eval::run(&g, std::slice::from_ref(&xin)).unwrap();
    assert!(fuse_batch_norm::run(&mut g).unwrap());
    verify::verify(&g).unwrap();
    assert_eq!(g.node_count(), 1);
    same(&before, &eval::run(&g, &[xin]).unwrap(), 1e-5);
    assert_eq!(g.value(g.outputs()[0]).name, "y", "the graph output keeps its name");
}

#[test]
fn identities_and_noop_layout_ops_are_removed() {
    let mut g = Graph::new("i");
    let x = g.add_input("x", TensorType::new(Scalar::F32, vec![2, 3]));
    let (_, a) = g.add_node("relu", Op::Unary(UnaryOp::Relu), vec![x], &["a"]).unwrap();
    let (_, b) = g.add_node("id", Op::Identity, vec![a[0]], &["b"]).unwrap();
    let (_, c) = g
        .add_node("same_shape", Op::Reshape { shape: vec![2, 3] }, vec![b[0]], &["c"])
        .unwrap();
    let (_, d) = g
        .add_node("no_perm", Op::Transpose { perm: vec![0, 1] }, vec![c[0]], &["out"])
        .unwrap();
    g.add_output(d[0]);
    assert!(remove_identities::run(&mut g).unwrap());
    verify::verify(&g).unwrap();
    assert_eq!(g.node_count(), 1);
    let out = g.outputs()[0];
    assert_eq!(g.value(out).name, "out");
    assert_eq!(g.node(g.producer(out).unwrap()).name, "relu");
}

#[test]
fn identity_from_input_to_output_is_kept() {
    let mut g = Graph::new("k");
    let x = g.add_input("x", TensorType::new(Scalar::F32, vec![2]));
    let (_, y) = g.add_node("copy", Op::Identity, vec![x], &["y"]).unwrap();
    g.add_output(y[0]);
    assert!(!remove_identities::run(&mut g).unwrap());
    assert_eq!(g.node_count(), 1);
}

#[test]
fn dead_nodes_are_removed() {
    let mut g = Graph::new("d");
    let x = g.add_input("x", TensorType::new(Scalar::F32, vec![2]));
    let (_, used) = g.add_node("used", Op::Unary(UnaryOp::Relu), vec![x], &["y"]).unwrap();
    let (_, dead) = g.add_node("dead", Op::Unary(UnaryOp::Exp), vec![x], &["d"]).unwrap();
    g.add_node("dead_too", Op::Unary(UnaryOp::Neg), vec![dead[0]], &["d2"])
        .unwrap();
    g.add_output(used[0]);
    assert!(eliminate_dead_nodes::run(&mut g).unwrap());
    verify::verify(&g).unwrap();
    assert_eq!(g.node_count(), 1);
}

#[test]
fn pipeline_keeps_real_model_results() {
    // rapidocr has 35 BatchNorms; after the pipeline none remain and outputs still match.
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .join("tests/models/rapidocr_cls_mobile_v2");
    let mut opts = kiln::ImportOptions::default();
    opts.input_shapes.insert("x".into(), vec![1, 3, 48, 192]);
    let raw = kiln::onnx::load(&root.join("model.onnx"), &opts).unwrap().graph;
    let bn = |g: &Graph| {
        g.node_ids()
            .filter(|&n| matches!(g.node(n).op, Op::BatchNorm { .. }))
            .count()
    };
    assert_eq!(bn(&raw), 35);
    let done = kiln::load(&root.join("model.onnx"), &opts, &Default::default(), |_, _| {})
        .unwrap()
        .graph;
    assert_eq!(bn(&done), 0);
    let x = kiln::npy::read(&root.join("ref/test_data_set_0/input_0.npy")).unwrap();
    same(
        &eval::run(&raw, std::slice::from_ref(&x)).unwrap(),
        &eval::run(&done, &[x]).unwrap(),
        1e-5,
    );
}

#[test]
fn activations_fuse_into_conv_and_gemm() {
    let (mut g, x) = conv_bn_graph();
    let before = eval::run(&g, std::slice::from_ref(&x)).unwrap();
    fuse_batch_norm::run(&mut g).unwrap();
    assert!(kiln::passes::fuse_activations::run(&mut g).unwrap());
    verify::verify(&g).unwrap();
    assert_eq!(g.node_count(), 1, "Conv with a fused Relu");
    let n = g.node_ids().next().unwrap();
    assert!(matches!(&g.node(n).op, Op::Conv(c) if c.fused == Some(UnaryOp::Relu)));
    assert_eq!(g.value(g.outputs()[0]).name, "z");
    same(&before, &eval::run(&g, &[x]).unwrap(), 1e-5);
}

#[test]
fn fuse_matmul_add_makes_one_gemm_with_the_same_bits() {
    let build = |extra_reader: bool| {
        let mut g = Graph::new("m");
        let x = g.add_input("x", TensorType::new(Scalar::F32, vec![2, 4]));
        let w = g.add_const("w", f32s(&[4, 3], ramp(12, 0.25)));
        let b = g.add_const("b", f32s(&[3], vec![0.5, -1.0, 2.0]));
        let (_, p) = g.add_node("mm", Op::MatMul, vec![x, w], &["p"]).unwrap();
        let (_, y) = g
            .add_node("bias", Op::Binary(BinaryOp::Add), vec![b, p[0]], &["y"])
            .unwrap();
        g.add_output(y[0]);
        if extra_reader {
            g.add_output(p[0]);
        }
        g
    };
    let mut g = build(false);
    let x = f32s(&[2, 4], ramp(8, 1.5));
    let before = eval::run(&g, std::slice::from_ref(&x)).unwrap();
    assert!(fuse_matmul_add::run(&mut g).unwrap());
    verify::verify(&g).unwrap();
    assert_eq!(g.node_count(), 1);
    let n = g.node_ids().next().unwrap();
    assert!(matches!(g.node(n).op, Op::Gemm { .. }));
    assert_eq!(g.value(g.outputs()[0]).name, "y", "the output keeps its name");
    let after = eval::run(&g, &[x]).unwrap();
    assert_eq!(before[0].data, after[0].data, "same float operations, same bits");
    // A product read elsewhere is left alone.
    let mut g = build(true);
    assert!(!fuse_matmul_add::run(&mut g).unwrap());
}

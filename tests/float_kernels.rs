//! The float kernels that block, reorder or fuse: the native matrix product (panels of
//! rows, blocks of vectors), its im2col, the native channels-last depthwise convolution,
//! and the C backend's host loop orders (output planes and rows accumulated in place), on
//! shapes chosen to hit every edge (rows and columns that are not whole panels or vectors,
//! channel counts that are not whole vectors, strides, dilations, uneven padding, many
//! taps). With the portable default (no fused multiply-add on x86-64) the object, and the C
//! (ISO C, so no contraction, at `-O3 -march=native`), must give the evaluator's bits; with
//! `--target-cpu x86-64-v3` (fused multiply-add) the object must stay within the
//! documented float tolerance, `|Δ| <= FLOAT_TOL * max |y|` per output.

use kiln_ir::op::{Conv, UnaryOp, Window};
use kiln_ir::{Graph, Op, Scalar, Tensor, TensorType};
use kiln_tests::{HOST, Toolchain, build_c, build_native_for};

use kiln_tests::NATIVE_REL as FLOAT_TOL;

/// Deterministic values in [-1, 1).
fn values(seed: u64, n: usize) -> Vec<f32> {
    let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

struct DwCase {
    /// Output channels per group of one input channel, or 0 for one group (a regular
    /// convolution with `c` input and output channels).
    depthwise: bool,
    n: usize,
    c: usize,
    hw: (usize, usize),
    k: (usize, usize),
    stride: (usize, usize),
    dil: (usize, usize),
    /// top, left, bottom, right
    pads: [usize; 4],
    bias: bool,
    relu: bool,
}

fn depthwise(case: &DwCase, seed: u64) -> (Graph, Vec<Tensor>) {
    let mut g = Graph::new("dw");
    let (h, w) = case.hw;
    let x = g.add_input("x", TensorType::new(Scalar::F32, vec![case.n, case.c, h, w]));
    let cg = if case.depthwise { 1 } else { case.c };
    let wn = case.c * cg * case.k.0 * case.k.1;
    let wv = g.add_const(
        "w",
        Tensor::from_vec(vec![case.c, cg, case.k.0, case.k.1], values(seed + 1, wn)),
    );
    let mut inputs = vec![x, wv];
    if case.bias {
        inputs.push(g.add_const("b", Tensor::from_vec(vec![case.c], values(seed + 2, case.c))));
    }
    let op = Op::Conv(Conv {
        window: Window {
            kernel: vec![case.k.0, case.k.1],
            strides: vec![case.stride.0, case.stride.1],
            dilations: vec![case.dil.0, case.dil.1],
            pads: case.pads.to_vec(),
        },
        group: if case.depthwise { case.c } else { 1 },
        fused: case.relu.then_some(UnaryOp::Relu),
    });
    let (_, y) = g.add_node("dw", op, inputs, &["y"]).unwrap();
    g.add_output(y[0]);
    let xs = Tensor::from_vec(vec![case.n, case.c, h, w], values(seed, case.n * case.c * h * w));
    (g, vec![xs])
}

fn matmul(m: usize, k: usize, n: usize, seed: u64) -> (Graph, Vec<Tensor>) {
    let mut g = Graph::new("mm");
    let a = g.add_input("a", TensorType::new(Scalar::F32, vec![m, k]));
    let b = g.add_const("b", Tensor::from_vec(vec![k, n], values(seed + 1, k * n)));
    let (_, y) = g.add_node("mm", Op::MatMul, vec![a, b], &["y"]).unwrap();
    g.add_output(y[0]);
    (g, vec![Tensor::from_vec(vec![m, k], values(seed, m * k))])
}

/// Runs `g` on `tc` and returns the largest |Δ| / max |y| against the evaluator, or an
/// error naming the first element that differs in its bits when `exact`.
fn check(g: &Graph, inputs: &[Tensor], tc: &Toolchain, exact: bool, tag: &str) -> Result<f64, String> {
    let dir = std::env::temp_dir().join(format!("kiln-floatk-{}-{tag}", std::process::id()));
    let exe = build_native_for(g, "m", &dir, tc)?;
    let got = exe.run(g, inputs);
    let _ = std::fs::remove_dir_all(&dir);
    let want = kiln_ir::eval::run(g, inputs).map_err(|e| e.to_string())?;
    let (got, want) = (
        got?[0].as_slice::<f32>().unwrap().to_vec(),
        want[0].as_slice::<f32>().unwrap().to_vec(),
    );
    if exact {
        if let Some(i) = got.iter().zip(&want).position(|(a, b)| a.to_bits() != b.to_bits()) {
            return Err(format!("{tag}: element {i} is {}, the evaluator's {}", got[i], want[i]));
        }
        return Ok(0.0);
    }
    let range = want
        .iter()
        .fold(0f64, |m, &v| m.max((v as f64).abs()))
        .max(f64::MIN_POSITIVE);
    let worst = got
        .iter()
        .zip(&want)
        .map(|(&a, &b)| (a as f64 - b as f64).abs() / range)
        .fold(0f64, f64::max);
    Ok(worst)
}

fn fma_host() -> Option<Toolchain> {
    std::is_x86_feature_detected!("fma")
        .then_some(())
        .filter(|_| std::is_x86_feature_detected!("avx2"))
        .map(|_| Toolchain {
            cpu: Some("x86-64-v3"),
            ..HOST
        })
}

/// The C backend's build at `-O3 -march=native` (vectorized) against the evaluator's bits.
fn check_c(g: &Graph, inputs: &[Tensor], tag: &str) -> Result<(), String> {
    let dir = std::env::temp_dir().join(format!("kiln-floatk-c-{}-{tag}", std::process::id()));
    let exe = build_c(g, "m", &dir, &["-O3", "-march=native"])?;
    let got = exe.run(g, inputs);
    let _ = std::fs::remove_dir_all(&dir);
    let want = kiln_ir::eval::run(g, inputs).map_err(|e| e.to_string())?;
    let (got, want) = (
        got?[0].as_slice::<f32>().unwrap().to_vec(),
        want[0].as_slice::<f32>().unwrap().to_vec(),
    );
    match got
        .iter()
        .zip(&want)
        .position(|(a, b)| a.to_bits() != b.to_bits() && !(*a == 0.0 && *b == 0.0))
    {
        Some(i) => Err(format!("{tag}: element {i} is {}, the evaluator's {}", got[i], want[i])),
        None => Ok(()),
    }
}

fn run_all(cases: Vec<(String, Graph, Vec<Tensor>)>) {
    let fma = fma_host();
    let mut failures = Vec::new();
    let mut worst = 0f64;
    for (tag, g, inputs) in &cases {
        if let Err(e) = check(g, inputs, &HOST, true, &format!("{tag}-exact")) {
            failures.push(format!("portable: {e}"));
        }
        if let Err(e) = check_c(g, inputs, tag) {
            failures.push(format!("C: {e}"));
        }
        if let Some(tc) = &fma {
            match check(g, inputs, tc, false, &format!("{tag}-fma")) {
                Ok(w) if w <= FLOAT_TOL => worst = worst.max(w),
                Ok(w) => failures.push(format!("fma {tag}: off by {w:e} of max |y|")),
                Err(e) => failures.push(format!("fma {tag}: {e}")),
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    println!(
        "{} cases bit-exact portably and in C; with fma ({}) worst {worst:e} of max |y|",
        cases.len(),
        if fma.is_some() { "x86-64-v3" } else { "not on this host" }
    );
}

#[test]
fn depthwise_convolutions_match_the_evaluator() {
    let d = |n, c, hw, k, stride, dil, pads, bias, relu| DwCase {
        depthwise: true,
        n,
        c,
        hw,
        k,
        stride,
        dil,
        pads,
        bias,
        relu,
    };
    let cases = [
        // KWS-like: 3x3, same padding, 64 channels
        d(1, 64, (25, 5), (3, 3), (1, 1), (1, 1), [1, 1, 1, 1], true, true),
        // MobileNet stride 2, odd channel count, no bias
        d(1, 13, (9, 11), (3, 3), (2, 2), (1, 1), [0, 0, 1, 1], false, false),
        // dilation, uneven padding, two images
        d(2, 8, (7, 6), (3, 2), (1, 2), (2, 1), [2, 0, 1, 1], true, false),
        // 5x5: more taps than are held in registers; no padding at all
        d(1, 6, (8, 8), (5, 5), (1, 1), (1, 1), [0, 0, 0, 0], true, true),
        // 1x1 depthwise (a per-channel scale), and a 1-wide plane
        d(1, 5, (4, 1), (1, 1), (1, 1), (1, 1), [0, 0, 0, 0], true, false),
        d(1, 4, (1, 9), (1, 3), (1, 3), (1, 1), [0, 1, 0, 1], false, true),
        // a 1-D convolution over time, `[C][H][1]` (taken as the one row it is in memory):
        // a 5x1 window with stride 2 and padding above and below, and a dilated 3x1
        d(1, 20, (12, 1), (5, 1), (2, 1), (1, 1), [2, 0, 1, 0], true, true),
        d(1, 7, (9, 1), (3, 1), (1, 1), (2, 1), [0, 0, 0, 0], false, false),
    ];
    let graphs = cases
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let (g, x) = depthwise(c, 100 + i as u64);
            (format!("dw{i}"), g, x)
        })
        .collect();
    run_all(graphs);
}

#[test]
fn convolutions_match_the_evaluator() {
    let d = |c, hw, k, stride, pads, bias, relu| DwCase {
        depthwise: false,
        n: 1,
        c,
        hw,
        k,
        stride,
        dil: (1, 1),
        pads,
        bias,
        relu,
    };
    let cases = [
        // ResNet 3x3 same padding, rows of 13 (three vectors and a tail)
        d(6, (9, 13), (3, 3), (1, 1), [1, 1, 1, 1], true, true),
        // stride 2 with padding at the end only
        d(5, (8, 11), (3, 3), (2, 2), [0, 0, 1, 1], true, false),
        // 1x1 unit stride (the flat plane loop in C, no im2col natively)
        d(7, (5, 9), (1, 1), (1, 1), [0, 0, 0, 0], false, true),
        // a kernel wider than the padded input reaches for some columns
        d(3, (4, 3), (2, 5), (1, 1), [0, 2, 1, 2], true, false),
    ];
    let graphs = cases
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let (g, x) = depthwise(c, 400 + i as u64);
            (format!("conv{i}"), g, x)
        })
        .collect();
    run_all(graphs);
}

#[test]
fn matrix_products_match_the_evaluator() {
    let shapes = [
        (1, 1, 1),
        (4, 64, 8),
        (5, 7, 13),
        (9, 33, 17),
        (3, 1, 40),
        (12, 10, 9),
        (8, 16, 33),
        // the 256-bit kernels' block widths: one row 64+32+16+8 columns and a tail, panels
        // of four rows 24+24+16+8 and a tail, a depth of one
        (1, 20, 123),
        (6, 9, 77),
        (4, 1, 200),
    ];
    let graphs = shapes
        .iter()
        .enumerate()
        .map(|(i, &(m, k, n))| {
            let (g, x) = matmul(m, k, n, 200 + i as u64);
            (format!("mm{m}x{k}x{n}"), g, x)
        })
        .collect();
    run_all(graphs);
}

/// `Gemm` with a fused activation and f32 or binary16 (as `--quantize fp16` leaves them)
/// weights: the clamps the 256-bit kernels apply themselves, and one applied after them.
fn gemm(m: usize, k: usize, n: usize, fused: Option<UnaryOp>, half: bool, seed: u64) -> (Graph, Vec<Tensor>) {
    let mut g = Graph::new("gemm");
    let a = g.add_input("a", TensorType::new(Scalar::F32, vec![m, k]));
    let w = values(seed + 1, k * n);
    let b = if half {
        let h: Vec<half::f16> = w.iter().map(|&v| half::f16::from_f32(v)).collect();
        g.add_const("b", Tensor::from_vec(vec![k, n], h))
    } else {
        g.add_const("b", Tensor::from_vec(vec![k, n], w))
    };
    let op = Op::Gemm {
        alpha: 1.0,
        beta: 1.0,
        trans_a: false,
        trans_b: false,
        fused,
    };
    let out = vec![("y".to_string(), TensorType::new(Scalar::F32, vec![m, n]))];
    let (_, y) = g.add_node_typed("gemm", op, vec![a, b], out);
    g.add_output(y[0]);
    (g, vec![Tensor::from_vec(vec![m, k], values(seed, m * k))])
}

#[test]
fn fused_gemms_match_the_evaluator() {
    let clip = UnaryOp::Clip { min: -0.25, max: 0.5 };
    let cases = [
        (1, 16, 100, Some(UnaryOp::Relu), false),
        (3, 12, 90, Some(clip), false),
        (5, 7, 70, Some(UnaryOp::LeakyRelu { alpha: 0.125 }), false),
        (1, 24, 120, None, true),
        (2, 5, 45, Some(UnaryOp::Relu), true),
    ];
    let graphs = cases
        .iter()
        .enumerate()
        .map(|(i, &(m, k, n, f, h))| {
            let (g, x) = gemm(m, k, n, f, h, 300 + i as u64);
            (format!("gemm{i}"), g, x)
        })
        .collect();
    run_all(graphs);
}

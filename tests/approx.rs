//! Measures the native backend's own transcendental approximations against f64 on a dense
//! sweep of inputs and checks the bounds documented in `backends/src/cranelift/fx.rs`.
//! Each function runs through both the vector and the scalar code path (the sweep length
//! is not a multiple of four).

use kiln_ir::op::UnaryOp;
use kiln_ir::{Graph, Op, Scalar, Tensor, TensorType};
use kiln_tests::build_native;

/// Error of `got` against the exact `want`, in units in the last place of `want` (f32).
fn ulps(got: f32, want: f64) -> f64 {
    let w = want as f32;
    if got == w || (got.is_nan() && w.is_nan()) {
        return 0.0;
    }
    let ulp = (f32::from_bits(w.abs().to_bits() + 1) - w.abs()) as f64;
    (got as f64 - want).abs() / ulp
}

fn sweep(lo: f32, hi: f32, n: usize) -> Vec<f32> {
    (0..n).map(|i| lo + (hi - lo) * i as f32 / (n - 1) as f32).collect()
}

/// Runs `ops` (one graph output each) natively on `xs`.
fn native(ops: &[UnaryOp], xs: &[f32]) -> Vec<Vec<f32>> {
    let mut g = Graph::new("approx");
    let x = g.add_input("x", TensorType::new(Scalar::F32, vec![xs.len()]));
    for (i, &u) in ops.iter().enumerate() {
        let (_, y) = g
            .add_node(&format!("f{i}"), Op::Unary(u), vec![x], &[&format!("y{i}")])
            .unwrap();
        g.add_output(y[0]);
    }
    let dir = std::env::temp_dir().join(format!("kiln-approx-{}-{}", std::process::id(), ops[0].name()));
    let exe = build_native(&g, "approx", &dir).unwrap();
    let out = exe.run(&g, &[Tensor::from_vec(vec![xs.len()], xs.to_vec())]).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    out.iter().map(|t| t.as_slice::<f32>().unwrap().to_vec()).collect()
}

struct Case {
    op: UnaryOp,
    reference: fn(f64) -> f64,
    range: (f32, f32),
    max_ulps: f64,
    max_abs: f64,
}

fn erf(x: f64) -> f64 {
    libm::erf(x)
}

#[test]
fn approximations_stay_within_their_stated_bounds() {
    let cases = [
        Case {
            op: UnaryOp::Exp,
            reference: f64::exp,
            range: (-87.0, 88.0),
            max_ulps: 1.0,
            max_abs: 0.0,
        },
        Case {
            op: UnaryOp::Log,
            reference: f64::ln,
            range: (1e-30, 1e30),
            max_ulps: 3.0,
            max_abs: 0.0,
        },
        Case {
            op: UnaryOp::Log,
            reference: f64::ln,
            range: (0.25, 4.0),
            max_ulps: 3.0,
            max_abs: 0.0,
        },
        Case {
            op: UnaryOp::Tanh,
            reference: f64::tanh,
            range: (-10.0, 10.0),
            max_ulps: f64::INFINITY,
            max_abs: 1e-7,
        },
        Case {
            op: UnaryOp::Sigmoid,
            reference: |x| 1.0 / (1.0 + (-x).exp()),
            range: (-30.0, 30.0),
            max_ulps: f64::INFINITY,
            max_abs: 1e-7,
        },
        Case {
            op: UnaryOp::Erf,
            reference: erf,
            range: (-5.0, 5.0),
            max_ulps: f64::INFINITY,
            max_abs: 1.5e-7,
        },
        Case {
            op: UnaryOp::Sin,
            reference: f64::sin,
            range: (-100.0, 100.0),
            max_ulps: f64::INFINITY,
            max_abs: 1e-7,
        },
        Case {
            op: UnaryOp::Cos,
            reference: f64::cos,
            range: (-100.0, 100.0),
            max_ulps: f64::INFINITY,
            max_abs: 1e-7,
        },
        Case {
            op: UnaryOp::Atan,
            reference: f64::atan,
            range: (-50.0, 50.0),
            max_ulps: f64::INFINITY,
            max_abs: 2e-7,
        },
        Case {
            op: UnaryOp::Asin,
            reference: f64::asin,
            range: (-1.0, 1.0),
            max_ulps: f64::INFINITY,
            max_abs: 2e-7,
        },
    ];
    let mut report = Vec::new();
    for c in &cases {
        let xs = sweep(c.range.0, c.range.1, 100_001);
        let got = &native(&[c.op], &xs)[0];
        let (mut worst_ulp, mut worst_abs, mut at) = (0f64, 0f64, 0f32);
        for (&x, &y) in xs.iter().zip(got) {
            let want = (c.reference)(x as f64);
            let u = ulps(y, want);
            if u > worst_ulp {
                at = x;
            }
            worst_ulp = worst_ulp.max(u);
            worst_abs = worst_abs.max((y as f64 - want).abs());
        }
        println!(
            "{:<8} on [{}, {}]: max {worst_ulp:.2} ulp (at {at}), max abs error {worst_abs:.2e}",
            c.op.name(),
            c.range.0,
            c.range.1
        );
        if c.max_ulps.is_finite() {
            assert!(
                worst_ulp <= c.max_ulps,
                "{} exceeds {} ulp: {worst_ulp}",
                c.op.name(),
                c.max_ulps
            );
        } else {
            assert!(
                worst_abs <= c.max_abs,
                "{} exceeds {:e} absolute: {worst_abs:e}",
                c.op.name(),
                c.max_abs
            );
        }
        report.push(c.op.name());
    }
    assert_eq!(report.len(), cases.len());
}

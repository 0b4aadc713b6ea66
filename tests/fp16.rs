//! Reduced float (`--quantize fp16`): Conv/Gemm/MatMul weights stored as binary16 and
//! widened exactly as they are read. On every shipped model the weight bytes halve and the
//! outputs stay within `REL` of the float model's (see `REL`) on the reference inputs
//! (the only change is each weight rounded to binary16, a relative error of at most 2^-11);
//! the native object, the C and the Rust source builds reproduce the evaluator within the
//! float backends' usual bound, each reading the binary16 weights directly.

use kiln::PipelineOptions;
use kiln_ir::{Graph, Tensor};
use kiln_tests::{build_c, build_native, build_rust, case_import_options, compare, model_dirs, ref_input_sets};
use std::path::PathBuf;

/// max |fp16 - float| over max(1, max |float|), per output: relative for large outputs,
/// absolute for probability-scale ones (a VAD probability of 0.0017 may move by 5e-5).
const REL: f64 = 1e-2;
const RTOL: f64 = 1e-5;
const ATOL: f64 = 1e-6;

struct Case {
    name: String,
    dir: PathBuf,
    float: Graph,
    half: Graph,
    bytes: (usize, usize),
}

fn cases() -> Vec<Case> {
    model_dirs()
        .into_iter()
        .map(|dir| {
            let name = dir.file_name().unwrap().to_string_lossy().into_owned();
            let o = case_import_options(&dir);
            let m = kiln::load(&dir.join("model.onnx"), &o, &PipelineOptions::default(), |_, _| {}).unwrap();
            let h = kiln::quantize::fp16::to_fp16(&m.graph).unwrap();
            Case {
                name,
                dir,
                float: m.graph,
                half: h.graph,
                bytes: (h.bytes_f32, h.bytes_f16),
            }
        })
        .collect()
}

fn ref_sets(c: &Case) -> Vec<Vec<Tensor>> {
    ref_input_sets(&c.dir, c.float.inputs().len())
}

#[test]
fn fp16_models_halve_weights_and_stay_close_to_float() {
    let mut failures = Vec::new();
    for c in cases() {
        let (b32, b16) = c.bytes;
        assert!(b32 > 0 && b16 * 2 == b32, "{}: {b32} -> {b16} weight bytes", c.name);
        let mut worst = 0f64;
        let mut agree = (0, 0);
        for inputs in ref_sets(&c) {
            let want = kiln_ir::eval::run(&c.float, &inputs).unwrap();
            let got = kiln_ir::eval::run(&c.half, &inputs).unwrap();
            for (g, w) in got.iter().zip(&want) {
                let (gv, wv) = (g.to_f64_vec(), w.to_f64_vec());
                let scale = wv.iter().fold(1f64, |m, v| m.max(v.abs()));
                let err = gv.iter().zip(&wv).fold(0f64, |m, (a, b)| m.max((a - b).abs()));
                worst = worst.max(err / scale);
                if wv.len() > 1 {
                    let arg = |v: &[f64]| (0..v.len()).fold(0, |b, i| if v[i] > v[b] { i } else { b });
                    agree.0 += (arg(&gv) == arg(&wv)) as usize;
                    agree.1 += 1;
                }
            }
        }
        println!(
            "{}: weights {b32} -> {b16} bytes; max error {worst:.2e} of max(1, output range); argmax agrees {}/{}",
            c.name, agree.0, agree.1
        );
        if worst > REL {
            failures.push(format!("{}: error {worst:e} of the output range", c.name));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn fp16_builds_match_the_evaluator() {
    let cases = cases();
    let dir = std::env::temp_dir().join(format!("kiln-fp16-{}", std::process::id()));
    let list: Vec<(String, &Graph)> = cases.iter().map(|c| (format!("h_{}", c.name), &c.half)).collect();
    let refs: Vec<(&str, &Graph)> = list.iter().map(|(n, g)| (n.as_str(), *g)).collect();
    let rust = build_rust(&refs, &dir.join("rust"), false).unwrap();
    let mut failures = Vec::new();
    for (c, rs) in cases.iter().zip(&rust) {
        for (label, exe) in [
            ("C", build_c(&c.half, "model", &dir.join(format!("c-{}", c.name)), &[])),
            (
                "native",
                build_native(&c.half, "model", &dir.join(format!("n-{}", c.name))),
            ),
            (
                "Rust",
                Ok(kiln_tests::NativeExe {
                    exe: rs.exe.clone(),
                    dir: rs.dir.clone(),
                    runner: None,
                    runner_args: &[],
                }),
            ),
        ] {
            let res = (|| -> Result<f64, String> {
                let exe = exe?;
                let mut worst = 0f64;
                for inputs in ref_sets(c) {
                    let want = kiln_ir::eval::run(&c.half, &inputs).map_err(|e| e.to_string())?;
                    for (g, w) in exe.run(&c.half, &inputs)?.iter().zip(&want) {
                        let (r, _) = compare(g, w, RTOL, ATOL)?;
                        worst = worst.max(r);
                    }
                }
                if worst > 1.0 {
                    return Err(format!("{worst:.1}x the bound"));
                }
                Ok(worst)
            })();
            match res {
                Ok(w) => println!("{} fp16 ({label}): worst {w:.3} of the bound", c.name),
                Err(e) => failures.push(format!("{} ({label}): {e}", c.name)),
            }
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Every binary16 bit pattern widened by the native kernels (vectors, and the scalar tail of
/// a depthwise convolution's weights) must be the exact f32 the evaluator widens it to:
/// y = 0 + 1 * w for each of the 65,536 weights of a `[1, 1] x [1, 65536]` product (NaNs
/// compared as NaN, the rest bit for bit).
#[test]
fn every_half_widens_exactly() {
    use kiln_ir::{Op, Scalar, TensorType};
    let all: Vec<half::f16> = (0..=u16::MAX).map(half::f16::from_bits).collect();
    let mut g = Graph::new("widen");
    let a = g.add_input("a", TensorType::new(Scalar::F32, vec![1, 1]));
    let b = g.add_const("b", Tensor::from_vec(vec![1, all.len()], all));
    // as the fp16 rewrite builds it: binary16 weights, f32 activations and result
    let out = vec![("y".to_string(), TensorType::new(Scalar::F32, vec![1, 65536]))];
    let (_, y) = g.add_node_typed("mm", Op::MatMul, vec![a, b], out);
    g.add_output(y[0]);
    let inputs = vec![Tensor::from_vec(vec![1, 1], vec![1.0f32])];
    let want = kiln_ir::eval::run(&g, &inputs).unwrap()[0]
        .as_slice::<f32>()
        .unwrap()
        .to_vec();
    let subnormal = want
        .iter()
        .filter(|v| v.is_subnormal() || (v.abs() > 0.0 && v.abs() < 6.2e-5))
        .count();
    assert!(subnormal > 2000, "the sweep covers binary16 subnormals ({subnormal})");
    // the portable object, and where the host has them the 256-bit kernels (`vcvtph2ps`)
    let mut cpus = vec![None];
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
        cpus.push(Some("x86-64-v3"));
    }
    for cpu in cpus {
        let dir = std::env::temp_dir().join(format!("kiln-widen-{}-{cpu:?}", std::process::id()));
        let tc = kiln_tests::Toolchain {
            cpu,
            ..kiln_tests::HOST
        };
        let exe = kiln_tests::build_native_for(&g, "model", &dir, &tc).unwrap();
        let got = exe.run(&g, &inputs).unwrap()[0].as_slice::<f32>().unwrap().to_vec();
        let _ = std::fs::remove_dir_all(&dir);
        let bad: Vec<usize> = (0..want.len())
            .filter(|&i| {
                let (x, w) = (got[i], want[i]);
                !(x.to_bits() == w.to_bits() || (x.is_nan() && w.is_nan()))
            })
            .collect();
        assert!(
            bad.is_empty(),
            "{cpu:?}: {} halves widened wrongly, first {:#06x}: {} vs {}",
            bad.len(),
            bad[0],
            got[bad[0]],
            want[bad[0]]
        );
    }
}

/// Rounding to binary16 on every backend gives the evaluator's bits (`f16::from_f64`, ties
/// to even, once from f64): every finite binary16 value, each halfway point between
/// neighbours and the points just off it, from f32 and from f64 (where rounding through
/// f32 first would tie wrongly), plus binary16 arithmetic (`Add` computed in f32, one
/// rounding).
#[test]
fn rounding_to_half_matches_the_evaluator_on_every_backend() {
    use kiln_ir::{Op, Scalar, TensorType};
    let (mut v32, mut v64) = (Vec::new(), Vec::new());
    for bits in 0..0x7bffu16 {
        let (lo, hi) = (
            half::f16::from_bits(bits).to_f64(),
            half::f16::from_bits(bits + 1).to_f64(),
        );
        let mid = (lo + hi) / 2.0;
        let off = (hi - lo) * 2f64.powi(-30);
        v32.extend([lo as f32, mid as f32, -(mid as f32)]);
        v64.extend([mid, mid + off, mid - off, -(mid + off)]);
    }
    v32.extend([70000.0, f32::INFINITY, 1.0e-9, -0.0]);
    v64.extend([65520.0, 65519.99, 2f64.powi(-25), 2f64.powi(-25) * 1.000001]);
    let (n32, n64) = (v32.len(), v64.len());
    let mut g = Graph::new("round");
    let a = g.add_input("a", TensorType::new(Scalar::F32, vec![n32]));
    let b = g.add_input("b", TensorType::new(Scalar::F64, vec![n64]));
    let (_, ha) = g
        .add_node("ca", Op::Cast { to: Scalar::F16 }, vec![a], &["ha"])
        .unwrap();
    let (_, hb) = g
        .add_node("cb", Op::Cast { to: Scalar::F16 }, vec![b], &["hb"])
        .unwrap();
    let (_, s) = g
        .add_node(
            "sum",
            Op::Binary(kiln_ir::op::BinaryOp::Add),
            vec![ha[0], ha[0]],
            &["s"],
        )
        .unwrap();
    for v in [ha[0], hb[0], s[0]] {
        g.add_output(v);
    }
    let sets = vec![vec![Tensor::from_vec(vec![n32], v32), Tensor::from_vec(vec![n64], v64)]];
    let dir = std::env::temp_dir().join(format!("kiln-round-half-{}", std::process::id()));
    let failures = kiln_tests::bit_exact_on_every_backend(&g, &sets, "round", &dir);
    let _ = std::fs::remove_dir_all(&dir);
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

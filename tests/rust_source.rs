//! The Rust source backend: every shipped model, float and int8, emitted as Rust, built
//! into one program with cargo under `-D warnings` (release, overflow checks on), run, and
//! compared with the evaluator — float outputs within |Δ| ≤ 1e-6 + 1e-5·|eval| (the same
//! float order; Kiln's exp/tanh approximations and libm stand in for std), integer tensors
//! bit for bit, through `run` and through `run_int`.

use kiln::PipelineOptions;
use kiln::quantize::{QuantOptions, quantize_int8};
use kiln_ir::{Graph, Tensor};
use kiln_tests::{build_rust, case_import_options, compare, expose_integers, model_dirs, ref_input_sets};
use std::path::PathBuf;

const RTOL: f64 = 1e-5;
const ATOL: f64 = 1e-6;

/// Models the backend must compile (the rest must be refused with the nodes named).
const MUST: &[&str] = &[
    "digits_cnn",
    "mlperf_tiny_ad_fc_autoencoder",
    "mlperf_tiny_ic_resnet8",
    "mlperf_tiny_kws_dscnn",
    "mlperf_tiny_sww_dscnn",
    "mlperf_tiny_vww_mobilenetv1_025",
    "rapidocr_cls_mobile_v2",
    "silero_vad_16k",
];

struct Case {
    name: String,
    dir: PathBuf,
    float: Graph,
    int8: Option<Graph>,
}

fn cases() -> Vec<Case> {
    model_dirs()
        .into_iter()
        .map(|dir| {
            let name = dir.file_name().unwrap().to_string_lossy().into_owned();
            let m = kiln::load(
                &dir.join("model.onnx"),
                &case_import_options(&dir),
                &PipelineOptions::default(),
                |_, _| {},
            )
            .unwrap();
            let int8 = dir.join("calib").is_dir().then(|| {
                quantize_int8(&m.graph, &dir.join("calib"), &QuantOptions::default(), |_, _| {})
                    .unwrap_or_else(|e| panic!("{name}: {e}"))
                    .graph
            });
            Case {
                name,
                dir,
                float: m.graph,
                int8,
            }
        })
        .collect()
}

fn supported(g: &Graph) -> bool {
    let plan = kiln::compile::plan_rust(g, &kiln::compile::parse_target("host").unwrap()).unwrap();
    plan.order
        .iter()
        .all(|&n| kiln_backends::rust::unsupported(g, n).is_none())
}

/// The int8 graph's view through `run_int`: outputs are the int8 values at the boundary.
fn int_view(g: &Graph) -> Option<Graph> {
    let api = kiln_backends::header::int_boundary(g)?;
    let mut v = g.clone();
    v.set_outputs(api.outputs.iter().map(|q| q.value).collect());
    Some(v)
}

#[test]
fn models_as_rust_source_match_the_evaluator() {
    let cases = cases();
    let mut graphs: Vec<(String, Graph)> = Vec::new();
    for c in &cases {
        let ok = supported(&c.float);
        assert!(
            ok || !MUST.contains(&c.name.as_str()),
            "{}: not compiled to Rust",
            c.name
        );
        if ok {
            graphs.push((format!("f_{}", c.name), c.float.clone()));
        } else {
            let opts = kiln::compile::CompileOptions {
                emit: kiln::compile::Emit::RustSource,
                target: kiln::compile::parse_target("host").unwrap(),
                prefix: "m".into(),
                static_arena: false,
            };
            let err = kiln::compile::compile(&c.float, &opts, "m")
                .err()
                .expect("refused")
                .to_string();
            assert!(err.contains("node `"), "{err}");
            println!("{}: refused: {}", c.name, err.replace('\n', " "));
        }
        if let Some(q) = &c.int8 {
            assert!(
                supported(q) || !MUST.contains(&c.name.as_str()),
                "{}: int8 not compiled to Rust",
                c.name
            );
            if supported(q) {
                graphs.push((format!("q_{}", c.name), expose_integers(q)));
                graphs.push((format!("i_{}", c.name), q.clone()));
                if c.name.starts_with("mlperf_tiny") {
                    graphs.push((format!("m4_q_{}", c.name), expose_integers(q)));
                }
            }
        }
    }
    let dir = std::env::temp_dir().join(format!("kiln-rust-src-{}", std::process::id()));
    let list: Vec<(&str, &Graph)> = graphs.iter().map(|(n, g)| (n.as_str(), g)).collect();
    let t = std::time::Instant::now();
    let exes = build_rust(&list, &dir, true).unwrap();
    println!(
        "{} builds compiled by cargo in {:.1} s",
        graphs.len(),
        t.elapsed().as_secs_f64()
    );
    let mut failures = Vec::new();
    for c in &cases {
        for (label, g_run, view) in [
            ("float", format!("f_{}", c.name), None),
            ("int8", format!("q_{}", c.name), None),
            ("int8, Cortex-M kernels", format!("m4_q_{}", c.name), None),
            (
                "int8 run_int",
                format!("i_{}_int", c.name),
                c.int8.as_ref().and_then(int_view),
            ),
        ] {
            let Some(exe) = exes
                .iter()
                .find(|e| e.exe.file_name().unwrap().to_string_lossy() == g_run)
            else {
                continue;
            };
            let key = g_run.trim_end_matches("_int");
            let g = &graphs.iter().find(|(n, _)| n == key).unwrap().1;
            let res = (|| -> Result<String, String> {
                let mut worst = 0f64;
                let mut set = 0;
                for inputs in ref_input_sets(&c.dir, c.float.inputs().len()) {
                    let (want, got) = match &view {
                        None => (
                            kiln_ir::eval::run(g, &inputs).map_err(|e| e.to_string())?,
                            exe.run(g, &inputs)?,
                        ),
                        Some(v) => {
                            let api = kiln_backends::header::int_boundary(g).unwrap();
                            let ints: Vec<Tensor> = inputs
                                .iter()
                                .zip(&api.inputs)
                                .map(|(t, q)| {
                                    let x = t.to_f32_vec();
                                    let quantize = |lo, hi| {
                                        x.iter()
                                            .map(move |&x| kiln_runtime::quantize(x, q.scale, q.zero_point, lo, hi))
                                    };
                                    if q.scalar == kiln_ir::Scalar::I16 {
                                        let v: Vec<i16> = quantize(-32768, 32767).map(|v| v as i16).collect();
                                        Tensor::from_vec(t.shape.clone(), v)
                                    } else {
                                        let v: Vec<i8> = quantize(-128, 127).map(|v| v as i8).collect();
                                        Tensor::from_vec(t.shape.clone(), v)
                                    }
                                })
                                .collect();
                            (
                                kiln_ir::eval::run(v, &inputs).map_err(|e| e.to_string())?,
                                exe.run(v, &ints)?,
                            )
                        }
                    };
                    for (i, (a, b)) in got.iter().zip(&want).enumerate() {
                        if label == "float" || b.data.scalar().is_float() {
                            let (r, d) =
                                compare(a, b, RTOL, ATOL).map_err(|e| format!("set {set}: output {i}: {e}"))?;
                            if r > 1.0 {
                                return Err(format!("set {set}: output {i} off by {d:e} ({r:.1}x the bound)"));
                            }
                            worst = worst.max(r);
                        } else if a.data.to_le_bytes() != b.data.to_le_bytes() {
                            return Err(format!("set {set}: output {i} differs from the evaluator"));
                        }
                    }
                    set += 1;
                }
                if set == 0 {
                    return Err("no reference inputs".into());
                }
                Ok(if label == "float" {
                    format!("{set} inputs, worst {worst:.3} of the bound")
                } else {
                    format!("{set} inputs, integer tensors bit-exact")
                })
            })();
            match res {
                Ok(s) => println!("{} ({label}, Rust source): {s}", c.name),
                Err(e) => failures.push(format!("{} ({label}): {e}", c.name)),
            }
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    assert!(failures.is_empty(), "Rust source failures:\n{}", failures.join("\n"));
}

#[test]
fn emission_is_deterministic() {
    let c = &cases()[0];
    let opts = kiln::compile::CompileOptions {
        emit: kiln::compile::Emit::RustSource,
        target: kiln::compile::parse_target("host").unwrap(),
        prefix: "m".into(),
        static_arena: false,
    };
    let a = kiln::compile::compile(&c.float, &opts, "m").unwrap().files;
    let b = kiln::compile::compile(&c.float, &opts, "m").unwrap().files;
    assert_eq!(a, b);
}

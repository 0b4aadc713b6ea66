//! Every model in `tests/models/` compiled by the Cranelift backend for the host, linked
//! into a C program with the system `cc`, and run: outputs must match the reference
//! evaluator within |Δ| ≤ 1e-6 + 1e-5·|eval| (the kernels reproduce the evaluator's float
//! operations; what differs is Kiln's exp/tanh approximations) and ONNX Runtime within the
//! model test's bound.

use kiln::{ImportOptions, PipelineOptions};
use kiln_tests::{build_native, compare, repo};
use std::collections::HashMap;

const RTOL: f64 = 1e-5;
const ATOL: f64 = 1e-6;

fn options(dir: &std::path::Path) -> ImportOptions {
    let mut o = ImportOptions::default();
    if let Ok(text) = std::fs::read_to_string(dir.join("case.toml")) {
        for line in text.lines().map(str::trim) {
            if let Some(v) = line.strip_prefix("input_shape") {
                let (name, dims) = v
                    .trim()
                    .trim_start_matches('=')
                    .trim()
                    .trim_matches('"')
                    .split_once('=')
                    .unwrap();
                o.input_shapes
                    .insert(name.into(), dims.split(',').map(|d| d.parse().unwrap()).collect());
            }
        }
    }
    o
}

#[test]
fn models_run_natively_like_the_evaluator() {
    let root = repo().join("tests/models");
    let mut dirs: Vec<_> = std::fs::read_dir(&root)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("model.onnx").exists())
        .collect();
    dirs.sort();
    let mut failures = Vec::new();
    let mut report = HashMap::new();
    for d in &dirs {
        let name = d.file_name().unwrap().to_string_lossy().into_owned();
        let res = (|| -> Result<String, String> {
            let m = kiln::load(
                &d.join("model.onnx"),
                &options(d),
                &PipelineOptions::default(),
                |_, _| {},
            )
            .map_err(|e| e.to_string())?;
            let build = std::env::temp_dir().join(format!("kiln-native-{}-{name}", std::process::id()));
            let exe = build_native(&m.graph, "model", &build)?;
            let mut worst = 0f64;
            let mut sets: Vec<_> = std::fs::read_dir(d.join("ref"))
                .unwrap()
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.is_dir())
                .collect();
            sets.sort();
            for set in &sets {
                let inputs: Vec<_> = (0..m.graph.inputs().len())
                    .map(|i| kiln::npy::read(&set.join(format!("input_{i}.npy"))).unwrap())
                    .collect();
                let want = kiln_ir::eval::run(&m.graph, &inputs).map_err(|e| e.to_string())?;
                let got = exe.run(&m.graph, &inputs)?;
                for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                    let (r, a) =
                        compare(g, w, RTOL, ATOL).map_err(|e| format!("{}: output {i}: {e}", set.display()))?;
                    if r > 1.0 {
                        return Err(format!(
                            "{}: output {i} differs from the evaluator by {a:e} ({r:.1}x the bound)",
                            set.display()
                        ));
                    }
                    worst = worst.max(r);
                }
            }
            let _ = std::fs::remove_dir_all(&build);
            Ok(format!("{} sets, worst {worst:.3} of the bound", sets.len()))
        })();
        match res {
            Ok(s) => {
                println!("{name}: {s}");
                report.insert(name, s);
            }
            Err(e) => failures.push(format!("{name}: {e}")),
        }
    }
    assert!(failures.is_empty(), "native failures:\n{}", failures.join("\n"));
    assert_eq!(report.len(), dirs.len());
}

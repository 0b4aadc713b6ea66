//! The real models in `tests/models/`: each loads, verifies, and the evaluator reproduces
//! the ONNX Runtime reference outputs within |got - want| <= 1e-5 + 1e-4 * |want| (the
//! bound the model set's README suggests for fp32 backends); a model's `case.toml` may
//! override `atol` with a written reason.

use kiln::{ImportOptions, PipelineOptions};
use kiln_tests::{compare, repo};
use std::collections::HashMap;
use std::path::Path;

const RTOL: f64 = 1e-4;
const ATOL: f64 = 1e-5;

/// Settings from an optional `case.toml`: `input_shape = "x=1,3,48,192"` lines and an
/// `atol` override (each override says why in a comment there).
fn case_settings(dir: &Path) -> (ImportOptions, f64) {
    let mut input_shapes = HashMap::new();
    let mut atol = ATOL;
    if let Ok(text) = std::fs::read_to_string(dir.join("case.toml")) {
        for line in text.lines().map(str::trim).filter(|l| !l.starts_with('#')) {
            let Some((key, v)) = line.split_once('=') else { continue };
            let v = v.trim().trim_matches('"');
            match key.trim() {
                "input_shape" => {
                    let (name, dims) = v.split_once('=').expect("input_shape = \"name=d0,d1\"");
                    input_shapes.insert(
                        name.to_string(),
                        dims.split(',').map(|d| d.parse().expect("dim")).collect(),
                    );
                }
                "atol" => atol = v.parse().expect("atol is a number"),
                k => panic!("{}: unknown key `{k}`", dir.display()),
            }
        }
    }
    (
        ImportOptions {
            input_shapes,
            ..Default::default()
        },
        atol,
    )
}

fn check_model(dir: &Path) -> Result<String, String> {
    let (opts, atol) = case_settings(dir);
    let model = kiln::load(&dir.join("model.onnx"), &opts, &PipelineOptions::default(), |_, _| {})
        .map_err(|e| e.to_string())?;
    kiln_ir::verify::verify(&model.graph).map_err(|e| e.to_string())?;
    let mut sets: Vec<_> = std::fs::read_dir(dir.join("ref"))
        .map_err(|e| e.to_string())?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir())
        .collect();
    sets.sort();
    if sets.is_empty() {
        return Err("no reference data".into());
    }
    let mut worst = 0f64;
    let mut max_abs = 0f64;
    let start = std::time::Instant::now();
    for set in &sets {
        let inputs: Vec<_> = (0..model.graph.inputs().len())
            .map(|i| kiln::npy::read(&set.join(format!("input_{i}.npy"))).map_err(|e| e.to_string()))
            .collect::<Result<_, _>>()?;
        let got = kiln_ir::eval::run(&model.graph, &inputs).map_err(|e| e.to_string())?;
        for (i, g) in got.iter().enumerate() {
            let want = kiln::npy::read(&set.join(format!("output_{i}.npy"))).map_err(|e| e.to_string())?;
            let (w, a) = compare(g, &want, RTOL, atol).map_err(|e| format!("{}: output {i}: {e}", set.display()))?;
            if w > 1.0 {
                return Err(format!(
                    "{}: output {i} off by {a:e} ({w:.2}x the bound)",
                    set.display()
                ));
            }
            worst = worst.max(w);
            max_abs = max_abs.max(a);
        }
    }
    Ok(format!(
        "{} sets, max abs diff {max_abs:.3e}, worst {:.3} of the bound, {:.1} ms per inference (test build)",
        sets.len(),
        worst,
        start.elapsed().as_secs_f64() * 1e3 / sets.len() as f64
    ))
}

#[test]
fn real_models_match_onnx_runtime() {
    let root = repo().join("tests/models");
    let mut dirs: Vec<_> = std::fs::read_dir(&root)
        .expect("tests/models")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("model.onnx").exists())
        .collect();
    dirs.sort();
    assert!(dirs.len() >= 7, "expected the 7 shipped models, found {}", dirs.len());
    let mut failures = Vec::new();
    for d in &dirs {
        let name = d.file_name().unwrap().to_string_lossy().into_owned();
        match check_model(d) {
            Ok(s) => println!("{name}: {s}"),
            Err(e) => failures.push(format!("{name}: {e}")),
        }
    }
    assert!(failures.is_empty(), "model failures:\n{}", failures.join("\n"));
}

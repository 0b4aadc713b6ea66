//! The C backend on the host: every shipped model emitted as C99, compiled with
//! `cc -std=c99 -Wall -Wextra -Werror -pedantic`, run, and compared with the evaluator
//! (|Δ| ≤ 1e-6 + 1e-5·|eval|: same float order except reductions, which sum in f32, and
//! the shared exp/tanh approximations); then once more under AddressSanitizer and
//! UndefinedBehaviorSanitizer. Emission is deterministic.

use kiln::{ImportOptions, PipelineOptions};
use kiln_tests::{build_c, compare, repo};

const RTOL: f64 = 1e-5;
const ATOL: f64 = 1e-6;

fn models() -> Vec<(String, kiln::Model, std::path::PathBuf)> {
    let root = repo().join("tests/models");
    let mut dirs: Vec<_> = std::fs::read_dir(&root)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("model.onnx").exists())
        .collect();
    dirs.sort();
    dirs.into_iter()
        .map(|d| {
            let name = d.file_name().unwrap().to_string_lossy().into_owned();
            let mut opts = ImportOptions::default();
            if name.starts_with("rapidocr") {
                opts.input_shapes.insert("x".into(), vec![1, 3, 48, 192]);
            }
            let m = kiln::load(&d.join("model.onnx"), &opts, &PipelineOptions::default(), |_, _| {}).unwrap();
            (name, m, d)
        })
        .collect()
}

fn check(sanitize: bool) {
    let flags: &[&str] = if sanitize {
        &["-fsanitize=address,undefined", "-fno-sanitize-recover=all", "-g"]
    } else {
        &[]
    };
    let mut failures = Vec::new();
    for (name, m, d) in models() {
        let res = (|| -> Result<String, String> {
            let build = std::env::temp_dir().join(format!("kiln-c-{}-{sanitize}-{name}", std::process::id()));
            let exe = build_c(&m.graph, "model", &build, flags)?;
            let sets = if sanitize {
                vec!["test_data_set_0"]
            } else {
                vec!["test_data_set_0", "test_data_set_1", "test_data_set_2"]
            };
            let mut worst = 0f64;
            for set in sets {
                let dir = d.join("ref").join(set);
                let inputs: Vec<_> = (0..m.graph.inputs().len())
                    .map(|i| kiln::npy::read(&dir.join(format!("input_{i}.npy"))).unwrap())
                    .collect();
                let want = kiln_ir::eval::run(&m.graph, &inputs).map_err(|e| e.to_string())?;
                let got = exe.run(&m.graph, &inputs)?;
                for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                    let (r, a) = compare(g, w, RTOL, ATOL).map_err(|e| format!("{set}: output {i}: {e}"))?;
                    if r > 1.0 {
                        return Err(format!(
                            "{set}: output {i} differs from the evaluator by {a:e} ({r:.1}x the bound)"
                        ));
                    }
                    worst = worst.max(r);
                }
            }
            let _ = std::fs::remove_dir_all(&build);
            Ok(format!("worst {worst:.3} of the bound"))
        })();
        match res {
            Ok(s) => println!("{name} (C{}): {s}", if sanitize { ", ASan+UBSan" } else { "" }),
            Err(e) => failures.push(format!("{name}: {e}")),
        }
    }
    assert!(failures.is_empty(), "C backend failures:\n{}", failures.join("\n"));
}

#[test]
fn models_compile_as_strict_c99_and_match_the_evaluator() {
    check(false);
}

#[test]
fn models_run_clean_under_sanitizers() {
    check(true);
}

#[test]
fn c_emission_is_deterministic() {
    let (_, m, _) = models().into_iter().find(|(n, _, _)| n.contains("kws")).unwrap();
    let opts = kiln::compile::CompileOptions {
        emit: kiln::compile::Emit::C,
        target: kiln::compile::parse_target("host").unwrap(),
        prefix: "kws".into(),
        static_arena: false,
    };
    let a = kiln::compile::compile(&m.graph, &opts, "model.onnx").unwrap().files;
    let b = kiln::compile::compile(&m.graph, &opts, "model.onnx").unwrap().files;
    assert_eq!(a, b);
}

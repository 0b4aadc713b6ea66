//! The native backend for aarch64 and riscv64 Linux: every shipped model compiled for the
//! target, linked statically with the cross gcc, run under qemu-user, and compared with the
//! evaluator on the host (AArch64 fuses multiply-add, so float outputs are held to the native
//! backend's range-relative tolerance, `compare_range`; int8 builds of the models with calibration
//! data, byte for byte). Toolchains come from
//! `scripts/setup-cross.sh`; without them the test says so and passes, unless
//! `KILN_REQUIRE_CROSS` is set (CI sets it).

use kiln::{ImportOptions, PipelineOptions};
use kiln_tests::{AARCH64, NATIVE_ABS, NATIVE_REL, RISCV64, Toolchain, build_native_for, compare_range, repo};

fn run_models(tc: &Toolchain) {
    if !tc.available() {
        assert!(
            std::env::var_os("KILN_REQUIRE_CROSS").is_none(),
            "{} toolchain missing: run scripts/setup-cross.sh",
            tc.triple
        );
        println!(
            "{}: toolchain not installed (scripts/setup-cross.sh); skipped",
            tc.triple
        );
        return;
    }
    let root = repo().join("tests/models");
    let mut dirs: Vec<_> = std::fs::read_dir(&root)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("model.onnx").exists())
        .collect();
    dirs.sort();
    let mut failures = Vec::new();
    for d in &dirs {
        let name = d.file_name().unwrap().to_string_lossy().into_owned();
        let res = (|| -> Result<String, String> {
            let mut opts = ImportOptions::default();
            if name.starts_with("rapidocr") {
                opts.input_shapes.insert("x".into(), vec![1, 3, 48, 192]);
            }
            let m = kiln::load(&d.join("model.onnx"), &opts, &PipelineOptions::default(), |_, _| {})
                .map_err(|e| e.to_string())?;
            // The float model, and its int8 build (integer tensors compared exactly) where
            // the model has calibration data.
            let mut graphs = vec![("float", m.graph.clone())];
            if d.join("calib").is_dir() {
                let q = kiln::quantize::quantize_int8(&m.graph, &d.join("calib"), &Default::default(), |_, _| {})
                    .map_err(|e| e.to_string())?;
                graphs.push(("int8", kiln_tests::expose_integers(&q.graph)));
            }
            let mut worst = 0f64;
            for (mode, g) in &graphs {
                let build =
                    std::env::temp_dir().join(format!("kiln-cross-{}-{}-{name}-{mode}", std::process::id(), tc.triple));
                let exe = build_native_for(g, "model", &build, tc)?;
                // Two reference sets per model keep the emulated runs short.
                for set in ["test_data_set_0", "test_data_set_1"] {
                    let dir = d.join("ref").join(set);
                    let inputs: Vec<_> = (0..m.graph.inputs().len())
                        .map(|i| kiln::npy::read(&dir.join(format!("input_{i}.npy"))).unwrap())
                        .collect();
                    let want = kiln_ir::eval::run(g, &inputs).map_err(|e| e.to_string())?;
                    let got = exe.run(g, &inputs)?;
                    for (i, (gt, w)) in got.iter().zip(&want).enumerate() {
                        let (r, a) = compare_range(gt, w, NATIVE_REL, NATIVE_ABS)
                            .map_err(|e| format!("{mode} {set}: output {i}: {e}"))?;
                        if r > 1.0 {
                            return Err(format!(
                                "{set}: output {i} differs from the evaluator by {a:e} ({r:.1}x the bound)"
                            ));
                        }
                        worst = worst.max(r);
                    }
                }
                let _ = std::fs::remove_dir_all(&build);
            }
            Ok(format!("worst {worst:.3} of the bound; {} build(s)", graphs.len()))
        })();
        match res {
            Ok(s) => println!("{} {name}: {s}", tc.triple),
            Err(e) => failures.push(format!("{name}: {e}")),
        }
    }
    assert!(failures.is_empty(), "{} failures:\n{}", tc.triple, failures.join("\n"));
}

#[test]
fn aarch64_models_match_the_evaluator() {
    run_models(&AARCH64);
}

#[test]
fn riscv64_models_match_the_evaluator() {
    run_models(&RISCV64);
}

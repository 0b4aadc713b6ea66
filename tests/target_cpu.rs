//! `--target-cpu`: objects that assume more than the portable default give the evaluator's
//! results where the CPU has the features, and `<prefix>_run` returns `ERR_CPU` (the
//! harness exits with 10 + that code) where it lacks them, instead of dying on an illegal
//! instruction. Other CPUs come from qemu-user's `-cpu` (`scripts/setup-cross.sh`).

use kiln::{ImportOptions, PipelineOptions};
use kiln_ir::{Graph, Tensor};
use kiln_tests::{NATIVE_ABS, NATIVE_REL, Toolchain, build_native_for, compare_range, repo};

/// A shipped model in int8 (integer tensors exposed) and, with `float`, in float, each
/// with its first reference input.
fn builds(name: &str, float: bool) -> Vec<(String, Graph, Vec<Tensor>)> {
    let d = repo().join("tests/models").join(name);
    let m = kiln::load(
        &d.join("model.onnx"),
        &ImportOptions::default(),
        &PipelineOptions::default(),
        |_, _| {},
    )
    .unwrap();
    let q = kiln::quantize::quantize_int8(&m.graph, &d.join("calib"), &Default::default(), |_, _| {}).unwrap();
    let input = kiln::npy::read(&d.join("ref/test_data_set_0/input_0.npy")).unwrap();
    let mut v = vec![(
        format!("{name} int8"),
        kiln_tests::expose_integers(&q.graph),
        vec![input.clone()],
    )];
    if float {
        v.push((format!("{name} float"), m.graph, vec![input]));
    }
    v
}

fn kws() -> Vec<(String, Graph, Vec<Tensor>)> {
    builds("mlperf_tiny_kws_dscnn", true)
}

/// Builds KWS for `tc` and checks it (see [`check_on`]).
fn check(tc: &Toolchain, tag: &str, refused: bool) -> Result<(), String> {
    check_on(tc, tag, refused, &kws())
}

/// Builds every graph for `tc` and checks it against the evaluator (integers bit for bit,
/// float within the native backend's bound), or, with `refused`, that it returns `ERR_CPU`.
fn check_on(tc: &Toolchain, tag: &str, refused: bool, graphs: &[(String, Graph, Vec<Tensor>)]) -> Result<(), String> {
    for (k, (mode, g, inputs)) in graphs.iter().enumerate() {
        let dir = std::env::temp_dir().join(format!("kiln-cpu-{}-{tag}-{k}", std::process::id()));
        let exe = build_native_for(g, "model", &dir, tc)?;
        let got = exe.run(g, inputs);
        let _ = std::fs::remove_dir_all(&dir);
        if refused {
            let err = match got {
                Ok(_) => return Err(format!("{tag} {mode}: ran on a CPU without the features")),
                Err(e) => e,
            };
            let code = 10 + kiln_backends::cranelift::cpu::ERR_CPU;
            if !err.contains(&format!("exit status: {code}")) {
                return Err(format!("{tag} {mode}: expected exit status {code}, got {err}"));
            }
            continue;
        }
        let want = kiln_ir::eval::run(g, inputs).map_err(|e| e.to_string())?;
        for (i, (a, b)) in got?.iter().zip(&want).enumerate() {
            if b.data.scalar().is_float() {
                let (r, d) = compare_range(a, b, NATIVE_REL, NATIVE_ABS)?;
                if r > 1.0 {
                    return Err(format!("{tag} {mode}: output {i} off by {d:e}"));
                }
            } else if a.data.to_le_bytes() != b.data.to_le_bytes() {
                return Err(format!("{tag} {mode}: output {i} differs from the evaluator"));
            }
        }
    }
    Ok(())
}

fn has(cmd: &str) -> bool {
    std::process::Command::new(cmd)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// On a machine with VNNI (this project's) the int8 pointwise layers run on `vpdpbusd`.
#[test]
fn native_cpu_objects_match_the_evaluator() {
    let tc = Toolchain {
        cpu: Some("native"),
        ..kiln_tests::HOST
    };
    let mut graphs = kws();
    for m in [
        "mlperf_tiny_vww_mobilenetv1_025",
        "mlperf_tiny_ic_resnet8",
        "mlperf_tiny_ad_fc_autoencoder",
        "mlperf_tiny_sww_dscnn",
    ] {
        graphs.extend(builds(m, false));
    }
    // KWS hybrid (its depthwise and pointwise layers on the int8 kernels with a run-time
    // input scale) and fp16 (weights widened per panel / per call)
    let (_, float, inputs) = kws().pop().unwrap();
    let hybrid = kiln::quantize::dynamic::to_dynamic(&float, &[]).unwrap().graph;
    let half = kiln::quantize::fp16::to_fp16(&float).unwrap().graph;
    graphs.push(("KWS hybrid".into(), hybrid, inputs.clone()));
    graphs.push(("KWS fp16".into(), half, inputs));
    check_on(&tc, "native", false, &graphs).unwrap();
}

#[test]
fn objects_refuse_cpus_without_their_features() {
    if !cfg!(target_arch = "x86_64") || !has("qemu-x86_64-static") {
        assert!(
            std::env::var_os("KILN_REQUIRE_CROSS").is_none(),
            "qemu-x86_64-static missing: run scripts/setup-cross.sh"
        );
        println!("qemu-x86_64-static not installed; skipped");
        return;
    }
    let v3 = |cpu: &'static [&'static str]| Toolchain {
        triple: "x86_64-unknown-linux-gnu",
        cc: "cc",
        runner: Some("qemu-x86_64-static"),
        runner_args: cpu,
        cpu: Some("x86-64-v3"),
    };
    // Nehalem has SSE4.2 but no AVX: the x86-64-v3 object refuses, the default one runs.
    let mut failures = Vec::new();
    failures.extend(check(&v3(&["-cpu", "Nehalem"]), "v3-on-nehalem", true).err());
    let default = Toolchain {
        cpu: None,
        ..v3(&["-cpu", "Nehalem"])
    };
    failures.extend(check(&default, "default-on-nehalem", false).err());
    // Haswell has every x86-64-v3 feature.
    failures.extend(check(&v3(&["-cpu", "Haswell"]), "v3-on-haswell", false).err());
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn aarch64_dotprod_objects_check_the_cpu() {
    let tc = |cpu: &'static [&'static str]| Toolchain {
        cpu: Some("+dotprod"),
        runner_args: cpu,
        ..kiln_tests::AARCH64
    };
    if !tc(&[]).available() {
        assert!(
            std::env::var_os("KILN_REQUIRE_CROSS").is_none(),
            "aarch64 toolchain missing: run scripts/setup-cross.sh"
        );
        println!("aarch64 toolchain not installed; skipped");
        return;
    }
    let mut failures = Vec::new();
    failures.extend(check(&tc(&["-cpu", "max"]), "dotprod-on-max", false).err());
    failures.extend(check(&tc(&["-cpu", "cortex-a53"]), "dotprod-on-a53", true).err());
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

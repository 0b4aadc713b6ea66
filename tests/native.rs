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

#[test]
fn two_models_with_different_prefixes_link_into_one_program() {
    let dir = std::env::temp_dir().join(format!("kiln-two-models-{}", std::process::id()));
    let mut graphs = Vec::new();
    for (prefix, model) in [("kws", "mlperf_tiny_kws_dscnn"), ("sww", "mlperf_tiny_sww_dscnn")] {
        let d = repo().join("tests/models").join(model);
        let m = kiln::load(
            &d.join("model.onnx"),
            &ImportOptions::default(),
            &PipelineOptions::default(),
            |_, _| {},
        )
        .unwrap();
        let opts = kiln::compile::CompileOptions {
            emit: kiln::compile::Emit::Object,
            target: kiln::compile::parse_target("host").unwrap(),
            prefix: prefix.into(),
            static_arena: false,
        };
        let out = kiln::compile::compile(&m.graph, &opts, model).unwrap();
        kiln::compile::write_files(&dir, &out.files, &[]).unwrap();
        let input = kiln::npy::read(&d.join("ref/test_data_set_0/input_0.npy")).unwrap();
        std::fs::write(dir.join(format!("{prefix}.in")), input.data.to_le_bytes()).unwrap();
        let want = kiln_ir::eval::run(&m.graph, &[input]).unwrap().remove(0);
        graphs.push((prefix, want));
    }
    let c = r#"
#include "kws.h"
#include "sww.h"
#include <stdio.h>
#include <stdlib.h>
static float ki[KWS_INPUT0_COUNT], ko[KWS_OUTPUT0_COUNT], si[SWW_INPUT0_COUNT], so[SWW_OUTPUT0_COUNT];
static _Alignas(16) unsigned char arena[(KWS_ARENA_SIZE > SWW_ARENA_SIZE ? KWS_ARENA_SIZE : SWW_ARENA_SIZE) + 16];
static void rd(const char *p, void *b, size_t n) { FILE *f = fopen(p, "rb"); if (!f || fread(b, 1, n, f) != n) exit(2); fclose(f); }
int main(void) {
    rd("kws.in", ki, sizeof ki);
    rd("sww.in", si, sizeof si);
    if (kws_run(ki, ko, arena) || sww_run(si, so, arena)) return 1;
    FILE *f = fopen("out.bin", "wb");
    fwrite(ko, 1, sizeof ko, f);
    fwrite(so, 1, sizeof so, f);
    fclose(f);
    return 0;
}
"#;
    std::fs::write(dir.join("two.c"), c).unwrap();
    let st = std::process::Command::new("cc")
        .current_dir(&dir)
        .args([
            "-std=c11", "-Wall", "-Wextra", "-Werror", "two.c", "-L.", "-lkws", "-lsww", "-o", "two",
        ])
        .output()
        .unwrap();
    assert!(st.status.success(), "{}", String::from_utf8_lossy(&st.stderr));
    let st = std::process::Command::new(dir.join("two"))
        .current_dir(&dir)
        .output()
        .unwrap();
    assert!(st.status.success());
    let bytes = std::fs::read(dir.join("out.bin")).unwrap();
    let vals = kiln_ir::Data::from_le_bytes(kiln_ir::Scalar::F32, &bytes).unwrap();
    let kiln_ir::Data::F32(v) = vals else { unreachable!() };
    let (k, s) = v.split_at(12);
    for ((_, want), got) in graphs.iter().zip([k, s]) {
        let got = kiln_ir::Tensor::from_vec(want.shape.clone(), got.to_vec());
        let (r, _) = compare(&got, want, RTOL, ATOL).unwrap();
        assert!(r <= 1.0);
    }
    let _ = std::fs::remove_dir_all(&dir);
}

//! The `kiln` binary as users run it: the README's commands, exit codes, and files written.

use std::path::Path;
use std::process::Command;

mod common;
use common::{kiln, repo, support as kiln_tests_support, text, tmp};

#[test]
fn inspect_reports_macs_and_layers() {
    let o = kiln(&["inspect", "tests/models/silero_vad_16k/model.onnx"]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    // The model README (written from ONNX Runtime's graph) counts 679,552 MACs: 548,480 Conv + 131,072 LSTM.
    assert!(out.contains("MACs      679552 total"), "{out}");
    assert!(out.contains("LSTM x1 (131.1k MACs)"), "{out}");
    assert!(out.contains("input     input: f32[1,576]"), "{out}");
    assert!(out.contains("unsupported ops: none"), "{out}");
}

#[test]
fn inspect_needs_pinned_shapes_and_accepts_them() {
    let m = "tests/models/rapidocr_cls_mobile_v2/model.onnx";
    // symbolic height and width: the figures that do not depend on them, `?` for the rest
    let o = kiln(&["inspect", m]);
    let out = text(&o).0;
    assert!(o.status.success(), "{}", text(&o).1);
    assert!(out.contains("input     x: [?,3,?,?] (as declared)"), "{out}");
    assert!(
        out.contains("(input `x` dimension 2)") && out.contains("pin them with --input-shape"),
        "{out}"
    );
    let row = |n: &str| {
        out.lines()
            .find(|l| l.split_whitespace().nth(1) == Some(n))
            .unwrap_or_default()
            .to_string()
    };
    let conv = row("Conv@0");
    assert!(
        conv.contains("f32[1,8,?,?]") && conv.split_whitespace().collect::<Vec<_>>()[4..] == ["?", "224", "?"],
        "{conv}"
    );
    let se = row("Conv@3"); // after a global pool: known
    assert!(se.contains("f32[1,2,1,1]") && se.ends_with(" 8"), "{se}");
    let o = kiln(&["inspect", m, "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["symbolic"].as_array().unwrap().len(), 2);
    assert!(v["layers"][0]["macs"].is_null() && v["layers"][0]["params"] == 224);
    let o = kiln(&["inspect", m, "--input-shape", "x=1,3,48,192"]);
    assert!(o.status.success(), "{}", text(&o).1);
    assert!(text(&o).0.contains("MACs      16315376 total"));
}

#[test]
fn eval_matches_reference_output() {
    let set = repo().join("tests/models/mlperf_tiny_kws_dscnn/ref/test_data_set_1");
    let out = tmp("kws_out.npy");
    let o = kiln(&[
        "eval",
        "tests/models/mlperf_tiny_kws_dscnn/model.onnx",
        "--input",
        set.join("input_0.npy").to_str().unwrap(),
        "--output",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o).1);
    let got = kiln::npy::read(&out).unwrap();
    let want = kiln::npy::read(&set.join("output_0.npy")).unwrap();
    assert_eq!(got.shape, want.shape);
    for (a, b) in got.to_f32_vec().iter().zip(want.to_f32_vec()) {
        assert!((a - b).abs() <= 1e-5 + 1e-4 * b.abs(), "{a} vs {b}");
    }
}

#[test]
fn eval_rejects_wrong_input_and_writes_nothing() {
    let input = tmp("wrong.npy");
    kiln::npy::write(&input, &kiln_ir::Tensor::from_vec(vec![1, 3], vec![1i32, 2, 3])).unwrap();
    let out = tmp("never.npy");
    let o = kiln(&[
        "eval",
        "tests/models/mlperf_tiny_kws_dscnn/model.onnx",
        "--input",
        input.to_str().unwrap(),
        "--output",
        out.to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    let err = text(&o).1;
    assert!(
        err.contains("wrong.npy") && err.contains("must be f32[1,49,10,1]") && err.contains("i32[1,3]"),
        "{err}"
    );
    assert!(!out.exists(), "no output may be written on error");
}

#[test]
fn unknown_pass_and_print_after() {
    let m = "tests/models/mlperf_tiny_sww_dscnn/model.onnx";
    let o = kiln(&["dump", m, "--print-after", "fold_constants"]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    assert!(
        out.contains("// after fold_constants") && out.contains("BatchNorm("),
        "{out}"
    );
    // After the whole pipeline the BatchNorms are fused into the convolutions.
    let tail = &out[out.rfind("graph ").unwrap()..];
    assert!(!tail.contains("BatchNorm("));
    let o = kiln(&["dump", m, "--stop-after", "no_such_pass"]);
    assert!(!o.status.success());
    assert!(text(&o).1.contains("unknown pass `no_such_pass`"));
}

/// README's conformance figures are the manifests' counts: each `N of the` before a
/// manifest's name is that manifest's number of cases.
#[test]
fn readme_conformance_figures_match_the_manifests() {
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    let flat: String = readme.split_whitespace().collect::<Vec<_>>().join(" ");
    for m in ["evaluator", "native", "c", "rust"] {
        let path = format!("tests/conformance/{m}.pass");
        let list = std::fs::read_to_string(repo().join(&path)).unwrap();
        let count = list
            .lines()
            .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
            .count();
        let pretty = if count >= 1000 {
            format!("{},{:03}", count / 1000, count % 1000)
        } else {
            count.to_string()
        };
        let at = flat
            .find(&format!("`{path}`"))
            .unwrap_or_else(|| panic!("README does not cite {path}"));
        let before = &flat[flat[..at].char_indices().rev().nth(300).map_or(0, |(i, _)| i)..at];
        assert!(
            before.contains(&format!("{pretty} of the")),
            "README's figure for {path} is stale: the manifest lists {pretty} cases"
        );
    }
}

/// `eval` and `bench --input` bind a model's symbolic dimensions from the arrays they are
/// given (a note per dimension); `compile` keeps asking for pins.
#[test]
fn eval_takes_symbolic_dimensions_from_its_inputs() {
    let dir = tmp("symbolic");
    std::fs::create_dir_all(&dir).unwrap();
    let model = dir.join("m.onnx");
    std::fs::write(&model, kiln_tests_support::symbolic_relu_model()).unwrap();
    let x: Vec<f32> = (0..60).map(|i| i as f32 - 30.0).collect();
    kiln::npy::write(
        &dir.join("x.npy"),
        &kiln_ir::Tensor::from_vec(vec![1, 3, 4, 5], x.clone()),
    )
    .unwrap();
    let (m, xi, yo) = (model.to_str().unwrap(), dir.join("x.npy"), dir.join("y.npy"));
    let o = kiln(&[
        "eval",
        m,
        "--input",
        xi.to_str().unwrap(),
        "--output",
        yo.to_str().unwrap(),
    ]);
    let err = text(&o).1;
    assert!(o.status.success(), "{err}");
    assert!(
        err.contains("dimension 2 (`h`) is 4") && err.contains("dimension 3 (`w`) is 5"),
        "{err}"
    );
    let y = kiln::npy::read(&yo).unwrap();
    assert_eq!(y.shape, vec![1, 3, 4, 5]);
    assert_eq!(y.to_f32_vec(), x.iter().map(|&v| v.max(0.0)).collect::<Vec<_>>());
    // inspect names the symbolic dimensions and shows what does not depend on them
    let o = kiln(&["inspect", m]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    assert!(
        out.contains("input     x: [1,3,h,w] (as declared)") && out.contains("`h` (input `x` dimension 2), `w`"),
        "{out}"
    );
    assert!(out.contains("f32[1,3,?,?]"), "{out}");
    // report binds them from the calibration arrays (samples on axis 0)
    let calib = dir.join("calib");
    std::fs::create_dir_all(&calib).unwrap();
    let xs: Vec<f32> = (0..8 * 60).map(|i| ((i * 37) % 61) as f32 / 10.0 - 3.0).collect();
    kiln::npy::write(
        &calib.join("input_0.npy"),
        &kiln_ir::Tensor::from_vec(vec![8, 3, 4, 5], xs),
    )
    .unwrap();
    let o = kiln(&["report", m, "--calibrate", calib.to_str().unwrap(), "--json"]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    assert!(
        err.contains("dimension 2 (`h`) is 4") && err.contains("dimension 3 (`w`) is 5"),
        "{err}"
    );
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["end_to_end"]["samples"], 8);
    // bench too (timing the evaluator, no compiler needed)
    let o = kiln(&["bench", m, "--input", xi.to_str().unwrap(), "--runs", "3"]);
    assert!(
        o.status.success() && text(&o).1.contains("(`w`) is 5"),
        "{}",
        text(&o).1
    );
    let o = kiln(&["compile", m, "-o", dir.to_str().unwrap()]);
    assert!(
        !o.status.success() && text(&o).1.contains("--input-shape"),
        "{}",
        text(&o).1
    );
}

#[test]
fn supported_ops_doc_is_generated_from_the_registry() {
    let o = kiln(&["ops", "--markdown"]);
    assert!(o.status.success());
    let doc = std::fs::read_to_string(repo().join("SUPPORTED_OPS.md")).unwrap();
    assert_eq!(
        doc,
        text(&o).0,
        "SUPPORTED_OPS.md is stale: run `cargo run -p kiln -- ops --markdown > SUPPORTED_OPS.md`"
    );
}

#[test]
fn compile_writes_object_library_header_and_bindings() {
    let dir = tmp("compile_ok");
    let o = kiln(&[
        "compile",
        "tests/models/mlperf_tiny_sww_dscnn/model.onnx",
        "--prefix",
        "sww",
        "-o",
        dir.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o).1);
    for f in ["sww.o", "libsww.a", "sww.h", "sww.rs"] {
        assert!(dir.join(f).metadata().is_ok_and(|m| m.len() > 0), "{f} missing");
    }
    let header = std::fs::read_to_string(dir.join("sww.h")).unwrap();
    assert!(
        header.contains("int sww_run(const float *input_1, float *identity_0, void *arena);"),
        "{header}"
    );
    assert!(header.contains("#define SWW_INPUT0_SHAPE {1, 30, 1, 40}"));
    let out = text(&o).0;
    assert!(out.contains("arena") && out.contains("lower bound"), "{out}");
    let leftovers: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains("kiln-tmp"))
        .collect();
    assert!(leftovers.is_empty());
}

fn assert_fails_without_files(args: &[&str], dir: &Path, expect: &[&str]) {
    let o = kiln(args);
    assert!(!o.status.success());
    let err = text(&o).1;
    for e in expect {
        assert!(err.contains(e), "expected `{e}` in: {err}");
    }
    let files: Vec<_> = std::fs::read_dir(dir)
        .map(|r| r.filter_map(|e| e.ok()).collect())
        .unwrap_or_default();
    assert!(files.is_empty(), "partial output left behind: {files:?}");
}

#[test]
fn compile_rejects_unknown_and_unsupported_targets() {
    let m = "tests/models/mlperf_tiny_sww_dscnn/model.onnx";
    let dir = tmp("bad_target");
    let d = dir.to_str().unwrap();
    assert_fails_without_files(
        &["compile", m, "--target", "not-a-triple-at-all", "-o", d],
        &dir,
        &["unknown target `not-a-triple-at-all`"],
    );
    assert_fails_without_files(
        &["compile", m, "--target", "mips-unknown-linux-gnu", "-o", d],
        &dir,
        &["mips-unknown-linux-gnu", "not supported", "x86_64"],
    );
    assert_fails_without_files(
        &["compile", m, "--prefix", "9lives", "-o", d],
        &dir,
        &["`9lives` is not a valid symbol prefix"],
    );
}

#[test]
fn compile_reports_ops_the_backend_lacks() {
    // Softmax on f64 imports and evaluates, but the native kernel is f32/f16 only.
    let dir = tmp("unsupported_native");
    let model = tmp("argmax.onnx");
    let m = kiln_tests_support::argmax_model();
    std::fs::write(&model, m).unwrap();
    assert_fails_without_files(
        &["compile", model.to_str().unwrap(), "-o", dir.to_str().unwrap()],
        &dir,
        &["cannot compile yet", "node `am`: Softmax on f64[2,3]"],
    );
}

#[test]
fn compile_into_an_unwritable_place_fails_cleanly() {
    let blocker = tmp("a_file");
    std::fs::write(&blocker, "x").unwrap();
    let out = blocker.join("sub");
    let o = kiln(&[
        "compile",
        "tests/models/mlperf_tiny_sww_dscnn/model.onnx",
        "-o",
        out.to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    assert!(text(&o).1.contains("cannot write"), "{}", text(&o).1);
    assert_eq!(std::fs::read_to_string(&blocker).unwrap(), "x");
}

#[test]
fn report_and_int8_compile_from_the_command_line() {
    let m = "tests/models/digits_cnn";
    let o = kiln(&[
        "report",
        &format!("{m}/model.onnx"),
        "--calibrate",
        &format!("{m}/calib"),
        "--eval",
        &format!("{m}/eval"),
    ]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    assert!(
        out.contains("dB") && out.contains("weights: float 5480 bytes, int8 1424 bytes"),
        "{out}"
    );
    assert!(out.contains("accuracy: float 98.89%"), "{out}");
    assert!(out.contains("products: 2 int8\n"), "{out}");
    // a 4-bit build is reported as what it is, not as int8 (its weights rounded for the data
    // by default: 97.22% with nearest rounding)
    let o = kiln(&[
        "report",
        &format!("{m}/model.onnx"),
        "--calibrate",
        &format!("{m}/calib"),
        "--eval",
        &format!("{m}/eval"),
        "--weight-bits",
        "4",
    ]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    assert!(out.contains("products: 2 int8 with 4-bit weights"), "{out}");
    assert!(
        out.contains("weights: float 5480 bytes, quantized 748 bytes") && out.contains(", quantized 98.06%"),
        "{out}"
    );
    let dir = tmp("q8");
    let o = kiln(&[
        "compile",
        &format!("{m}/model.onnx"),
        "--quantize",
        "int8",
        "--calibrate",
        &format!("{m}/calib"),
        "--emit",
        "c",
        "--target",
        "atmega328p",
        "--prefix",
        "digits",
        "-o",
        dir.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o).1);
    // the proven accumulator width of each product (9 and 128 int8 taps: 24 bits)
    assert!(
        text(&o)
            .0
            .contains("accumulator bits (proven to hold every sum): `conv` 24, `dense` 24"),
        "{}",
        text(&o).0
    );
    let h = std::fs::read_to_string(dir.join("digits.h")).unwrap();
    assert!(
        h.contains("int digits_run_int(") && h.contains("DIGITS_INPUT0_SCALE"),
        "{h}"
    );
    // int8 without calibration data is refused, naming the flag.
    let o = kiln(&[
        "compile",
        &format!("{m}/model.onnx"),
        "--quantize",
        "int8",
        "-o",
        dir.to_str().unwrap(),
    ]);
    assert!(!o.status.success() && text(&o).1.contains("--calibrate"));
}

#[test]
fn hybrid_and_16x8_from_the_command_line() {
    let m = "tests/models/digits_cnn";
    let dir = tmp("hybrid");
    let o = kiln(&[
        "compile",
        &format!("{m}/model.onnx"),
        "--quantize",
        "dynamic",
        "--emit",
        "c",
        "--prefix",
        "digits",
        "-o",
        dir.to_str().unwrap(),
    ]);
    let (_, err) = text(&o);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("int8 weights: 5408 -> 1424 bytes"), "{err}");
    let c = std::fs::read_to_string(dir.join("digits.c")).unwrap();
    assert!(
        c.contains("kiln_dyn_quantize(") && c.contains("kiln_dyn_rescale("),
        "{c}"
    );
    // the report measures a data-free mode on the data it is given
    let o = kiln(&[
        "report",
        &format!("{m}/model.onnx"),
        "--quantize",
        "dynamic",
        "--calibrate",
        &format!("{m}/calib"),
    ]);
    let (out, err) = text(&o);
    assert!(o.status.success() && out.contains("hybrid int8"), "{out}{err}");
    // 16x8 layers of an int8 build: the header declares int16 at the input port
    let o = kiln(&[
        "compile",
        &format!("{m}/model.onnx"),
        "--quantize",
        "int8",
        "--calibrate",
        &format!("{m}/calib"),
        "--int16",
        "all",
        "--emit",
        "c",
        "--prefix",
        "digits",
        "-o",
        dir.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o).1);
    // the proven accumulator width of each product (int16 inputs: 32 bits)
    assert!(
        text(&o)
            .0
            .contains("accumulator bits (proven to hold every sum): `conv` 32, `dense` 32"),
        "{}",
        text(&o).0
    );
    let h = std::fs::read_to_string(dir.join("digits.h")).unwrap();
    assert!(h.contains("int digits_run_int(const int16_t *"), "{h}");
    // flags that do not belong to the mode are refused, naming them
    for (args, flag) in [
        (vec!["--quantize", "dynamic", "--int16", "all"], "--int16"),
        (vec!["--keep-float", "Gemm"], "--keep-float"),
        (
            vec![
                "--quantize",
                "int8",
                "--calibrate",
                "tests/models/digits_cnn/calib",
                "--int16",
                "Nope",
            ],
            "Nope",
        ),
    ] {
        let mut a = vec!["compile", "tests/models/digits_cnn/model.onnx"];
        a.extend(args);
        a.extend(["-o", dir.to_str().unwrap()]);
        let o = kiln(&a);
        assert!(
            !o.status.success() && text(&o).1.contains(flag),
            "{a:?}: {}",
            text(&o).1
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn quantized_models_from_the_command_line() {
    let m = "tests/models/mlperf_tiny_kws_dscnn/ort/qop_u8.onnx";
    // float arithmetic when asked (`--quantize none`), with a hint
    let dir = tmp("qop-float");
    let o = kiln(&[
        "compile",
        m,
        "--quantize",
        "none",
        "--emit",
        "c",
        "-o",
        dir.to_str().unwrap(),
    ]);
    let (_, err) = text(&o);
    assert!(o.status.success(), "{err}");
    assert!(
        err.contains("carries its own quantization") && err.contains("--quantize int8"),
        "{err}"
    );
    // integer with the model's parameters: no calibration data needed
    let dir = tmp("qop-int");
    let o = kiln(&[
        "compile",
        m,
        "--quantize",
        "int8",
        "--strict-integer",
        "--emit",
        "c",
        "-o",
        dir.to_str().unwrap(),
    ]);
    let (_, err) = text(&o);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("using the model's own quantization parameters"), "{err}");
    let h = std::fs::read_to_string(dir.join("qop_u8.h")).unwrap();
    assert!(h.contains("qop_u8_run_int("), "{h}");
    // --strict-integer belongs to integer builds (a float one here); a float model still
    // needs data
    let o = kiln(&[
        "compile",
        m,
        "--quantize",
        "none",
        "--strict-integer",
        "-o",
        tmp("x").to_str().unwrap(),
    ]);
    assert!(!o.status.success() && text(&o).1.contains("--strict-integer"));
    let o = kiln(&[
        "compile",
        "tests/models/digits_cnn/model.onnx",
        "--quantize",
        "int8",
        "-o",
        tmp("y").to_str().unwrap(),
    ]);
    assert!(!o.status.success() && text(&o).1.contains("--calibrate"));
}

#[test]
fn compile_never_writes_over_its_input() {
    let dir = tmp("overwrite");
    std::fs::create_dir_all(&dir).unwrap();
    // A model file named like one of the outputs, compiled into its own folder.
    let model = dir.join("net.h");
    std::fs::copy(repo().join("tests/models/digits_cnn/model.onnx"), &model).unwrap();
    let before = std::fs::read(&model).unwrap();
    let d = dir.to_str().unwrap();
    let o = kiln(&[
        "compile",
        model.to_str().unwrap(),
        "--emit",
        "c",
        "--prefix",
        "net",
        "-o",
        d,
    ]);
    let (_, err) = text(&o);
    assert!(
        !o.status.success() && err.contains("refusing to write") && err.contains("net.h"),
        "{err}"
    );
    assert_eq!(std::fs::read(&model).unwrap(), before, "the model is unchanged");
    assert!(!dir.join("net.c").exists(), "nothing is written");
    // Another prefix in the same folder is fine.
    let o = kiln(&[
        "compile",
        model.to_str().unwrap(),
        "--emit",
        "c",
        "--prefix",
        "other",
        "-o",
        d,
    ]);
    assert!(o.status.success(), "{}", text(&o).1);
    assert!(dir.join("other.c").exists());
}

#[test]
fn bench_refuses_absurd_run_counts() {
    let m = "tests/models/digits_cnn/model.onnx";
    for runs in ["0", "18446744073709551615", "1000001"] {
        let o = kiln(&["bench", m, "--runs", runs]);
        let (_, err) = text(&o);
        assert_eq!(o.status.code(), Some(2), "{runs}: {err}");
        assert!(err.contains("--runs"), "{err}");
    }
}

#[test]
fn numerics_follow_the_models_origin_or_the_flag() {
    let m = "tests/models/mlperf_tiny_kws_dscnn/model_int8_qdq_tflite.onnx";
    for (flag, want) in [(None, "tflite"), (Some("onnx"), "onnx"), (Some("tflite"), "tflite")] {
        let dir = tmp(&format!("numerics-{want}-{}", flag.is_some()));
        let mut args = vec![
            "compile",
            m,
            "--quantize",
            "int8",
            "--emit",
            "c",
            "--prefix",
            "kws",
            "-o",
        ];
        let d = dir.to_str().unwrap().to_string();
        args.push(&d);
        if let Some(f) = flag {
            args.extend(["--numerics", f]);
        }
        let o = kiln(&args);
        let (_, err) = text(&o);
        assert!(o.status.success(), "{err}");
        // the default is said, with the way back
        assert_eq!(
            err.contains("integer numerics: tflite (the model was written by tf2onnx"),
            flag.is_none(),
            "{err}"
        );
        let h = std::fs::read_to_string(dir.join("kws.h")).unwrap();
        assert!(h.contains(&format!("#define KWS_NUMERICS \"{want}\"")), "{h}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}

#[test]
fn models_with_their_own_quantization_compile_to_integer_code_by_default() {
    for m in ["kws_dscnn", "vww_mobilenetv1_025", "ic_resnet8", "ad_fc_autoencoder"] {
        let path = format!("tests/models/mlperf_tiny_{m}/model_int8_qdq_tflite.onnx");
        let dir = tmp(&format!("own-{m}"));
        let d = dir.to_str().unwrap().to_string();
        let o = kiln(&[
            "compile",
            &path,
            "--emit",
            "c",
            "--target",
            "cortex-m4",
            "--prefix",
            "net",
            "-o",
            &d,
        ]);
        let (_, err) = text(&o);
        // integer code with the model's parameters, fitting the part, said so
        assert!(o.status.success(), "{m}: {err}");
        assert!(
            err.contains("compiled to integer code with its parameters"),
            "{m}: {err}"
        );
        // int8 in, int8 out (these models' ports are already integers); the autoencoder
        // has only fully connected layers, which round alike in both numerics
        let h = std::fs::read_to_string(dir.join("net.h")).unwrap();
        let numerics = if m.starts_with("ad_") { "onnx" } else { "tflite" };
        assert!(
            h.contains("int net_run(const int8_t *") && h.contains(&format!("#define NET_NUMERICS \"{numerics}\"")),
            "{m}: {h}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
    // `--quantize none` keeps the float simulation, which VWW's arena cannot fit
    let dir = tmp("own-float");
    let d = dir.to_str().unwrap().to_string();
    let path = "tests/models/mlperf_tiny_vww_mobilenetv1_025/model_int8_qdq_tflite.onnx";
    let o = kiln(&[
        "compile",
        path,
        "--quantize",
        "none",
        "--emit",
        "c",
        "--target",
        "cortex-m4",
        "-o",
        &d,
    ]);
    let (_, err) = text(&o);
    assert!(!o.status.success(), "{err}");
    assert!(err.contains("float arithmetic") && err.contains("cortex-m4"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A `.tflite` file through inspect, eval (TFLite's reference bytes), compile and bench, read
/// by content: a copy named `.model` works the same.
#[test]
fn tflite_files_work_with_inspect_eval_compile_and_bench() {
    let src = repo().join("tests/models/mlperf_tiny_kws_dscnn/source/kws_ref_model.tflite");
    let m = tmp("kws_int8.model");
    std::fs::copy(&src, &m).unwrap();
    let m = m.to_str().unwrap();
    let o = kiln(&["inspect", m]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    assert!(out.contains("TFLite schema 3"), "{out}");
    assert!(out.contains("CONV_2D x5, DEPTHWISE_CONV_2D x4"), "{out}");
    assert!(out.contains("input     input_1: i8[1,49,10,1]"), "{out}");

    let set = repo().join("tests/models/mlperf_tiny_kws_dscnn/ref_int8/test_data_set_3");
    let y = tmp("kws_tflite_out.npy");
    let o = kiln(&[
        "eval",
        m,
        "--input",
        set.join("input_0.npy").to_str().unwrap(),
        "--output",
        y.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o).1);
    assert!(
        text(&o)
            .1
            .contains("integer numerics: tflite (the model is a TFLite file"),
        "{}",
        text(&o).1
    );
    let got = kiln::npy::read(&y).unwrap();
    let want = kiln::npy::read(&set.join("output_0.npy")).unwrap();
    assert_eq!(got.to_i64_vec(), want.to_i64_vec());

    let dir = tmp("kws_tflite_c");
    let o = kiln(&[
        "compile",
        m,
        "--emit",
        "c",
        "--target",
        "cortex-m4",
        "-o",
        dir.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o).1);
    assert!(dir.join("kws_int8.c").is_file() && dir.join("kws_int8.h").is_file());

    let o = kiln(&["bench", m, "--runs", "2"]);
    assert!(o.status.success(), "{}", text(&o).1);
    assert!(text(&o).0.contains("evaluator, 2 runs: median"), "{}", text(&o).0);
}

/// A reader that stops early (`kiln inspect m | head`) ends the command quietly, not with a
/// panic about a broken pipe.
#[test]
fn a_closed_stdout_ends_quietly() {
    for args in [
        &["inspect", "tests/models/mlperf_tiny_vww_mobilenetv1_025/model.onnx"][..],
        &["dump", "tests/models/mlperf_tiny_vww_mobilenetv1_025/model.onnx"],
        &["ops"],
    ] {
        let mut child = Command::new(env!("CARGO_BIN_EXE_kiln"))
            .args(args)
            .current_dir(repo())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        drop(child.stdout.take());
        let o = child.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            o.status.success() && !err.contains("panicked"),
            "{args:?}: {:?} {err}",
            o.status
        );
    }
}

#[test]
fn static_arena_from_the_command_line() {
    let out = tmp("static-arena");
    let o = kiln(&[
        "compile",
        "tests/models/digits_cnn/model.onnx",
        "--emit",
        "c",
        "--static-arena",
        "--prefix",
        "digits",
        "-o",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o).1);
    let h = std::fs::read_to_string(out.join("digits.h")).unwrap();
    assert!(
        h.contains("#define DIGITS_STATIC_ARENA 1") && h.contains("int digits_run_static(const float *x, float *y);"),
        "{h}"
    );
    let o = kiln(&[
        "compile",
        "tests/models/digits_cnn/model.onnx",
        "--static-arena",
        "-o",
        out.to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    assert!(
        text(&o).1.contains("--static-arena is for C source (--emit c)"),
        "{}",
        text(&o).1
    );
    let _ = std::fs::remove_dir_all(&out);
}

/// `kiln report` on the digits model under a pseudo-terminal (`script`), its stderr as a
/// terminal shows it, or `None` without `script`.
fn on_a_terminal(extra: &str) -> Option<String> {
    let cmd = format!(
        "{} report tests/models/digits_cnn/model.onnx --calibrate tests/models/digits_cnn/calib{extra} > /dev/null",
        env!("CARGO_BIN_EXE_kiln")
    );
    let o = std::process::Command::new("script")
        .args(["-qec", &cmd, "/dev/null"])
        .env("KILN_PROGRESS_DELAY_MS", "0")
        .current_dir(repo())
        .output()
        .ok()?;
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stdout));
    Some(String::from_utf8_lossy(&o.stdout).into_owned())
}

#[test]
fn progress_shows_on_a_terminal_only() {
    // not a terminal: no progress line, only notes
    let o = kiln(&[
        "report",
        "tests/models/digits_cnn/model.onnx",
        "--calibrate",
        "tests/models/digits_cnn/calib",
    ]);
    assert!(o.status.success());
    assert!(
        !text(&o).1.contains('\r') && !text(&o).1.contains("calibrating:"),
        "{}",
        text(&o).1
    );
    let Some(tty) = on_a_terminal("") else {
        eprintln!("skipping the terminal half: no `script` (util-linux)");
        return;
    };
    for step in [
        "calibrating: [",
        "choosing the calibration method: [",
        "comparing with float: [",
    ] {
        assert!(tty.contains(step), "{step}: {tty}");
    }
    assert!(tty.contains("200/200"), "{tty}");
    let quiet = on_a_terminal(" --quiet").unwrap();
    assert!(!quiet.contains("calibrating:") && quiet.contains("note:"), "{quiet}");
}

#[test]
fn an_npz_array_over_the_limit_is_refused_before_it_is_inflated() {
    // digits' calibration input, 200 samples of 1x8x8 floats (51 KB inflated), as an .npz
    let x = kiln::npy::read(&repo().join("tests/models/digits_cnn/calib/input_0.npy")).unwrap();
    let npy = tmp("npz-input.npy");
    kiln::npy::write(&npy, &x).unwrap();
    let npz = tmp("calib.npz");
    let mut w = zip::ZipWriter::new(std::fs::File::create(&npz).unwrap());
    let opts = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Deflated);
    w.start_file("input_0.npy", opts).unwrap();
    std::io::Write::write_all(&mut w, &std::fs::read(&npy).unwrap()).unwrap();
    w.finish().unwrap();
    let args = [
        "report",
        "tests/models/digits_cnn/model.onnx",
        "--calibrate",
        npz.to_str().unwrap(),
    ];
    let run = |limit: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_kiln"))
            .args(args)
            .env("KILN_MAX_ARRAY_BYTES", limit)
            .current_dir(repo())
            .output()
            .unwrap()
    };
    let o = run("10000");
    assert!(!o.status.success());
    let err = text(&o).1;
    assert!(
        err.contains("array `input_0` inflates to") && err.contains("over the limit of 10000"),
        "{err}"
    );
    let o = run("100000000");
    assert!(o.status.success(), "{}", text(&o).1);
}

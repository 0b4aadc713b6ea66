//! `kiln::Build`, the build-script API: code generator picked by target, files and cargo
//! directives, and errors that name the file and the problem without leaving files behind.

use kiln::{Build, BuildError, Emit, Quantize};
use kiln_tests::repo;
use std::path::PathBuf;

fn model(name: &str) -> PathBuf {
    repo().join("tests/models").join(name).join("model.onnx")
}

fn out_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("kiln-build-api-{}-{tag}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn names(d: &std::path::Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(d)
        .map(|r| {
            r.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

#[test]
fn cranelift_targets_get_an_object_and_link_directives() {
    let d = out_dir("host");
    let a = Build::new(model("digits_cnn"))
        .target("x86_64-unknown-linux-gnu")
        .out_dir(&d)
        .cargo_metadata(false)
        .compile("digits")
        .unwrap();
    assert_eq!(a.emit, Emit::Object);
    assert_eq!(names(&d), ["digits.h", "digits.o", "digits.rs", "libdigits.a"]);
    assert!(a.directives.contains(&"cargo:rustc-link-lib=static=digits".to_string()));
    assert!(
        a.directives
            .contains(&format!("cargo:rustc-link-search=native={}", d.display()))
    );
    assert!(
        a.directives
            .contains(&format!("cargo:rerun-if-changed={}", model("digits_cnn").display()))
    );
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn other_targets_get_rust_source_and_calibration_reruns() {
    let d = out_dir("m4");
    let calib = repo().join("tests/models/digits_cnn/calib");
    let a = Build::new(model("digits_cnn"))
        .quantize(Quantize::int8(&calib))
        .target("cortex-m4")
        .out_dir(&d)
        .cargo_metadata(false)
        .compile("digits")
        .unwrap();
    assert_eq!(a.emit, Emit::RustSource);
    assert_eq!(names(&d), ["digits.rs"]);
    let text = std::fs::read_to_string(d.join("digits.rs")).unwrap();
    assert!(text.contains("pub fn run_int(") && !text.contains("unsafe"), "{text}");
    assert!(
        a.directives
            .contains(&format!("cargo:rerun-if-changed={}", calib.display()))
    );
    assert!(!a.directives.iter().any(|l| l.contains("rustc-link")));
    let _ = std::fs::remove_dir_all(&d);
}

/// Runs a failing build and returns its message; nothing may be left in the output folder.
fn fails(tag: &str, b: &mut Build) -> String {
    let d = out_dir(tag);
    let e = b.out_dir(&d).cargo_metadata(false).compile("m").expect_err("must fail");
    assert_eq!(names(&d), Vec::<String>::new(), "{tag}: files left behind");
    e.to_string()
}

#[test]
fn bad_input_is_an_error_naming_the_file() {
    let missing = repo().join("tests/models/nope/model.onnx");
    let e = fails("missing", &mut Build::new(&missing));
    assert!(e.contains(&missing.display().to_string()), "{e}");

    // Lp pooling has no Rust source kernel yet
    let hm = kiln_tests::write_model(
        "build-api-lppool",
        &kiln_tests::model(
            vec![kiln_tests::node("GlobalLpPool", "pick", &["x"], &["y"], vec![])],
            vec![kiln_tests::fixed("x", &[1, 2, 4, 4])],
            vec![kiln_tests::fixed("y", &[1, 2, 1, 1])],
            vec![],
            13,
        ),
    );
    let e = fails("unsupported", Build::new(&hm).emit(Emit::RustSource));
    assert!(
        e.contains(&hm.display().to_string()) && e.contains("node `pick`"),
        "{e}"
    );

    let e = fails(
        "calib",
        Build::new(model("digits_cnn")).quantize(Quantize::int8("/no/such/calibration")),
    );
    assert!(e.contains("/no/such/calibration"), "{e}");

    let e = fails("target", Build::new(model("digits_cnn")).target("z80"));
    assert!(e.contains("unknown target `z80`"), "{e}");

    let e = fails("fit", Build::new(model("digits_cnn")).target("atmega328p"));
    assert!(e.contains("does not fit atmega328p"), "{e}");
}

#[test]
fn without_out_dir_the_build_says_so() {
    if std::env::var_os("OUT_DIR").is_some() {
        return; // not the situation under test
    }
    let e = Build::new(model("digits_cnn")).cargo_metadata(false).compile("m").err();
    assert!(matches!(e, Some(BuildError::NoOutDir)), "{e:?}");
}

#[test]
fn fp16_keeps_weights_in_binary16_in_rust_source() {
    let d = out_dir("fp16");
    let a = Build::new(model("digits_cnn"))
        .quantize(Quantize::Fp16)
        .target("cortex-m4")
        .out_dir(&d)
        .cargo_metadata(false)
        .compile("digits")
        .unwrap();
    assert_eq!(a.emit, Emit::RustSource);
    let text = std::fs::read_to_string(d.join("digits.rs")).unwrap();
    assert!(text.contains("[k::F16; 72] = k::f16s(["), "{text}");
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn dynamic_builds_hybrid_ops_in_rust_source() {
    let d = out_dir("dynamic");
    let a = Build::new(model("digits_cnn"))
        .quantize(Quantize::Dynamic)
        .target("cortex-m4")
        .out_dir(&d)
        .cargo_metadata(false)
        .compile("digits")
        .unwrap();
    assert_eq!(a.emit, Emit::RustSource);
    let text = std::fs::read_to_string(d.join("digits.rs")).unwrap();
    assert!(
        text.contains("k::int::dyn_conv(") && text.contains("k::int::dyn_matmul("),
        "{text}"
    );
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn quantized_models_build_with_their_own_parameters() {
    let d = out_dir("qdq");
    let qdq = repo().join("tests/models/digits_cnn/ort/qdq_s8.onnx");
    let a = Build::new(&qdq)
        .quantize(Quantize::Model {
            options: Default::default(),
        })
        .target("cortex-m4")
        .out_dir(&d)
        .cargo_metadata(false)
        .compile("digits")
        .unwrap();
    assert_eq!(a.emit, Emit::RustSource);
    let text = std::fs::read_to_string(d.join("digits.rs")).unwrap();
    // integer convolution and product (the Cortex-M kernels, for this target); the input
    // scale is the model's (1/255), not calibrated
    assert!(
        text.contains("k::mcu::patch_conv::<") && text.contains("pub fn run_int("),
        "{text}"
    );
    assert!(text.contains("INPUT0_SCALE: f32 = 3.921569e-3;"), "{text}");
    // ONNX Runtime's model keeps ONNX Runtime's rounding
    assert!(text.contains("pub const NUMERICS: &str = \"onnx\";"), "{text}");
    // a tf2onnx conversion of a TFLite model gets TFLite's, named in the header; the
    // default quantization of such a model is that same integer build; `Float` keeps the
    // float simulation
    let kws = repo().join("tests/models/mlperf_tiny_kws_dscnn/model_int8_qdq_tflite.onnx");
    let dk = out_dir("qdq-tflite");
    let own = Quantize::Model {
        options: Default::default(),
    };
    for (q, integer) in [(own, true), (Quantize::None, true), (Quantize::Float, false)] {
        Build::new(&kws)
            .quantize(q)
            .target("cortex-m4")
            .emit(Emit::C)
            .out_dir(&dk)
            .cargo_metadata(false)
            .compile("kws")
            .unwrap();
        let h = std::fs::read_to_string(dk.join("kws.h")).unwrap();
        assert_eq!(h.contains("#define KWS_NUMERICS \"tflite\""), integer, "{h}");
    }
    let _ = std::fs::remove_dir_all(&dk);
    // a float model has nothing to keep: the error names the file
    let err = Build::new(model("digits_cnn"))
        .quantize(Quantize::Model {
            options: kiln::quantize::QuantOptions {
                strict_integer: true,
                ..Default::default()
            },
        })
        .target("cortex-m4")
        .out_dir(out_dir("qdq-float"))
        .cargo_metadata(false)
        .compile("digits")
        .unwrap_err();
    assert!(err.to_string().contains("digits_cnn/model.onnx"), "{err}");
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn target_cpu_reaches_the_object_and_its_header() {
    let d = out_dir("cpu");
    Build::new(model("digits_cnn"))
        .target("x86_64-unknown-linux-gnu")
        .target_cpu("x86-64-v3,+avx512vnni")
        .out_dir(&d)
        .cargo_metadata(false)
        .compile("digits")
        .unwrap();
    let h = std::fs::read_to_string(d.join("digits.h")).unwrap();
    let line = h
        .lines()
        .find(|l| l.starts_with("#define DIGITS_CPU_FEATURES"))
        .unwrap();
    assert!(
        line.contains("avx2") && line.contains("fma") && line.contains("avx512vnni"),
        "{line}"
    );
    let rs = std::fs::read_to_string(d.join("digits.rs")).unwrap();
    assert!(rs.contains("pub const CPU_FEATURES: &str") && rs.contains("pub const ERR_CPU: i32 = -2;"));
    // an unknown feature is an error naming it
    let e = fails(
        "cpu-bad",
        Build::new(model("digits_cnn"))
            .target("x86_64-unknown-linux-gnu")
            .target_cpu("+avx9"),
    );
    assert!(e.contains("avx9"), "{e}");
}

/// `kiln::Build` takes a `.tflite` file as it takes an ONNX model: the int8 MLPerf KWS file
/// becomes integer Rust source with TFLite's numerics, recorded in the source.
#[test]
fn tflite_files_build_like_onnx_models() {
    let d = out_dir("tflite");
    let file = repo().join("tests/models/mlperf_tiny_kws_dscnn/source/kws_ref_model.tflite");
    let a = Build::new(&file)
        .target("cortex-m4")
        .out_dir(&d)
        .cargo_metadata(false)
        .compile("kws")
        .unwrap();
    assert_eq!(a.emit, Emit::RustSource);
    let text = std::fs::read_to_string(d.join("kws.rs")).unwrap();
    assert!(text.contains("pub fn run("), "no entry point");
    assert!(
        text.contains("pub const NUMERICS: &str = \"tflite\";"),
        "numerics not recorded"
    );
    assert!(
        a.directives
            .contains(&format!("cargo:rerun-if-changed={}", file.display()))
    );
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn a_static_arena_for_c_source_and_a_clear_refusal_elsewhere() {
    let d = out_dir("static-arena");
    Build::new(model("digits_cnn"))
        .target("cortex-m4")
        .emit(Emit::C)
        .static_arena(true)
        .out_dir(&d)
        .cargo_metadata(false)
        .compile("digits")
        .unwrap();
    let h = std::fs::read_to_string(d.join("digits.h")).unwrap();
    assert!(
        h.contains("#define DIGITS_STATIC_ARENA 1") && h.contains("int digits_run_static("),
        "{h}"
    );
    let c = std::fs::read_to_string(d.join("digits.c")).unwrap();
    assert!(c.contains("static unsigned char digits_arena_["), "{c}");
    let err = Build::new(model("digits_cnn"))
        .target("cortex-m4")
        .emit(Emit::RustSource)
        .static_arena(true)
        .out_dir(&d)
        .cargo_metadata(false)
        .compile("digits")
        .unwrap_err()
        .to_string();
    assert!(err.contains("a static arena is for C source"), "{err}");
    let _ = std::fs::remove_dir_all(&d);
}

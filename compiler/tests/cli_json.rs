//! `--json` on `inspect`, `report`, `compile` and `bench`: one JSON document on stdout that
//! parses and carries the numbers the text shows (docs/json.md is the schema).

mod common;
use common::{kiln, text, text_and_json as both, tmp};
use serde_json::Value;

fn u(v: &Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("not a count: {v}"))
}

const DIGITS: &str = "tests/models/digits_cnn/model.onnx";
const CALIB: &str = "tests/models/digits_cnn/calib";

#[test]
fn inspect_json_carries_the_table() {
    let (out, v) = both(&["inspect", "tests/models/silero_vad_16k/model.onnx"]);
    assert_eq!(v["command"], "inspect");
    assert_eq!(v["file"]["format"], "onnx");
    let t = &v["totals"];
    assert!(out.contains(&format!("MACs      {} total", u(&t["macs"]))), "{out}");
    assert_eq!(u(&t["macs"]), 679_552);
    assert!(out.contains(&format!(
        "params    {} ({} bytes)",
        u(&t["params"]),
        u(&t["param_bytes"])
    )));
    assert!(out.contains(&format!(
        "activations {} bytes in all node outputs, largest {} bytes",
        u(&t["activation_bytes"]),
        u(&t["largest_activation_bytes"])
    )));
    let layers = v["layers"].as_array().unwrap();
    assert_eq!(layers.len() as u64, u(&t["nodes"]));
    assert_eq!(layers.iter().map(|l| u(&l["macs"])).sum::<u64>(), u(&t["macs"]));
    for l in layers {
        // each row: index, op, output type and activation bytes as in the text
        let row = out
            .lines()
            .find(|x| x.split_whitespace().next() == Some(&l["index"].to_string()))
            .unwrap_or_else(|| panic!("row {}: {out}", l["index"]));
        for key in ["op", "output"] {
            assert!(row.contains(l[key].as_str().unwrap()), "{row} / {l}");
        }
        assert!(row.ends_with(&format!(" {}", u(&l["activation_bytes"]))), "{row} / {l}");
    }
    assert_eq!(v["inputs"][0]["type"], "f32[1,576]");
    // an ONNX file's own op counts, and a TFLite file's
    let ops = v["file"]["ops"].as_object().unwrap();
    assert!(out.contains(&format!("onnx ops  {} nodes", ops.values().map(u).sum::<u64>())));
    let (out, v) = both(&[
        "inspect",
        "tests/models/mlperf_tiny_ad_fc_autoencoder/source/ad01_int8.tflite",
    ]);
    assert_eq!(v["file"]["format"], "tflite");
    assert!(
        out.contains(&format!("MACs      {} total", u(&v["totals"]["macs"]))),
        "{out}"
    );
}

#[test]
fn report_json_carries_sqnr_weights_and_agreement() {
    let (out, v) = both(&["report", DIGITS, "--calibrate", CALIB]);
    assert_eq!(v["mode"], "int8");
    let layers = v["layers"].as_array().unwrap();
    assert!(!layers.is_empty());
    for l in layers {
        let line = format!(
            "{:7.1} dB  {}",
            l["sqnr_db"].as_f64().unwrap(),
            l["value"].as_str().unwrap()
        );
        assert!(out.contains(&line), "{line}: {out}");
    }
    let w = &v["weights"];
    assert!(out.contains(&format!(
        "weights: float {} bytes, int8 {} bytes",
        u(&w["float_bytes"]),
        u(&w["quantized_bytes"])
    )));
    let e = &v["end_to_end"];
    let n = u(&e["samples"]);
    assert!(
        out.contains(&format!("top-1 agreement with float: {}/{n}", u(&e["top1_agreement"]))),
        "{out}"
    );
    assert!(out.contains(&format!("max abs error {:.4}", e["max_abs_error"].as_f64().unwrap())));
    assert_eq!(v["products"].as_array().unwrap().len(), 2);
    assert!(out.contains("products: 2 int8"));
}

#[test]
fn compile_json_carries_the_summary_and_writes_the_same_files() {
    let dir = tmp("json-compile");
    let d = dir.to_str().unwrap();
    let args = [
        "compile",
        DIGITS,
        "--quantize",
        "int8",
        "--calibrate",
        CALIB,
        "--emit",
        "c",
        "-o",
        d,
    ];
    let (out, v) = both(&args);
    assert!(
        out.starts_with(&format!(
            "model: {} kernels for {}; arena {} bytes (lower bound {}); C source {} bytes",
            u(&v["kernels"]),
            v["target"].as_str().unwrap(),
            u(&v["arena_bytes"]),
            u(&v["arena_lower_bound"]),
            u(&v["output_bytes"])
        )),
        "{out}\n{v:#}"
    );
    for f in v["files"].as_array().unwrap() {
        let p = dir.join(f["name"].as_str().unwrap());
        assert_eq!(std::fs::metadata(&p).unwrap().len(), u(&f["bytes"]), "{}", p.display());
    }
    for a in v["accumulator_bits"].as_array().unwrap() {
        assert!(
            out.contains(&format!("`{}` {}", a["node"].as_str().unwrap(), u(&a["bits"]))),
            "{out}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bench_json_on_the_host() {
    let o = kiln(&["bench", DIGITS, "--runs", "3", "--json"]);
    let v: Value = serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&o).1));
    assert_eq!(v["runs"], 3);
    assert!(v["median_us"].as_f64().unwrap() >= v["min_us"].as_f64().unwrap());
    assert_eq!(v["what"], "evaluator");
}

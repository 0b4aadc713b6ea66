//! Int8 TFLite builtins against TFLite's reference kernels. Each model in `tests/tflite_int8/`
//! is one quantized builtin, written by `models()` below; its outputs on `NAME.in*.npy` were
//! computed by LiteRT with its reference kernels (`scripts/tflite-fixtures/make.py`).
//! `KILN_WRITE_TFLITE_FIXTURES=1` rewrites the models and inputs (then run the script);
//! otherwise the committed models must be the ones `models()` writes, so the fixtures
//! cannot go stale.
//!
//! Kiln imports each with TFLite numerics (the default for a `.tflite` file) and must give
//! LiteRT's bytes, except where `STEPS` states a bound (with the reason).

mod tflite_build;

use kiln::PipelineOptions;
use kiln::quantize::{Mode, QuantOptions, apply};
use kiln_ir::Tensor;
use kiln_ir::op::Numerics;
use kiln_tests::{bit_exact_on_every_backend_many, repo};
use std::path::PathBuf;
use tflite_build::{F, T, bias32, model, op, q8, weights8};

/// Known differences from TFLite's reference kernels, in output steps; these fixtures are
/// built without `strict_integer` (they keep a float island, named in the reason).
const STEPS: &[(&str, i64, &str)] = &[
    (
        "conv_uint8",
        1,
        "asymmetric uint8 weights: Kiln's integer convolution takes symmetric ones and quantizes them again (noted)",
    ),
    (
        "resize_bilinear",
        1,
        "no integer bilinear resize yet: a float island, TFLite interpolates in fixed point",
    ),
    ("resize_bilinear_align", 1, "as resize_bilinear"),
];

fn dir() -> PathBuf {
    repo().join("tests/tflite_int8")
}

/// Deterministic int8 values covering the whole range.
fn bytes(seed: u32, n: usize) -> Vec<i8> {
    let mut s = seed.wrapping_mul(2_654_435_761) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            (s >> 9) as u8 as i8
        })
        .collect()
}

struct Case {
    name: &'static str,
    model: Vec<u8>,
    /// input shapes
    inputs: Vec<Vec<usize>>,
}

fn unary(name: &'static str, code: i32, options: Option<(u8, T)>, out: (f32, i64)) -> Case {
    Case {
        name,
        model: model(
            vec![q8("x", &[2, 4, 4, 8], 0.05, 3), q8("y", &[2, 4, 4, 8], out.0, out.1)],
            vec![op(code, &[0], &[1], options)],
            &[0],
            &[1],
        ),
        inputs: vec![vec![2, 4, 4, 8]],
    }
}

fn binary(name: &'static str, code: i32, out: (f32, i64), act: u8) -> Case {
    let options = (code != 55 && code != 57).then(|| {
        (
            if code == 18 {
                21
            } else if code == 41 {
                28
            } else {
                11
            },
            T(vec![(0, F::U8(act))]),
        )
    });
    Case {
        name,
        model: model(
            vec![
                q8("a", &[1, 4, 4, 8], 0.05, 3),
                q8("b", &[1, 1, 4, 8], 0.03, -7),
                q8("y", &[1, 4, 4, 8], out.0, out.1),
            ],
            vec![op(code, &[0, 1], &[2], options)],
            &[0, 1],
            &[2],
        ),
        inputs: vec![vec![1, 4, 4, 8], vec![1, 1, 4, 8]],
    }
}

fn conv(name: &'static str, depthwise: bool) -> Case {
    let (ws, oc) = if depthwise {
        ([1, 3, 3, 16], 16)
    } else {
        ([6, 3, 3, 8], 6)
    };
    let w = bytes(7, ws.iter().product::<i32>() as usize);
    let scales: Vec<f32> = (0..oc).map(|c| 0.004 + 0.001 * c as f32).collect();
    let bias: Vec<i32> = (0..oc).map(|c| (c - 3) * 300).collect();
    let bias_scales: Vec<f32> = scales.iter().map(|s| s * 0.05).collect();
    let (code, tag, options) = if depthwise {
        let o = vec![
            (0, F::U8(0)),
            (1, F::I32(1)),
            (2, F::I32(2)),
            (3, F::I32(2)),
            (4, F::U8(3)),
        ];
        (4, 2, T(o))
    } else {
        let o = vec![(0, F::U8(1)), (1, F::I32(1)), (2, F::I32(1)), (3, F::U8(1))];
        (3, 1, T(o))
    };
    let out = if depthwise { [1, 3, 6, 16] } else { [1, 4, 4, 6] };
    Case {
        name,
        model: model(
            vec![
                q8("x", &[1, 6, 6, 8], 0.05, 3),
                weights8("w", &ws, &w, &scales, if depthwise { 3 } else { 0 }),
                bias32("b", &bias, &bias_scales),
                q8("y", &out, 0.08, -20),
            ],
            vec![op(code, &[0, 1, 2], &[3], Some((tag, options)))],
            &[0],
            &[3],
        ),
        inputs: vec![vec![1, 6, 6, 8]],
    }
}

fn pool(name: &'static str, code: i32) -> Case {
    let o = T(vec![
        (0, F::U8(0)),
        (1, F::I32(2)),
        (2, F::I32(2)),
        (3, F::I32(3)),
        (4, F::I32(3)),
    ]);
    Case {
        name,
        model: model(
            vec![q8("x", &[1, 5, 5, 8], 0.05, 3), q8("y", &[1, 3, 3, 8], 0.05, 3)],
            vec![op(code, &[0], &[1], Some((5, o)))],
            &[0],
            &[1],
        ),
        inputs: vec![vec![1, 5, 5, 8]],
    }
}

/// Every fixture model.
fn models() -> Vec<Case> {
    let mut v = vec![
        unary("logistic", 14, None, (1.0 / 256.0, -128)),
        unary("tanh", 28, None, (1.0 / 128.0, 0)),
        unary("relu", 19, None, (0.04, -128)),
        unary("relu6", 21, None, (6.0 / 255.0, -128)),
        unary("hard_swish", 117, None, (0.03, -40)),
        unary("leaky_relu", 98, Some((75, T(vec![(0, F::F32(0.1))]))), (0.05, 10)),
        unary("requantize", 114, None, (0.11, -5)),
        binary("add", 0, (0.07, -2), 1),
        binary("sub", 41, (0.07, 4), 0),
        binary("mul", 18, (0.02, 1), 0),
        conv("conv", false),
        conv("depthwise", true),
        pool("avg_pool", 1),
        pool("max_pool", 17),
    ];
    let alpha: Vec<i8> = (0..8).map(|c| (c * 20 - 70) as i8).collect();
    v.push(Case {
        name: "prelu",
        model: model(
            vec![
                q8("x", &[1, 4, 4, 8], 0.05, 3),
                weights8("alpha", &[1, 1, 8], &alpha, &[0.01], 0),
                q8("y", &[1, 4, 4, 8], 0.04, -6),
            ],
            vec![op(54, &[0, 1], &[2], None)],
            &[0],
            &[2],
        ),
        inputs: vec![vec![1, 4, 4, 8]],
    });
    let same =
        |name: &'static str, code: i32, extra: Vec<tflite_build::Tensor>, out: &[i32], options: Option<(u8, T)>| {
            let mut tensors = vec![q8("x", &[1, 4, 4, 8], 0.05, 3)];
            let n = extra.len() as i32;
            tensors.extend(extra);
            tensors.push(q8("y", out, 0.05, 3));
            let inputs: Vec<i32> = (0..=n).collect();
            Case {
                name,
                model: model(tensors, vec![op(code, &inputs, &[n + 1], options)], &[0], &[n + 1]),
                inputs: vec![vec![1, 4, 4, 8]],
            }
        };
    let int = tflite_build::ints;
    v.push(same(
        "pad",
        34,
        vec![int("p", &[4, 2], &[0, 0, 1, 0, 0, 2, 0, 0])],
        &[1, 5, 6, 8],
        None,
    ));
    v.push(same(
        "transpose",
        39,
        vec![int("perm", &[4], &[0, 3, 1, 2])],
        &[1, 8, 4, 4],
        None,
    ));
    v.push(same(
        "strided_slice",
        45,
        vec![
            int("b", &[4], &[0, 1, 3, 0]),
            int("e", &[4], &[1, 4, 0, 8]),
            int("s", &[4], &[1, 2, -1, 3]),
        ],
        &[1, 2, 3, 3],
        None,
    ));
    let resize = |align: u8, half: u8| Some((15, T(vec![(2, F::U8(align)), (3, F::U8(half))])));
    v.push(same(
        "resize_bilinear",
        23,
        vec![int("size", &[2], &[7, 6])],
        &[1, 7, 6, 8],
        resize(0, 1),
    ));
    v.push(same(
        "resize_bilinear_align",
        23,
        vec![int("size", &[2], &[7, 6])],
        &[1, 7, 6, 8],
        resize(1, 0),
    ));
    let nearest = Some((74, T(vec![(0, F::U8(0)), (1, F::U8(1))])));
    v.push(same(
        "resize_nearest",
        97,
        vec![int("size", &[2], &[7, 6])],
        &[1, 7, 6, 8],
        nearest,
    ));
    v.push(Case {
        name: "concat",
        model: model(
            vec![
                q8("a", &[1, 4, 4, 8], 0.05, 3),
                q8("b", &[1, 4, 4, 3], 0.05, 3),
                q8("y", &[1, 4, 4, 11], 0.05, 3),
            ],
            vec![op(2, &[0, 1], &[2], Some((10, T(vec![(0, F::I32(3))]))))],
            &[0, 1],
            &[2],
        ),
        inputs: vec![vec![1, 4, 4, 8], vec![1, 4, 4, 3]],
    });
    let tw = bytes(9, 4 * 3 * 3 * 8);
    let tscales: Vec<f32> = (0..4).map(|c| 0.003 + 0.001 * c as f32).collect();
    v.push(Case {
        name: "transpose_conv",
        model: model(
            vec![
                int("shape", &[4], &[1, 8, 8, 4]),
                weights8("w", &[4, 3, 3, 8], &tw, &tscales, 0),
                q8("x", &[1, 4, 4, 8], 0.05, 3),
                q8("y", &[1, 8, 8, 4], 0.07, -3),
            ],
            vec![op(
                67,
                &[0, 1, 2],
                &[3],
                Some((49, T(vec![(0, F::U8(0)), (1, F::I32(2)), (2, F::I32(2))]))),
            )],
            &[2],
            &[3],
        ),
        inputs: vec![vec![1, 4, 4, 8]],
    });
    v.push(Case {
        name: "transpose_conv_valid",
        model: model(
            vec![
                int("shape", &[4], &[1, 9, 10, 4]),
                weights8("w", &[4, 3, 4, 8], &bytes(11, 4 * 3 * 4 * 8), &tscales, 0),
                q8("x", &[1, 4, 4, 8], 0.05, 3),
                bias32(
                    "b",
                    &[300, -200, 100, 0],
                    &tscales.iter().map(|s| s * 0.05).collect::<Vec<_>>(),
                ),
                q8("y", &[1, 9, 10, 4], 0.07, -3),
            ],
            vec![op(
                67,
                &[0, 1, 2, 3],
                &[4],
                Some((
                    49,
                    T(vec![(0, F::U8(1)), (1, F::I32(2)), (2, F::I32(2)), (3, F::U8(1))]),
                )),
            )],
            &[2],
            &[4],
        ),
        inputs: vec![vec![1, 4, 4, 8]],
    });
    // uint8 throughout (TFLite's older quantization): asymmetric weights per tensor
    let wu8: Vec<u8> = bytes(13, 6 * 3 * 3 * 8).iter().map(|&b| b as u8).collect();
    v.push(Case {
        name: "conv_uint8",
        model: model(
            vec![
                tflite_build::qu8("x", &[1, 6, 6, 8], 0.05, 128, None),
                tflite_build::qu8("w", &[6, 3, 3, 8], 0.004, 120, Some(wu8)),
                bias32("b", &[300, -200, 100, 0, 50, -50], &[0.05 * 0.004]),
                tflite_build::qu8("y", &[1, 6, 6, 6], 0.08, 100, None),
            ],
            vec![op(
                3,
                &[0, 1, 2],
                &[3],
                Some((1, T(vec![(0, F::U8(0)), (1, F::I32(1)), (2, F::I32(1)), (3, F::U8(1))]))),
            )],
            &[0],
            &[3],
        ),
        inputs: vec![vec![1, 6, 6, 8]],
    });
    // 16x8: int16 activations, int8 weights, int64 biases
    let w16 = bytes(21, 6 * 3 * 3 * 8);
    let s16: Vec<f32> = (0..6).map(|c| 0.004 + 0.001 * c as f32).collect();
    let b16: Vec<i64> = (0..6).map(|c| (c - 3) * 30000).collect();
    let bs16: Vec<f32> = s16.iter().map(|s| s * 0.0005).collect();
    v.push(Case {
        name: "conv_16x8",
        model: model(
            vec![
                tflite_build::q16("x", &[1, 6, 6, 8], 0.0005),
                weights8("w", &[6, 3, 3, 8], &w16, &s16, 0),
                tflite_build::bias64("b", &b16, &bs16),
                tflite_build::q16("y", &[1, 4, 4, 6], 0.001),
            ],
            vec![op(
                3,
                &[0, 1, 2],
                &[3],
                Some((1, T(vec![(0, F::U8(1)), (1, F::I32(1)), (2, F::I32(1)), (3, F::U8(1))]))),
            )],
            &[0],
            &[3],
        ),
        inputs: vec![vec![1, 6, 6, 8]],
    });
    let wfc = bytes(23, 5 * 32);
    let sfc = [0.01f32];
    let bfc: Vec<i64> = (0..5).map(|c| (c - 2) * 5000).collect();
    v.push(Case {
        name: "fc_16x8",
        model: model(
            vec![
                tflite_build::q16("x", &[4, 32], 0.0005),
                weights8("w", &[5, 32], &wfc, &sfc, 0),
                tflite_build::bias64("b", &bfc, &[0.0005 * 0.01]),
                tflite_build::q16("y", &[4, 5], 0.002),
            ],
            vec![op(9, &[0, 1, 2], &[3], Some((8, T(vec![(4, F::U8(4))]))))],
            &[0],
            &[3],
        ),
        inputs: vec![vec![4, 32]],
    });
    v.push(Case {
        name: "softmax",
        model: model(
            vec![q8("x", &[4, 32], 0.1, 5), q8("y", &[4, 32], 1.0 / 256.0, -128)],
            vec![op(25, &[0], &[1], Some((9, T(vec![(0, F::F32(1.0))]))))],
            &[0],
            &[1],
        ),
        inputs: vec![vec![4, 32]],
    });
    v.push(Case {
        name: "mean",
        model: model(
            vec![
                q8("x", &[1, 4, 4, 8], 0.05, 3),
                tflite_build::ints("axes", &[2], &[1, 2]),
                q8("y", &[1, 1, 1, 8], 0.04, -1),
            ],
            vec![op(40, &[0, 1], &[2], Some((27, T(vec![(0, F::U8(1))]))))],
            &[0],
            &[2],
        ),
        inputs: vec![vec![1, 4, 4, 8]],
    });
    v
}

/// The integer program of a fixture (`numerics` overriding the file's default).
fn build(path: &std::path::Path, numerics: Option<Numerics>) -> Result<kiln_ir::Graph, String> {
    let m = kiln::load(path, &Default::default(), &PipelineOptions::default(), |_, _| {}).map_err(|e| e.to_string())?;
    let stem = path.file_stem().unwrap_or_default().to_string_lossy();
    let opts = QuantOptions {
        strict_integer: !STEPS.iter().any(|s| s.0 == stem),
        numerics,
        ..Default::default()
    };
    let mode = Mode::default_for(&m.graph);
    Ok(apply(&m.graph, &m.producer, &mode, &opts, |_, _| {})
        .map_err(|e| e.to_string())?
        .graph)
}

fn input(c: &Case, i: usize) -> Tensor {
    let s = &c.inputs[i];
    let v = bytes(100 + i as u32, s.iter().product());
    if c.name.ends_with("uint8") {
        return Tensor::from_vec(s.clone(), v.iter().map(|&b| b as u8).collect::<Vec<u8>>());
    }
    if c.name.ends_with("16x8") {
        // int16 values over the whole range
        return Tensor::from_vec(
            s.clone(),
            v.iter()
                .enumerate()
                .map(|(k, &b)| (b as i16) * 256 + k as i16 % 256)
                .collect::<Vec<i16>>(),
        );
    }
    Tensor::from_vec(s.clone(), v)
}

#[test]
fn int8_builtins_give_tflites_reference_bytes() {
    let write = std::env::var_os("KILN_WRITE_TFLITE_FIXTURES").is_some();
    let mut failures = Vec::new();
    for c in models() {
        let path = dir().join(format!("{}.tflite", c.name));
        if write {
            std::fs::create_dir_all(dir()).unwrap();
            std::fs::write(&path, &c.model).unwrap();
            for i in 0..c.inputs.len() {
                kiln::npy::write(&dir().join(format!("{}.in{i}.npy", c.name)), &input(&c, i)).unwrap();
            }
            continue;
        }
        let committed = std::fs::read(&path).unwrap_or_default();
        assert!(
            committed == c.model,
            "{}: stale fixture; rewrite with KILN_WRITE_TFLITE_FIXTURES=1 and the script",
            c.name
        );
        let g = match build(&path, None) {
            Ok(g) => g,
            Err(e) => {
                failures.push(format!("{}: {e}", c.name));
                continue;
            }
        };
        let inputs: Vec<Tensor> = (0..c.inputs.len()).map(|i| input(&c, i)).collect();
        let got = kiln_ir::eval::run(&g, &inputs).unwrap().remove(0).to_i64_vec();
        let want = kiln::npy::read(&dir().join(format!("{}.out.npy", c.name)))
            .unwrap()
            .to_i64_vec();
        let steps = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).max().unwrap_or(0);
        let bound = STEPS.iter().find(|s| s.0 == c.name).map_or(0, |s| s.1);
        println!("{}: {steps} steps from TFLite's reference kernels", c.name);
        if steps > bound {
            failures.push(format!("{}: {steps} steps (bound {bound})", c.name));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The fixtures in both numerics give the evaluator's bytes natively, in C and in Rust.
#[test]
fn int8_builtins_are_bit_exact_on_every_backend() {
    let mut built = Vec::new();
    for c in models() {
        let path = dir().join(format!("{}.tflite", c.name));
        let inputs: Vec<Tensor> = (0..c.inputs.len()).map(|i| input(&c, i)).collect();
        for (tag, numerics) in [("tflite", None), ("onnx", Some(Numerics::Onnx))] {
            let g = build(&path, numerics).unwrap_or_else(|e| panic!("{}: {e}", c.name));
            built.push((format!("{}_{tag}", c.name), g, vec![inputs.clone()]));
        }
    }
    let models: Vec<(&str, &kiln_ir::Graph, &[Vec<Tensor>])> =
        built.iter().map(|(t, g, s)| (t.as_str(), g, s.as_slice())).collect();
    let tmp = std::env::temp_dir().join(format!("kiln-tflite-int8-{}", std::process::id()));
    let failures = bit_exact_on_every_backend_many(&models, &tmp);
    assert!(
        failures.is_empty(),
        "not the evaluator's bytes:\n{}",
        failures.join("\n")
    );
}

//! Hybrid int8 (`--quantize dynamic`): Conv/Gemm/MatMul weights stored as int8 per output
//! channel, activations quantized by each of those ops at run time. On every shipped model
//! the converted weights shrink about 4x and the task output (output 0) is no further from
//! the float model's than ONNX Runtime's own `quantize_dynamic` gets (the figure in the
//! model's README), or within `REL` where there is no such figure. The hybrid ops are bit-exact across backends: every DynConv/DynMatMul of every
//! model, fed the evaluator's own inputs for it, gives the same bytes natively, in C and in
//! Rust source. End to end, the float ops between them keep the float backends' usual bound.

use kiln::PipelineOptions;
use kiln_ir::{Graph, Op, Tensor};
use kiln_tests::{
    NativeExe, bit_exact_on_every_backend, build_c, build_native, build_rust, case_import_options, compare, islands,
    model_dirs, ref_input_sets,
};
use std::path::PathBuf;

/// Without a figure from ONNX Runtime: max |hybrid - float| over max(1, max |float|).
const REL: f64 = 0.1;
/// The float bound between backends end to end (float ops between the hybrid ones may
/// round differently, and a hybrid op can move a quantized input by one step).
const RTOL: f64 = 1e-4;
const ATOL: f64 = 1e-5;

struct Case {
    name: String,
    dir: PathBuf,
    float: Graph,
    hybrid: Graph,
    bytes: (usize, usize),
}

fn cases() -> Vec<Case> {
    model_dirs()
        .into_iter()
        .map(|dir| {
            let name = dir.file_name().unwrap().to_string_lossy().into_owned();
            let o = case_import_options(&dir);
            let m = kiln::load(&dir.join("model.onnx"), &o, &PipelineOptions::default(), |_, _| {}).unwrap();
            let h = kiln::quantize::dynamic::to_dynamic(&m.graph, &[]).unwrap();
            for n in &h.notes {
                println!("{name}: {n}");
            }
            Case {
                name,
                dir,
                float: m.graph,
                hybrid: h.graph,
                bytes: (h.bytes_f32, h.bytes_int8),
            }
        })
        .collect()
}

fn ref_sets(c: &Case) -> Vec<Vec<Tensor>> {
    ref_input_sets(&c.dir, c.float.inputs().len())
}

/// ONNX Runtime's `quantize_dynamic` max abs difference from float in the task output
/// (output 0: probabilities, logits, a reconstruction), as the model's README records it
/// over the reference inputs and up to 50 calibration inputs.
fn ort_dynamic_max_abs(c: &Case) -> Option<f64> {
    let readme = std::fs::read_to_string(c.dir.join("README.md")).ok()?;
    let line = readme.lines().find(|l| l.contains("ORT quantize_dynamic"))?;
    let rest = &line[line.find("max abs ")? + 8..];
    rest.split(',').next()?.trim().parse().ok()
}

fn argmax(v: &[f64]) -> usize {
    (0..v.len()).fold(0, |b, i| if v[i] > v[b] { i } else { b })
}

#[test]
fn hybrid_models_quarter_weights_and_stay_close_to_float() {
    let mut failures = Vec::new();
    for c in cases() {
        let (b32, b8) = c.bytes;
        // int8 values plus one f32 scale per output channel
        assert!(b32 > 0 && b8 * 7 < b32 * 2, "{}: {b32} -> {b8} weight bytes", c.name);
        let (mut worst, mut worst_abs) = (0f64, 0f64);
        let mut agree = (0, 0);
        for inputs in ref_sets(&c) {
            let want = kiln_ir::eval::run(&c.float, &inputs).unwrap();
            let got = kiln_ir::eval::run(&c.hybrid, &inputs).unwrap();
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                let (gv, wv) = (g.to_f64_vec(), w.to_f64_vec());
                let scale = wv.iter().fold(1f64, |m, v| m.max(v.abs()));
                let err = gv.iter().zip(&wv).fold(0f64, |m, (a, b)| m.max((a - b).abs()));
                if i == 0 {
                    worst = worst.max(err / scale);
                    worst_abs = worst_abs.max(err);
                }
                if wv.len() > 1 {
                    agree.0 += (argmax(&gv) == argmax(&wv)) as usize;
                    agree.1 += 1;
                }
            }
        }
        let ort = ort_dynamic_max_abs(&c);
        println!(
            "{}: weights {b32} -> {b8} bytes; max abs error {worst_abs:.3e} (ONNX Runtime quantize_dynamic: {}), \
             {worst:.2e} of max(1, output range); argmax agrees {}/{}",
            c.name,
            ort.map_or("-".into(), |o| format!("{o}")),
            agree.0,
            agree.1
        );
        match ort {
            Some(o) if worst_abs > o => failures.push(format!(
                "{}: max abs error {worst_abs:e}, ONNX Runtime's quantize_dynamic {o}",
                c.name
            )),
            None if worst > REL => failures.push(format!("{}: error {worst:e} of the output range", c.name)),
            _ => {}
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn the_digits_cnn_keeps_its_accuracy_in_hybrid_int8() {
    let c = cases()
        .into_iter()
        .find(|c| c.name == "digits_cnn")
        .expect("digits_cnn ships in tests/models");
    let x = kiln::npy::read(&c.dir.join("eval/input_0.npy")).unwrap().to_f32_vec();
    let labels = kiln::npy::read(&c.dir.join("eval/labels.npy")).unwrap().to_i64_vec();
    let (mut ok_f, mut ok_h) = (0, 0);
    for (i, &l) in labels.iter().enumerate() {
        let t = Tensor::from_vec(vec![1, 1, 8, 8], x[i * 64..(i + 1) * 64].to_vec());
        let f = kiln_ir::eval::run(&c.float, std::slice::from_ref(&t)).unwrap();
        let h = kiln_ir::eval::run(&c.hybrid, &[t]).unwrap();
        ok_f += (argmax(&f[0].to_f64_vec()) as i64 == l) as usize;
        ok_h += (argmax(&h[0].to_f64_vec()) as i64 == l) as usize;
    }
    let n = labels.len() as f64;
    let (af, ah) = (ok_f as f64 / n, ok_h as f64 / n);
    println!(
        "digits_cnn on {} held-out images: float accuracy {af:.4}, hybrid int8 {ah:.4}",
        labels.len()
    );
    assert!(
        ah >= af - 0.01,
        "hybrid accuracy {ah} is more than 1 point below float {af}"
    );
}

/// Runs `exe` on every input set; `check` compares each output with the evaluator's.
fn against_evaluator(
    exe: &NativeExe,
    g: &Graph,
    sets: &[Vec<Tensor>],
    check: &dyn Fn(&Tensor, &Tensor) -> Result<f64, String>,
) -> Result<f64, String> {
    let mut worst = 0f64;
    for inputs in sets {
        let want = kiln_ir::eval::run(g, inputs).map_err(|e| e.to_string())?;
        for (i, (got, w)) in exe.run(g, inputs)?.iter().zip(&want).enumerate() {
            worst = worst.max(check(got, w).map_err(|e| format!("output {i}: {e}"))?);
        }
    }
    Ok(worst)
}

fn bit_exact(got: &Tensor, want: &Tensor) -> Result<f64, String> {
    let (g, w) = (got.to_f32_vec(), want.to_f32_vec());
    match g.iter().zip(&w).position(|(a, b)| a.to_bits() != b.to_bits()) {
        None if g.len() == w.len() => Ok(0.0),
        None => Err(format!("{} values, expected {}", g.len(), w.len())),
        Some(i) => Err(format!("element {i}: {} != {}", g[i], w[i])),
    }
}

type Built = Result<NativeExe, String>;

#[test]
fn hybrid_builds_match_the_evaluator() {
    let cases = cases();
    let dir = std::env::temp_dir().join(format!("kiln-dynamic-{}", std::process::id()));
    let isl: Vec<(Graph, Vec<Vec<Tensor>>)> = cases.iter().map(|c| islands(&c.hybrid, &ref_sets(c))).collect();
    let mut list: Vec<(String, &Graph)> = cases.iter().map(|c| (format!("d_{}", c.name), &c.hybrid)).collect();
    list.extend(cases.iter().zip(&isl).map(|(c, (g, _))| (format!("i_{}", c.name), g)));
    let refs: Vec<(&str, &Graph)> = list.iter().map(|(n, g)| (n.as_str(), *g)).collect();
    let rust = build_rust(&refs, &dir.join("rust"), false).unwrap();
    let (rust_whole, rust_isl) = rust.split_at(cases.len());
    let mut failures = Vec::new();
    let close = |got: &Tensor, want: &Tensor| compare(got, want, RTOL, ATOL).map(|r| r.0);
    for (i, c) in cases.iter().enumerate() {
        let (ig, sets) = &isl[i];
        let rust_exe = |e: &NativeExe| NativeExe {
            exe: e.exe.clone(),
            dir: e.dir.clone(),
            runner: None,
            runner_args: &[],
        };
        let builds: [(&str, Built, Built); 3] = [
            (
                "C",
                build_c(&c.hybrid, "model", &dir.join(format!("c-{}", c.name)), &[]),
                build_c(ig, "model", &dir.join(format!("ci-{}", c.name)), &[]),
            ),
            (
                "native",
                build_native(&c.hybrid, "model", &dir.join(format!("n-{}", c.name))),
                build_native(ig, "model", &dir.join(format!("ni-{}", c.name))),
            ),
            ("Rust", Ok(rust_exe(&rust_whole[i])), Ok(rust_exe(&rust_isl[i]))),
        ];
        for (label, whole, island) in builds {
            let res = (|| -> Result<f64, String> {
                against_evaluator(&island?, ig, sets, &bit_exact).map_err(|e| format!("hybrid ops: {e}"))?;
                let w = against_evaluator(&whole?, &c.hybrid, &ref_sets(c), &close)?;
                if w > 1.0 {
                    return Err(format!("{w:.1}x the float bound"));
                }
                Ok(w)
            })();
            match res {
                Ok(w) => println!(
                    "{} hybrid ({label}): {} hybrid ops bit-exact; end to end worst {w:.3} of the bound",
                    c.name,
                    ig.outputs().len()
                ),
                Err(e) => failures.push(format!("{} ({label}): {e}", c.name)),
            }
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The C builds once more under AddressSanitizer and UndefinedBehaviorSanitizer: the
/// islands' arena holds nothing but the hybrid ops' scratch, so an op writing past its
/// scratch leaves the arena and is caught.
#[test]
fn hybrid_c_runs_clean_under_sanitizers() {
    let flags = ["-fsanitize=address,undefined", "-fno-sanitize-recover=all", "-g"];
    let dir = std::env::temp_dir().join(format!("kiln-dynamic-san-{}", std::process::id()));
    let mut failures = Vec::new();
    for c in cases() {
        let sets: Vec<Vec<Tensor>> = ref_sets(&c).into_iter().take(1).collect();
        let (ig, isets) = islands(&c.hybrid, &sets);
        let res = (|| -> Result<(), String> {
            let exe = build_c(&ig, "model", &dir.join(format!("i-{}", c.name)), &flags)?;
            against_evaluator(&exe, &ig, &isets, &bit_exact)?;
            let exe = build_c(&c.hybrid, "model", &dir.join(format!("w-{}", c.name)), &flags)?;
            exe.run(&c.hybrid, &sets[0])?;
            Ok(())
        })();
        match res {
            Ok(()) => println!("{} hybrid (C, ASan+UBSan): clean", c.name),
            Err(e) => failures.push(format!("{}: {e}", c.name)),
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The run-time quantization on inputs no model produces: NaNs (ignored by the range,
/// quantized to the zero point), infinities (an infinite scale falls back to 1), all
/// zeros, subnormal ranges, exact halves (rounded away from zero), huge magnitudes, and
/// rows whose length is not a multiple of the vector width. Every backend gives the
/// evaluator's bytes.
#[test]
fn hybrid_quantization_edge_cases_are_bit_exact_everywhere() {
    use kiln_ir::{DType, Scalar, TensorType};
    let nan = f32::NAN;
    let inf = f32::INFINITY;
    let rows: Vec<Vec<f32>> = vec![
        vec![nan, 1.0, -2.0, 0.5, nan, 3.0, -0.0, 0.25, 7.0],
        vec![0.0; 9],
        vec![inf, 1.0, 2.0, -3.0, 0.5, -0.5, 1.5, 2.5, 9.0],
        vec![1e-40, -1e-40, -0.0, 0.0, 5e-41, -5e-41, 1e-45, -1e-45, 0.0],
        vec![0.0, 255.0, 0.5, 1.5, 2.5, 254.5, 127.5, 128.5, 3.5],
        vec![1e30, -1e30, 3e29, -7e29, 1.0, -1.0, 0.0, 5e29, -2e29],
        vec![nan; 9],
        vec![-inf, -1.0, 4.0, 8.0, 16.0, -16.0, 0.125, -0.125, 1.0],
    ];
    let xm: Vec<f32> = rows.concat();
    let xc: Vec<f32> = vec![
        nan, 1.0, -2.0, 0.5, 3.0, -0.0, 0.25, 7.0, 2.5, -1.5, 0.5, -0.5, 1e-3, 4.0, -4.0, 8.0, 6.5, -6.5,
    ];
    let w: Vec<i8> = (0..27).map(|i| (i * 37 % 255 - 127) as i8).collect();
    let wc: Vec<i8> = (0..36).map(|i| (i * 53 % 255 - 127) as i8).collect();
    let mut g = Graph::new("edge");
    let f = |shape: Vec<usize>| TensorType::new(DType::plain(Scalar::F32), shape);
    let a = g.add_input("a", f(vec![8, 9]));
    let c = g.add_input("c", f(vec![1, 2, 3, 3]));
    let wm = g.add_const("wm", Tensor::from_vec(vec![9, 3], w));
    let wcv = g.add_const("wc", Tensor::from_vec(vec![2, 2, 3, 3], wc));
    let (_, y) = g
        .add_node(
            "mm",
            Op::DynMatMul {
                weight_scales: vec![0.01, 0.02, 0.03].into(),
                block: 0,
                weight_bits: 8,
            },
            vec![a, wm],
            &[],
        )
        .unwrap();
    g.add_output(y[0]);
    // blocked scales along K = 9 in blocks of 4 (the last block short): one scale per block
    // and column, the rescaled block sums added in order
    let blocked = (1..=9).map(|i| 0.003 * i as f32).collect::<Vec<f32>>();
    let (_, y) = g
        .add_node(
            "mm_blocked",
            Op::DynMatMul {
                weight_scales: blocked.into(),
                block: 4,
                weight_bits: 8,
            },
            vec![a, wm],
            &[],
        )
        .unwrap();
    g.add_output(y[0]);
    let window = kiln_ir::op::Window {
        kernel: vec![3, 3],
        strides: vec![1, 1],
        dilations: vec![1, 1],
        pads: vec![1, 1, 1, 1],
    };
    let (_, y) = g
        .add_node(
            "cv",
            Op::DynConv {
                window,
                group: 1,
                weight_scales: vec![0.5, 0.25].into(),
            },
            vec![c, wcv],
            &[],
        )
        .unwrap();
    g.add_output(y[0]);
    let sets = vec![vec![
        Tensor::from_vec(vec![8, 9], xm),
        Tensor::from_vec(vec![1, 2, 3, 3], xc),
    ]];
    let want = kiln_ir::eval::run(&g, &sets[0]).unwrap();
    // the rule itself: NaN rows quantize to the zero point (all-NaN: scale 1, zero point 0)
    assert!(want[0].to_f32_vec()[18..21].iter().all(|v| v.is_finite()));
    let dir = std::env::temp_dir().join(format!("kiln-dynamic-edge-{}", std::process::id()));
    let failures = bit_exact_on_every_backend(&g, &sets, "edge", &dir);
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

fn recurrent(kind: kiln_ir::op::RnnKind, direction: kiln_ir::op::RnnDirection) -> (Graph, Vec<Tensor>) {
    kiln_tests::recurrent_layer(kind, direction, false, 0)
}

fn recurrent_cases() -> Vec<(&'static str, Graph, Vec<Tensor>)> {
    use kiln_ir::op::{RnnDirection, RnnKind};
    [
        ("lstm", RnnKind::Lstm { input_forget: false }, RnnDirection::Forward),
        (
            "lstm_reverse",
            RnnKind::Lstm { input_forget: false },
            RnnDirection::Reverse,
        ),
        (
            "gru",
            RnnKind::Gru {
                linear_before_reset: false,
            },
            RnnDirection::Forward,
        ),
        (
            "gru_lbr",
            RnnKind::Gru {
                linear_before_reset: true,
            },
            RnnDirection::Reverse,
        ),
    ]
    .into_iter()
    .map(|(name, kind, dir)| {
        let (g, x) = recurrent(kind, dir);
        (name, g, x)
    })
    .collect()
}

/// LSTM and GRU run hybrid by being written out step by step around int8 products: every
/// output (sequence, last state, last cell) stays within 0.02 of the float layer, and no
/// recurrent op is left.
#[test]
fn hybrid_recurrent_layers_follow_the_float_ones() {
    for (name, g, inputs) in recurrent_cases() {
        let d = kiln::quantize::dynamic::to_dynamic(&g, &[]).unwrap();
        assert!(d.notes.is_empty(), "{name}: {:?}", d.notes);
        let ops: Vec<&str> = d.graph.node_ids().map(|n| d.graph.node(n).op.name()).collect();
        assert!(!ops.contains(&"LSTM") && !ops.contains(&"GRU"), "{name}: {ops:?}");
        assert!(ops.contains(&"DynMatMul"), "{name}: {ops:?}");
        // int8 values plus an f32 scale per gate unit (a third of the bytes at this size)
        assert!(
            d.bytes_int8 * 5 / 2 < d.bytes_f32,
            "{name}: {} -> {}",
            d.bytes_f32,
            d.bytes_int8
        );
        let want = kiln_ir::eval::run(&g, &inputs).unwrap();
        let got = kiln_ir::eval::run(&d.graph, &inputs).unwrap();
        for (i, (a, b)) in got.iter().zip(&want).enumerate() {
            assert_eq!(a.shape, b.shape, "{name} output {i}");
            let err = a
                .to_f64_vec()
                .iter()
                .zip(&b.to_f64_vec())
                .fold(0f64, |m, (x, y)| m.max((x - y).abs()));
            println!("{name} output {i}: max abs error {err:.4}");
            assert!(err < 0.02, "{name} output {i}: error {err}");
        }
    }
}

/// The written-out layers on every backend: their hybrid products bit for bit, the whole
/// layer within the float bound.
#[test]
fn hybrid_recurrent_layers_build_everywhere() {
    let cases: Vec<(&str, Graph, Vec<Vec<Tensor>>)> = recurrent_cases()
        .into_iter()
        .map(|(n, g, x)| (n, kiln::quantize::dynamic::to_dynamic(&g, &[]).unwrap().graph, vec![x]))
        .collect();
    let isl: Vec<(Graph, Vec<Vec<Tensor>>)> = cases.iter().map(|(_, g, s)| islands(g, s)).collect();
    let dir = std::env::temp_dir().join(format!("kiln-dynamic-rnn-{}", std::process::id()));
    let mut list: Vec<(String, &Graph)> = cases.iter().map(|(n, g, _)| (format!("r_{n}"), g)).collect();
    list.extend(cases.iter().zip(&isl).map(|((n, _, _), (g, _))| (format!("ri_{n}"), g)));
    let refs: Vec<(&str, &Graph)> = list.iter().map(|(n, g)| (n.as_str(), *g)).collect();
    let rust = build_rust(&refs, &dir.join("rust"), false).unwrap();
    let close = |got: &Tensor, want: &Tensor| compare(got, want, RTOL, ATOL).map(|r| r.0);
    let mut failures = Vec::new();
    for (i, (name, g, sets)) in cases.iter().enumerate() {
        let (ig, isets) = &isl[i];
        let copy = |e: &NativeExe| NativeExe {
            exe: e.exe.clone(),
            dir: e.dir.clone(),
            runner: None,
            runner_args: &[],
        };
        let builds: [(&str, Built, Built); 3] = [
            (
                "C",
                build_c(g, "model", &dir.join(format!("c-{name}")), &[]),
                build_c(ig, "model", &dir.join(format!("ci-{name}")), &[]),
            ),
            (
                "native",
                build_native(g, "model", &dir.join(format!("n-{name}"))),
                build_native(ig, "model", &dir.join(format!("ni-{name}"))),
            ),
            ("Rust", Ok(copy(&rust[i])), Ok(copy(&rust[cases.len() + i]))),
        ];
        for (label, whole, island) in builds {
            let res = (|| -> Result<f64, String> {
                against_evaluator(&island?, ig, isets, &bit_exact).map_err(|e| format!("hybrid ops: {e}"))?;
                let w = against_evaluator(&whole?, g, sets, &close)?;
                if w > 1.0 {
                    return Err(format!("{w:.1}x the float bound"));
                }
                Ok(w)
            })();
            match res {
                Ok(w) => println!("{name} ({label}): hybrid ops bit-exact; end to end worst {w:.3} of the bound"),
                Err(e) => failures.push(format!("{name} ({label}): {e}")),
            }
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

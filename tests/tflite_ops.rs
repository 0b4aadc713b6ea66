//! TFLite builtins one at a time and in a chain that crosses layouts: small float models
//! written with `tflite_build`, imported by content (the files are named `.bin`), run by the
//! evaluator and compared with direct NHWC loops written from TFLite's operator definitions.
//! Damaged models are refused with errors that name what is wrong.

mod tflite_build;

use kiln::PipelineOptions;
use kiln_ir::Tensor;
use kiln_tests::noise;
use tflite_build::{F, T, act, floats, ints, model, op};

// builtin codes and option-table tags (`BuiltinOptions`)
const ADD: i32 = 0;
const AVERAGE_POOL_2D: i32 = 1;
const CONCATENATION: i32 = 2;
const CONV_2D: i32 = 3;
const DEPTHWISE_CONV_2D: i32 = 4;
const FULLY_CONNECTED: i32 = 9;
const LOGISTIC: i32 = 14;
const MAX_POOL_2D: i32 = 17;
const MUL: i32 = 18;
const RELU: i32 = 19;
const RESHAPE: i32 = 22;
const SOFTMAX: i32 = 25;
const TANH: i32 = 28;
const PAD: i32 = 34;
const TRANSPOSE: i32 = 39;
const MEAN: i32 = 40;
const SUB: i32 = 41;
const SQUEEZE: i32 = 43;
const MAXIMUM: i32 = 55;
const MINIMUM: i32 = 57;
const EXPAND_DIMS: i32 = 70;
const LEAKY_RELU: i32 = 98;
const HARD_SWISH: i32 = 117;

/// A dense NHWC array for the reference loops.
#[derive(Clone, Debug)]
struct A {
    s: Vec<usize>,
    v: Vec<f32>,
}

impl A {
    fn at4(&self, n: usize, y: usize, x: usize, c: usize) -> f32 {
        self.v[((n * self.s[1] + y) * self.s[2] + x) * self.s[3] + c]
    }
}

fn run(bytes: &[u8], tag: &str, inputs: &[&A]) -> Vec<Tensor> {
    let dir = std::env::temp_dir().join(format!("kiln-tflite-ops-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("{tag}.bin"));
    std::fs::write(&path, bytes).unwrap();
    let m = kiln::load(&path, &Default::default(), &PipelineOptions::default(), |_, _| {})
        .unwrap_or_else(|e| panic!("{tag}: {e}"));
    let ts: Vec<Tensor> = inputs
        .iter()
        .map(|a| Tensor::from_vec(a.s.clone(), a.v.clone()))
        .collect();
    kiln_ir::eval::run(&m.graph, &ts).unwrap_or_else(|e| panic!("{tag}: {e}"))
}

fn assert_close(got: &Tensor, want: &A, tag: &str) {
    assert_eq!(got.shape, want.s, "{tag}: shape");
    let range = want.v.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-6);
    for (i, (g, w)) in got.to_f32_vec().iter().zip(&want.v).enumerate() {
        assert!((g - w).abs() <= 1e-5 * range, "{tag}: element {i}: {g} vs {w}");
    }
}

/// Output size and leading pad of one axis under TFLite's SAME / VALID rule.
fn axis(input: usize, k: usize, s: usize, d: usize, same: bool) -> (usize, usize) {
    let span = (k - 1) * d + 1;
    if same {
        let out = input.div_ceil(s);
        ((out), ((out - 1) * s + span).saturating_sub(input) / 2)
    } else {
        ((input - span) / s + 1, 0)
    }
}

struct ConvCase {
    depthwise: bool,
    x: [usize; 4],
    /// conv: `[O, kh, kw, I]`; depthwise: `[1, kh, kw, C * m]`
    w: [usize; 4],
    stride: [usize; 2],
    dilation: [usize; 2],
    same: bool,
    /// fused activation code (0 none, 1 relu, 3 relu6)
    act: u8,
}

fn conv_ref(c: &ConvCase, x: &A, w: &[f32], b: &[f32]) -> A {
    let (oh, ph) = axis(c.x[1], c.w[1], c.stride[0], c.dilation[0], c.same);
    let (ow, pw) = axis(c.x[2], c.w[2], c.stride[1], c.dilation[1], c.same);
    let oc = if c.depthwise { c.w[3] } else { c.w[0] };
    let mut v = Vec::new();
    for oy in 0..oh {
        for ox in 0..ow {
            for (o, &bias) in b.iter().enumerate().take(oc) {
                let mut acc = bias as f64;
                for ky in 0..c.w[1] {
                    for kx in 0..c.w[2] {
                        let iy = (oy * c.stride[0] + ky * c.dilation[0]) as isize - ph as isize;
                        let ix = (ox * c.stride[1] + kx * c.dilation[1]) as isize - pw as isize;
                        if iy < 0 || ix < 0 || iy >= c.x[1] as isize || ix >= c.x[2] as isize {
                            continue;
                        }
                        let (iy, ix) = (iy as usize, ix as usize);
                        if c.depthwise {
                            let m = c.w[3] / c.x[3];
                            let wi = (ky * c.w[2] + kx) * c.w[3] + o;
                            acc += (x.at4(0, iy, ix, o / m) * w[wi]) as f64;
                        } else {
                            for i in 0..c.w[3] {
                                let wi = ((o * c.w[1] + ky) * c.w[2] + kx) * c.w[3] + i;
                                acc += (x.at4(0, iy, ix, i) * w[wi]) as f64;
                            }
                        }
                    }
                }
                v.push(activate(acc as f32, c.act));
            }
        }
    }
    A {
        s: vec![1, oh, ow, oc],
        v,
    }
}

fn activate(v: f32, code: u8) -> f32 {
    match code {
        1 => v.max(0.0),
        3 => v.clamp(0.0, 6.0),
        _ => v,
    }
}

fn dims(s: &[usize]) -> Vec<i32> {
    s.iter().map(|&d| d as i32).collect()
}

fn random(s: &[usize], seed: u32) -> A {
    A {
        s: s.to_vec(),
        v: noise(seed, s.iter().product(), 1.0),
    }
}

#[test]
fn convolutions_match_nhwc_loops() {
    let cases = [
        ConvCase {
            depthwise: false,
            x: [1, 5, 6, 2],
            w: [3, 3, 3, 2],
            stride: [2, 1],
            dilation: [1, 1],
            same: true,
            act: 3,
        },
        ConvCase {
            depthwise: false,
            x: [1, 7, 6, 3],
            w: [4, 3, 2, 3],
            stride: [1, 2],
            dilation: [2, 1],
            same: false,
            act: 1,
        },
        ConvCase {
            depthwise: true,
            x: [1, 6, 5, 2],
            w: [1, 3, 3, 4],
            stride: [2, 2],
            dilation: [1, 1],
            same: true,
            act: 0,
        },
        ConvCase {
            depthwise: true,
            x: [1, 7, 7, 3],
            w: [1, 3, 3, 3],
            stride: [1, 1],
            dilation: [2, 2],
            same: false,
            act: 1,
        },
    ];
    for (k, c) in cases.iter().enumerate() {
        let x = random(&c.x, k as u32);
        let w = noise(10 + k as u32, c.w.iter().product(), 0.5);
        let oc = if c.depthwise { c.w[3] } else { c.w[0] };
        let b = noise(20 + k as u32, oc, 0.1);
        let want = conv_ref(c, &x, &w, &b);
        let padding = F::U8(if c.same { 0 } else { 1 });
        let (code, tag, options) = if c.depthwise {
            let fields = vec![
                (0, padding),
                (1, F::I32(c.stride[1] as i32)),
                (2, F::I32(c.stride[0] as i32)),
                (3, F::I32((c.w[3] / c.x[3]) as i32)),
                (4, F::U8(c.act)),
                (5, F::I32(c.dilation[1] as i32)),
                (6, F::I32(c.dilation[0] as i32)),
            ];
            (DEPTHWISE_CONV_2D, 2, T(fields))
        } else {
            let fields = vec![
                (0, padding),
                (1, F::I32(c.stride[1] as i32)),
                (2, F::I32(c.stride[0] as i32)),
                (3, F::U8(c.act)),
                (4, F::I32(c.dilation[1] as i32)),
                (5, F::I32(c.dilation[0] as i32)),
            ];
            (CONV_2D, 1, T(fields))
        };
        let bytes = model(
            vec![
                act("x", &dims(&c.x)),
                floats("w", &dims(&c.w), &w),
                floats("b", &[oc as i32], &b),
                act("y", &dims(&want.s)),
            ],
            vec![op(code, &[0, 1, 2], &[3], Some((tag, options)))],
            &[0],
            &[3],
        );
        let got = run(&bytes, &format!("conv{k}"), &[&x]);
        assert_close(&got[0], &want, &format!("case {k}"));
    }
}

fn pool_ref(x: &A, k: [usize; 2], s: [usize; 2], same: bool, max: bool) -> A {
    let (oh, ph) = axis(x.s[1], k[0], s[0], 1, same);
    let (ow, pw) = axis(x.s[2], k[1], s[1], 1, same);
    let mut v = Vec::new();
    for oy in 0..oh {
        for ox in 0..ow {
            for c in 0..x.s[3] {
                let (mut acc, mut n) = (if max { f32::MIN } else { 0.0 }, 0);
                for ky in 0..k[0] {
                    for kx in 0..k[1] {
                        let iy = (oy * s[0] + ky) as isize - ph as isize;
                        let ix = (ox * s[1] + kx) as isize - pw as isize;
                        if iy < 0 || ix < 0 || iy >= x.s[1] as isize || ix >= x.s[2] as isize {
                            continue; // TFLite never counts padding
                        }
                        let e = x.at4(0, iy as usize, ix as usize, c);
                        acc = if max { acc.max(e) } else { acc + e };
                        n += 1;
                    }
                }
                v.push(if max { acc } else { acc / n as f32 });
            }
        }
    }
    A {
        s: vec![1, oh, ow, x.s[3]],
        v,
    }
}

#[test]
fn pools_match_nhwc_loops() {
    let x = random(&[1, 5, 6, 3], 7);
    for (k, (kernel, stride, same, max)) in [
        ([3, 3], [2, 2], true, false),
        ([3, 2], [2, 1], true, true),
        ([2, 2], [2, 2], false, false),
        ([2, 3], [1, 2], false, true),
    ]
    .into_iter()
    .enumerate()
    {
        let want = pool_ref(&x, kernel, stride, same, max);
        let options = T(vec![
            (0, F::U8(if same { 0 } else { 1 })),
            (1, F::I32(stride[1] as i32)),
            (2, F::I32(stride[0] as i32)),
            (3, F::I32(kernel[1] as i32)),
            (4, F::I32(kernel[0] as i32)),
        ]);
        let code = if max { MAX_POOL_2D } else { AVERAGE_POOL_2D };
        let bytes = model(
            vec![act("x", &[1, 5, 6, 3]), act("y", &dims(&want.s))],
            vec![op(code, &[0], &[1], Some((5, options)))],
            &[0],
            &[1],
        );
        assert_close(&run(&bytes, &format!("pool{k}"), &[&x])[0], &want, &format!("pool {k}"));
    }
}

#[test]
fn fully_connected_keeps_leading_dims() {
    let x = random(&[1, 2, 3, 4], 3);
    let w = noise(4, 20, 0.5);
    let b = noise(5, 5, 0.1);
    let mut want = A {
        s: vec![1, 2, 3, 5],
        v: Vec::new(),
    };
    for row in x.v.chunks(4) {
        for o in 0..5 {
            let dot: f32 = (0..4).map(|i| row[i] * w[o * 4 + i]).sum();
            want.v.push((dot + b[o]).max(0.0));
        }
    }
    let bytes = model(
        vec![
            act("x", &[1, 2, 3, 4]),
            floats("w", &[5, 4], &w),
            floats("b", &[5], &b),
            act("y", &[1, 2, 3, 5]),
        ],
        vec![op(
            FULLY_CONNECTED,
            &[0, 1, 2],
            &[3],
            Some((8, T(vec![(0, F::U8(1)), (2, F::U8(1))]))),
        )],
        &[0],
        &[3],
    );
    assert_close(&run(&bytes, "fc", &[&x])[0], &want, "fully connected");
}

/// A builtin code, its options and what it computes.
type Unary = (i32, Option<(u8, T)>, fn(f32) -> f32);
type Binary = (i32, fn(f32, f32) -> f32);
/// A builtin, its constant inputs after the first and its options.
type OneOp = (i32, Vec<tflite_build::Tensor>, Option<(u8, T)>);

/// Unary and binary builtins on a `[2, 3]` tensor (binary ones broadcast a `[3]` constant).
#[test]
fn elementwise_builtins_follow_their_definitions() {
    let x = random(&[2, 3], 11);
    let c = [0.25f32, -0.5, 0.75];
    let unary: [Unary; 5] = [
        (RELU, None, |v| v.max(0.0)),
        (LOGISTIC, None, |v| 1.0 / (1.0 + (-v).exp())),
        (TANH, None, f32::tanh),
        (HARD_SWISH, None, |v| v * (v + 3.0).clamp(0.0, 6.0) / 6.0),
        (LEAKY_RELU, Some((75, T(vec![(0, F::F32(0.2))]))), |v| {
            if v < 0.0 { 0.2 * v } else { v }
        }),
    ];
    for (code, options, f) in unary {
        let bytes = model(
            vec![act("x", &[2, 3]), act("y", &[2, 3])],
            vec![op(code, &[0], &[1], options)],
            &[0],
            &[1],
        );
        let want = A {
            s: vec![2, 3],
            v: x.v.iter().map(|&v| f(v)).collect(),
        };
        assert_close(
            &run(&bytes, &format!("unary{code}"), &[&x])[0],
            &want,
            &format!("builtin {code}"),
        );
    }
    let binary: [Binary; 5] = [
        (ADD, |a, b| a + b),
        (SUB, |a, b| a - b),
        (MUL, |a, b| a * b),
        (MAXIMUM, f32::max),
        (MINIMUM, f32::min),
    ];
    for (code, f) in binary {
        let bytes = model(
            vec![act("x", &[2, 3]), floats("c", &[3], &c), act("y", &[2, 3])],
            vec![op(code, &[0, 1], &[2], None)],
            &[0],
            &[2],
        );
        let want = A {
            s: vec![2, 3],
            v: x.v.iter().enumerate().map(|(i, &v)| f(v, c[i % 3])).collect(),
        };
        assert_close(
            &run(&bytes, &format!("binary{code}"), &[&x])[0],
            &want,
            &format!("builtin {code}"),
        );
    }
}

/// A graph that leaves and re-enters the channels-first layout: conv -> add (broadcast) ->
/// logistic -> concat on channels -> mean over H, W; and concat -> pad -> max pool ->
/// transpose -> reshape -> squeeze/expand -> hard swish -> softmax.
#[test]
fn a_chain_across_layouts_matches_nhwc_loops() {
    let x = random(&[1, 4, 4, 2], 21);
    let w = noise(22, 3 * 2, 0.7);
    let bias = [0.1f32, -0.2, 0.3];
    let shift = [0.5f32, -0.25, 0.125];
    // reference, step by step in NHWC
    let conv = ConvCase {
        depthwise: false,
        x: [1, 4, 4, 2],
        w: [3, 1, 1, 2],
        stride: [1, 1],
        dilation: [1, 1],
        same: true,
        act: 0,
    };
    let t1 = conv_ref(&conv, &x, &w, &bias);
    let t3: Vec<f32> =
        t1.v.iter()
            .enumerate()
            .map(|(i, &v)| 1.0 / (1.0 + (-(v + shift[i % 3])).exp()))
            .collect();
    let t4: Vec<f32> = (0..16)
        .flat_map(|p| {
            t1.v[p * 3..p * 3 + 3]
                .iter()
                .chain(&t3[p * 3..p * 3 + 3])
                .copied()
                .collect::<Vec<_>>()
        })
        .collect();
    let t4 = A {
        s: vec![1, 4, 4, 6],
        v: t4,
    };
    let t5 = A {
        s: vec![1, 1, 1, 6],
        v: (0..6)
            .map(|c| (0..16).map(|p| t4.v[p * 6 + c]).sum::<f32>() / 16.0)
            .collect(),
    };
    // pad H before by 1 and W after by 1 with zeros
    let mut t6 = A {
        s: vec![1, 5, 5, 6],
        v: vec![0.0; 150],
    };
    for y in 0..4 {
        for xx in 0..4 {
            for c in 0..6 {
                t6.v[((y + 1) * 5 + xx) * 6 + c] = t4.at4(0, y, xx, c);
            }
        }
    }
    let t7 = pool_ref(&t6, [2, 2], [2, 2], false, true); // [1,2,2,6]
    let t8: Vec<f32> = (0..6)
        .flat_map(|c| (0..4).map(move |p| (c, p)))
        .map(|(c, p)| t7.v[p * 6 + c])
        .collect();
    let hs: Vec<f32> = t8.iter().map(|&v| v * (v + 3.0).clamp(0.0, 6.0) / 6.0).collect();
    let m = hs.iter().fold(f32::MIN, |a, &b| a.max(b));
    let e: Vec<f32> = hs.iter().map(|v| (v - m).exp()).collect();
    let sum: f32 = e.iter().sum();
    let t13 = A {
        s: vec![1, 24],
        v: e.iter().map(|v| v / sum).collect(),
    };

    let conv_opts = T(vec![(0, F::U8(0)), (1, F::I32(1)), (2, F::I32(1))]);
    let pool_opts = T(vec![
        (0, F::U8(1)),
        (1, F::I32(2)),
        (2, F::I32(2)),
        (3, F::I32(2)),
        (4, F::I32(2)),
    ]);
    let tensors = vec![
        act("x", &[1, 4, 4, 2]),                          // 0
        floats("w", &[3, 1, 1, 2], &w),                   // 1
        floats("bias", &[3], &bias),                      // 2
        act("t1", &[1, 4, 4, 3]),                         // 3
        floats("shift", &[3], &shift),                    // 4
        act("t2", &[1, 4, 4, 3]),                         // 5
        act("t3", &[1, 4, 4, 3]),                         // 6
        act("t4", &[1, 4, 4, 6]),                         // 7
        ints("axes", &[2], &[1, 2]),                      // 8
        act("t5", &[1, 1, 1, 6]),                         // 9
        ints("pads", &[4, 2], &[0, 0, 1, 0, 0, 1, 0, 0]), // 10
        act("t6", &[1, 5, 5, 6]),                         // 11
        act("t7", &[1, 2, 2, 6]),                         // 12
        ints("perm", &[4], &[0, 3, 1, 2]),                // 13
        act("t8", &[1, 6, 2, 2]),                         // 14
        ints("shape", &[2], &[1, 24]),                    // 15
        act("t9", &[1, 24]),                              // 16
        act("t10", &[1, 1, 24]),                          // 17
        ints("dim", &[1], &[1]),                          // 18
        act("t11", &[1, 24]),                             // 19
        act("t12", &[1, 24]),                             // 20
        act("t13", &[1, 24]),                             // 21
    ];
    let ops = vec![
        op(CONV_2D, &[0, 1, 2], &[3], Some((1, conv_opts))),
        op(ADD, &[3, 4], &[5], None),
        op(LOGISTIC, &[5], &[6], None),
        op(CONCATENATION, &[3, 6], &[7], Some((10, T(vec![(0, F::I32(-1))])))),
        op(MEAN, &[7, 8], &[9], Some((27, T(vec![(0, F::U8(1))])))),
        op(PAD, &[7, 10], &[11], None),
        op(MAX_POOL_2D, &[11], &[12], Some((5, pool_opts))),
        op(TRANSPOSE, &[12, 13], &[14], None),
        op(RESHAPE, &[14, 15], &[16], None),
        op(EXPAND_DIMS, &[16, 18], &[17], None),
        op(SQUEEZE, &[17], &[19], Some((30, T(vec![(0, F::I32s(vec![1]))])))),
        op(HARD_SWISH, &[19], &[20], None),
        op(SOFTMAX, &[20], &[21], Some((9, T(vec![(0, F::F32(1.0))])))),
    ];
    let bytes = model(tensors, ops, &[0], &[9, 21]);
    let got = run(&bytes, "chain", &[&x]);
    assert_close(&got[0], &t5, "mean");
    assert_close(&got[1], &t13, "softmax");
}

fn import_error(bytes: &[u8], tag: &str) -> String {
    let dir = std::env::temp_dir().join(format!("kiln-tflite-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("{tag}.tflite"));
    std::fs::write(&path, bytes).unwrap();
    match kiln::load(&path, &Default::default(), &PipelineOptions::default(), |_, _| {}) {
        Ok(_) => panic!("{tag}: imported"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn damaged_models_are_refused_with_a_reason() {
    let relu = |tensors, ins: &[i32], outs: &[i32]| model(tensors, vec![op(RELU, ins, outs, None)], &[0], &[1]);
    // a tensor index past the end
    let e = import_error(&relu(vec![act("x", &[2]), act("y", &[2])], &[0], &[5]), "index");
    assert!(e.contains("tensor index 5 is out of range"), "{e}");
    // a buffer that does not hold the tensor
    let mut short = floats("c", &[4], &[1.0, 2.0]);
    short.shape = vec![4];
    let bytes = model(
        vec![act("x", &[4]), act("y", &[4]), short],
        vec![op(ADD, &[0, 2], &[1], None)],
        &[0],
        &[1],
    );
    let e = import_error(&bytes, "buffer");
    assert!(e.contains("tensor `c`") && e.contains("8 bytes"), "{e}");
    // unknown builtins, every one listed
    let bytes = model(
        vec![act("x", &[2]), act("y", &[2]), act("z", &[2])],
        vec![op(150, &[0], &[1], None), op(201, &[1], &[2], None)],
        &[0],
        &[2],
    );
    let e = import_error(&bytes, "unknown");
    assert!(
        e.contains("2 unsupported op(s)") && e.contains("GELU") && e.contains("builtin operator 201"),
        "{e}"
    );
    // an operator reading a tensor nothing wrote
    let bytes = model(
        vec![act("x", &[2]), act("y", &[2]), act("z", &[2])],
        vec![op(RELU, &[1], &[2], None)],
        &[0],
        &[2],
    );
    let e = import_error(&bytes, "unwritten");
    assert!(e.contains("reads `y` before any operator writes it"), "{e}");
    // a declared shape the computation does not give
    let e = import_error(&relu(vec![act("x", &[2, 3]), act("y", &[3, 2])], &[0], &[1]), "shape");
    assert!(e.contains("the model declares [3, 2]"), "{e}");
    // truncated: the file's name and where it ends
    let good = relu(vec![act("x", &[2]), act("y", &[2])], &[0], &[1]);
    let e = import_error(&good[..good.len() / 2], "cut");
    assert!(e.contains("cut.tflite is not a valid TFLite model"), "{e}");
}

/// SPLIT into three, PACK of two on a middle axis, UNPACK along the last, PRELU with a
/// per-channel slope.
#[test]
fn split_pack_unpack_and_prelu_follow_their_definitions() {
    const SPLIT: i32 = 49;
    const PRELU: i32 = 54;
    const PACK: i32 = 83;
    const UNPACK: i32 = 88;
    let x = random(&[2, 6], 31);
    let at = |r: usize, c: usize| x.v[r * 6 + c];
    // split on axis 1 into three [2, 2]
    let bytes = model(
        vec![
            ints("axis", &[], &[1]),
            act("x", &[2, 6]),
            act("a", &[2, 2]),
            act("b", &[2, 2]),
            act("c", &[2, 2]),
        ],
        vec![op(SPLIT, &[0, 1], &[2, 3, 4], Some((35, T(vec![(0, F::I32(3))]))))],
        &[1],
        &[2, 3, 4],
    );
    let got = run(&bytes, "split", &[&x]);
    for (k, g) in got.iter().enumerate() {
        let want = A {
            s: vec![2, 2],
            v: vec![at(0, 2 * k), at(0, 2 * k + 1), at(1, 2 * k), at(1, 2 * k + 1)],
        };
        assert_close(g, &want, &format!("split part {k}"));
    }
    // pack two [2, 6] on axis 1 -> [2, 2, 6]
    let y = random(&[2, 6], 32);
    let bytes = model(
        vec![act("x", &[2, 6]), act("y", &[2, 6]), act("p", &[2, 2, 6])],
        vec![op(
            PACK,
            &[0, 1],
            &[2],
            Some((59, T(vec![(0, F::I32(2)), (1, F::I32(1))]))),
        )],
        &[0, 1],
        &[2],
    );
    let want = A {
        s: vec![2, 2, 6],
        v: [&x.v[..6], &y.v[..6], &x.v[6..], &y.v[6..]].concat(),
    };
    assert_close(&run(&bytes, "pack", &[&x, &y])[0], &want, "pack");
    // unpack [2, 3] along axis 1 -> three [2]
    let z = random(&[2, 3], 33);
    let bytes = model(
        vec![act("z", &[2, 3]), act("u0", &[2]), act("u1", &[2]), act("u2", &[2])],
        vec![op(
            UNPACK,
            &[0],
            &[1, 2, 3],
            Some((64, T(vec![(0, F::I32(3)), (1, F::I32(-1))]))),
        )],
        &[0],
        &[1, 2, 3],
    );
    for (k, g) in run(&bytes, "unpack", &[&z]).iter().enumerate() {
        assert_close(
            g,
            &A {
                s: vec![2],
                v: vec![z.v[k], z.v[3 + k]],
            },
            &format!("unpack {k}"),
        );
    }
    // prelu with one slope per channel of an NHWC tensor
    let w = random(&[1, 2, 2, 3], 34);
    let slope = [0.1f32, 0.2, 0.3];
    let bytes = model(
        vec![
            act("w", &[1, 2, 2, 3]),
            floats("slope", &[1, 1, 3], &slope),
            act("o", &[1, 2, 2, 3]),
        ],
        vec![op(PRELU, &[0, 1], &[2], None)],
        &[0],
        &[2],
    );
    let want = A {
        s: vec![1, 2, 2, 3],
        v: w.v
            .iter()
            .enumerate()
            .map(|(i, &v)| if v < 0.0 { v * slope[i % 3] } else { v })
            .collect(),
    };
    assert_close(&run(&bytes, "prelu", &[&w])[0], &want, "prelu");
}

/// The elements of `x` (`[d0, d1, d2]`) at the index lists of each axis.
fn gather3(x: &A, idx: [&[usize]; 3]) -> Vec<f32> {
    let mut v = Vec::new();
    for &i in idx[0] {
        for &j in idx[1] {
            for &k in idx[2] {
                v.push(x.v[(i * x.s[1] + j) * x.s[2] + k]);
            }
        }
    }
    v
}

#[test]
fn strided_slice_and_split_v_follow_their_definitions() {
    const STRIDED_SLICE: i32 = 45;
    const SPLIT_V: i32 = 102;
    let x = random(&[2, 5, 6], 41);
    // begin mask on axis 0, a negative start and a negative stride on axis 2
    let opts = T(vec![(0, F::I32(0b001))]);
    let bytes = model(
        vec![
            act("x", &[2, 5, 6]),
            ints("b", &[3], &[1, 1, -1]),
            ints("e", &[3], &[2, 5, 0]),
            ints("s", &[3], &[1, 2, -2]),
            act("y", &[2, 2, 3]),
        ],
        vec![op(STRIDED_SLICE, &[0, 1, 2, 3], &[4], Some((32, opts)))],
        &[0],
        &[4],
    );
    let want = A {
        s: vec![2, 2, 3],
        v: gather3(&x, [&[0, 1], &[1, 3], &[5, 3, 1]]),
    };
    assert_close(&run(&bytes, "slice_a", &[&x])[0], &want, "strided slice");
    // shrink axis 1 at index 2, end mask on axis 2
    let opts = T(vec![(1, F::I32(0b100)), (4, F::I32(0b010))]);
    let bytes = model(
        vec![
            act("x", &[2, 5, 6]),
            ints("b", &[3], &[0, 2, 0]),
            ints("e", &[3], &[2, 3, 1]),
            ints("s", &[3], &[1, 1, 1]),
            act("y", &[2, 6]),
        ],
        vec![op(STRIDED_SLICE, &[0, 1, 2, 3], &[4], Some((32, opts)))],
        &[0],
        &[4],
    );
    let want = A {
        s: vec![2, 6],
        v: gather3(&x, [&[0, 1], &[2], &[0, 1, 2, 3, 4, 5]]),
    };
    assert_close(&run(&bytes, "slice_b", &[&x])[0], &want, "strided slice with shrink");
    // split_v into 2, the rest, 1 along axis 2
    let bytes = model(
        vec![
            act("x", &[2, 5, 6]),
            ints("sizes", &[3], &[2, -1, 1]),
            ints("axis", &[], &[2]),
            act("p", &[2, 5, 2]),
            act("q", &[2, 5, 3]),
            act("r", &[2, 5, 1]),
        ],
        vec![op(SPLIT_V, &[0, 1, 2], &[3, 4, 5], Some((79, T(vec![(0, F::I32(3))]))))],
        &[0],
        &[3, 4, 5],
    );
    let got = run(&bytes, "split_v", &[&x]);
    let all: [usize; 5] = [0, 1, 2, 3, 4];
    for (g, cols) in got.iter().zip([&[0usize, 1][..], &[2, 3, 4], &[5]]) {
        let want = A {
            s: vec![2, 5, cols.len()],
            v: gather3(&x, [&[0, 1], &all, cols]),
        };
        assert_close(g, &want, "split_v");
    }
}

/// TFLite's resize rules: scale `in / out` (or `(in - 1) / (out - 1)` with align_corners),
/// source `y * scale` (or `(y + 0.5) * scale - 0.5` with half-pixel centers for bilinear,
/// `floor((y + 0.5) * scale)` for nearest).
fn resize_ref(x: &A, out: [usize; 2], nearest: bool, align: bool, half: bool) -> A {
    let scale = |i: usize, o: usize| {
        if align && o > 1 {
            (i - 1) as f32 / (o - 1) as f32
        } else {
            i as f32 / o as f32
        }
    };
    let (sh, sw) = (scale(x.s[1], out[0]), scale(x.s[2], out[1]));
    let mut v = Vec::new();
    let near = |o: usize, s: f32, len: usize| {
        let f = if align {
            (o as f32 * s).round()
        } else if half {
            ((o as f32 + 0.5) * s).floor()
        } else {
            (o as f32 * s).floor()
        };
        (f as usize).min(len - 1)
    };
    let lin = |o: usize, s: f32, len: usize| {
        let p = if half { (o as f32 + 0.5) * s - 0.5 } else { o as f32 * s };
        let lo = (p.floor() as isize).max(0) as usize;
        let hi = (p.ceil() as usize).min(len - 1);
        (p, lo, hi)
    };
    for oy in 0..out[0] {
        for ox in 0..out[1] {
            for c in 0..x.s[3] {
                v.push(if nearest {
                    x.at4(0, near(oy, sh, x.s[1]), near(ox, sw, x.s[2]), c)
                } else {
                    let (py, y0, y1) = lin(oy, sh, x.s[1]);
                    let (px, x0, x1) = lin(ox, sw, x.s[2]);
                    let (dy, dx) = (py - y0 as f32, px - x0 as f32);
                    x.at4(0, y0, x0, c) * (1.0 - dy) * (1.0 - dx)
                        + x.at4(0, y1, x0, c) * dy * (1.0 - dx)
                        + x.at4(0, y0, x1, c) * (1.0 - dy) * dx
                        + x.at4(0, y1, x1, c) * dy * dx
                });
            }
        }
    }
    A {
        s: vec![1, out[0], out[1], x.s[3]],
        v,
    }
}

#[test]
fn resizes_follow_tflites_coordinate_rules() {
    const RESIZE_BILINEAR: i32 = 23;
    const RESIZE_NEAREST_NEIGHBOR: i32 = 97;
    let x = random(&[1, 3, 4, 2], 51);
    for nearest in [false, true] {
        for (align, half) in [(false, false), (true, false), (false, true)] {
            let out = [7, 5];
            let want = resize_ref(&x, out, nearest, align, half);
            let (code, tag, fields) = if nearest {
                (
                    RESIZE_NEAREST_NEIGHBOR,
                    74,
                    vec![(0, F::U8(align as u8)), (1, F::U8(half as u8))],
                )
            } else {
                (
                    RESIZE_BILINEAR,
                    15,
                    vec![(2, F::U8(align as u8)), (3, F::U8(half as u8))],
                )
            };
            let bytes = model(
                vec![
                    act("x", &[1, 3, 4, 2]),
                    ints("size", &[2], &[7, 5]),
                    act("y", &[1, 7, 5, 2]),
                ],
                vec![op(code, &[0, 1], &[2], Some((tag, T(fields))))],
                &[0],
                &[2],
            );
            let what = format!("nearest {nearest}, align_corners {align}, half_pixel_centers {half}");
            assert_close(
                &run(&bytes, &format!("resize{nearest}{align}{half}"), &[&x])[0],
                &want,
                &what,
            );
        }
    }
}

#[test]
fn transpose_conv_matches_a_scatter_loop() {
    const TRANSPOSE_CONV: i32 = 67;
    let x = random(&[1, 3, 4, 2], 61);
    for (k, (same, stride, out)) in [(true, 2, [6, 8]), (false, 2, [7, 9]), (true, 1, [3, 4])]
        .into_iter()
        .enumerate()
    {
        let (kh, kw, oc) = (3, 3, 3);
        let w = noise(62 + k as u32, oc * kh * kw * 2, 0.5);
        let b = noise(70 + k as u32, oc, 0.1);
        // TFLite's padding: that of a convolution from the output back to the input
        let pad = |o: usize, kern: usize| {
            let back = if same {
                o.div_ceil(stride)
            } else {
                (o + stride - kern) / stride
            };
            ((back - 1) * stride + kern).saturating_sub(o) / 2
        };
        let (pt, pl) = (pad(out[0], kh), pad(out[1], kw));
        let mut want = A {
            s: vec![1, out[0], out[1], oc],
            v: vec![0.0; out[0] * out[1] * oc],
        };
        for (i, v) in want.v.iter_mut().enumerate() {
            *v = b[i % oc];
        }
        for iy in 0..3 {
            for ix in 0..4 {
                for ky in 0..kh {
                    for kx in 0..kw {
                        let (oy, ox) = (
                            (iy * stride + ky) as isize - pt as isize,
                            (ix * stride + kx) as isize - pl as isize,
                        );
                        if oy < 0 || ox < 0 || oy >= out[0] as isize || ox >= out[1] as isize {
                            continue;
                        }
                        for o in 0..oc {
                            for ic in 0..2 {
                                let wv = w[((o * kh + ky) * kw + kx) * 2 + ic];
                                want.v[((oy as usize) * out[1] + ox as usize) * oc + o] += x.at4(0, iy, ix, ic) * wv;
                            }
                        }
                    }
                }
            }
        }
        let opts = T(vec![
            (0, F::U8(if same { 0 } else { 1 })),
            (1, F::I32(stride as i32)),
            (2, F::I32(stride as i32)),
        ]);
        let bytes = model(
            vec![
                ints("shape", &[4], &[1, out[0] as i32, out[1] as i32, oc as i32]),
                floats("w", &[oc as i32, kh as i32, kw as i32, 2], &w),
                act("x", &[1, 3, 4, 2]),
                floats("b", &[oc as i32], &b),
                act("y", &[1, out[0] as i32, out[1] as i32, oc as i32]),
            ],
            vec![op(TRANSPOSE_CONV, &[0, 1, 2, 3], &[4], Some((49, opts)))],
            &[2],
            &[4],
        );
        assert_close(
            &run(&bytes, &format!("tconv{k}"), &[&x])[0],
            &want,
            &format!("transpose conv {k}"),
        );
    }
}

/// LSTMs with peepholes (batch-major, and CIFG time-major): TFLite's gate equations step by
/// step, over two runs that carry the state from one to the next.
#[test]
fn lstm_matches_the_gate_equations_across_runs() {
    for (cifg, time_major) in [(false, false), (true, true)] {
        lstm_case(cifg, time_major);
    }
}

/// One LSTM's weights, TFLite's gate order (input, forget, cell, output; peepholes input,
/// forget, output).
struct Lstm {
    w: Vec<Vec<f32>>,
    r: Vec<Vec<f32>>,
    p: Vec<Vec<f32>>,
    b: Vec<Vec<f32>>,
    n_in: usize,
    n: usize,
    cifg: bool,
}

impl Lstm {
    /// One step from state `(h, c)` on input `xt`.
    fn step(&self, xt: &[f32], h: &[f32], c: &[f32]) -> (Vec<f32>, Vec<f32>) {
        let sig = |v: f32| 1.0 / (1.0 + (-v).exp());
        let (n, n_in) = (self.n, self.n_in);
        let pre = |g: usize, j: usize| {
            let wx: f32 = (0..n_in).map(|k| self.w[g][j * n_in + k] * xt[k]).sum();
            let rh: f32 = (0..n).map(|k| self.r[g][j * n + k] * h[k]).sum();
            wx + rh + self.b[g][j]
        };
        let (mut hn, mut cn) = (vec![0f32; n], vec![0f32; n]);
        for j in 0..n {
            let f = sig(pre(1, j) + self.p[1][j] * c[j]);
            let i = if self.cifg {
                1.0 - f
            } else {
                sig(pre(0, j) + self.p[0][j] * c[j])
            };
            cn[j] = f * c[j] + i * pre(2, j).tanh();
            let o = sig(pre(3, j) + self.p[2][j] * cn[j]);
            hn[j] = o * cn[j].tanh();
        }
        (hn, cn)
    }
}

fn lstm_case(cifg: bool, time_major: bool) {
    const LSTM: i32 = 44;
    let (batch, time, n_in, n) = (2usize, 3usize, 4usize, 5usize);
    let m = Lstm {
        w: (0..4).map(|g| noise(82 + g, n * n_in, 0.5)).collect(),
        r: (0..4).map(|g| noise(86 + g, n * n, 0.5)).collect(),
        p: (0..3).map(|g| noise(90 + g, n, 0.3)).collect(),
        b: (0..4).map(|g| noise(93 + g, n, 0.2)).collect(),
        n_in,
        n,
        cifg,
    };
    let xs = if time_major {
        [time, batch, n_in]
    } else {
        [batch, time, n_in]
    };
    let ys = if time_major {
        vec![time, batch, n]
    } else {
        vec![batch, time, n]
    };
    let at = |bi: usize, t: usize| if time_major { t * batch + bi } else { bi * time + t };
    let runs = [random(&xs, 81), random(&xs, 181)];
    // the reference over both runs, the state carried across
    let mut states = vec![(vec![0f32; n], vec![0f32; n]); batch];
    let mut wants = Vec::new();
    for x in &runs {
        let mut want = A {
            s: ys.clone(),
            v: vec![0.0; batch * time * n],
        };
        for (bi, (h, c)) in states.iter_mut().enumerate() {
            for t in 0..time {
                (*h, *c) = m.step(&x.v[at(bi, t) * n_in..][..n_in], h, c);
                want.v[at(bi, t) * n..][..n].copy_from_slice(h);
            }
        }
        wants.push(want);
    }
    let (ni, nn) = (n_in as i32, n as i32);
    let mut tensors = vec![act("x", &dims(&xs))];
    tensors.extend((0..4).map(|g| floats(&format!("w{g}"), &[nn, ni], &m.w[g])));
    tensors.extend((0..4).map(|g| floats(&format!("r{g}"), &[nn, nn], &m.r[g])));
    tensors.extend((0..3).map(|g| floats(&format!("p{g}"), &[nn], &m.p[g])));
    tensors.extend((0..4).map(|g| floats(&format!("b{g}"), &[nn], &m.b[g])));
    for name in ["h", "c"] {
        let mut s = act(name, &[batch as i32, nn]);
        s.variable = true;
        tensors.push(s);
    }
    tensors.push(act("y", &dims(&ys)));
    let mut ins: Vec<i32> = (0..16).collect();
    if cifg {
        // no input-gate weights, recurrent weights, peephole or bias
        for slot in [1, 5, 9, 12] {
            ins[slot] = -1;
        }
    }
    ins.extend([-1, -1, 16, 17]);
    let opts = T(vec![(0, F::U8(4)), (3, F::U8(time_major as u8))]);
    let bytes = model(tensors, vec![op(LSTM, &ins, &[18], Some((71, opts)))], &[0], &[18]);
    let tag = format!("lstm_cifg{cifg}_tm{time_major}");
    // inputs x, h, c; outputs y, h/next, c/next
    let zeros = A {
        s: vec![batch, n],
        v: vec![0.0; batch * n],
    };
    let first = run(&bytes, &tag, &[&runs[0], &zeros, &zeros]);
    assert_eq!(first.len(), 3, "{tag}: the states are outputs too");
    assert_close(&first[0], &wants[0], &format!("{tag} run 1"));
    let state = |t: &Tensor| A {
        s: t.shape.clone(),
        v: t.to_f32_vec(),
    };
    let second = run(&bytes, &tag, &[&runs[1], &state(&first[1]), &state(&first[2])]);
    assert_close(&second[0], &wants[1], &format!("{tag} run 2 (continued)"));
}

/// Empty and degenerate shapes through every builtin family: an error or a result, never a
/// panic (the tests run with overflow checks).
#[test]
fn degenerate_shapes_give_errors_not_panics() {
    let pool = || {
        Some((
            5,
            T(vec![
                (0, F::U8(0)),
                (1, F::I32(2)),
                (2, F::I32(2)),
                (3, F::I32(3)),
                (4, F::I32(3)),
            ]),
        ))
    };
    for shape in [[1, 0, 4, 2], [0, 3, 3, 2], [1, 3, 3, 0], [1, 1, 1, 1]] {
        let cases: Vec<OneOp> = vec![
            (
                CONV_2D,
                vec![floats("w", &[2, 3, 3, 2], &[0.5; 36])],
                Some((1, T(vec![(0, F::U8(0))]))),
            ),
            (
                DEPTHWISE_CONV_2D,
                vec![floats("w", &[1, 3, 3, 2], &[0.5; 18])],
                Some((2, T(vec![(0, F::U8(0)), (3, F::I32(1))]))),
            ),
            (AVERAGE_POOL_2D, vec![], pool()),
            (MAX_POOL_2D, vec![], pool()),
            (23, vec![ints("size", &[2], &[4, 4])], None),
            (97, vec![ints("size", &[2], &[4, 4])], None),
            (MEAN, vec![ints("axes", &[2], &[1, 2])], None),
            (PAD, vec![ints("p", &[4, 2], &[0, 0, 1, 1, 1, 1, 0, 0])], None),
            (SOFTMAX, vec![], None),
            (FULLY_CONNECTED, vec![floats("w", &[3, 2], &[0.5; 6])], None),
        ];
        // TRANSPOSE_CONV takes the output shape and the weights before the input
        let tconv = model(
            vec![
                ints("shape", &[4], &[1, 2, 2, 2]),
                floats("w", &[2, 3, 3, 2], &[0.5; 36]),
                act("x", &shape),
                act("y", &[1, 2, 2, 2]),
            ],
            vec![op(
                67,
                &[0, 1, 2],
                &[3],
                Some((49, T(vec![(0, F::U8(0)), (1, F::I32(2)), (2, F::I32(2))]))),
            )],
            &[2],
            &[3],
        );
        let dir = std::env::temp_dir().join(format!("kiln-tflite-degenerate-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("tconv.bin"), tconv).unwrap();
        let _ = kiln::load(
            &dir.join("tconv.bin"),
            &Default::default(),
            &PipelineOptions::default(),
            |_, _| {},
        );
        for (code, extra, options) in cases {
            let n = extra.len() as i32;
            let mut tensors = vec![act("x", &shape)];
            tensors.extend(extra);
            tensors.push(act("y", &[1, 2, 2, 2]));
            let bytes = model(
                tensors,
                vec![op(code, &(0..=n).collect::<Vec<_>>(), &[n + 1], options)],
                &[0],
                &[n + 1],
            );
            let dir = std::env::temp_dir().join(format!("kiln-tflite-degenerate-{}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            let path = dir.join(format!("{code}.bin"));
            std::fs::write(&path, bytes).unwrap();
            // any outcome but a panic
            if let Err(e) = kiln::load(&path, &Default::default(), &PipelineOptions::default(), |_, _| {}) {
                assert!(
                    e.to_string().contains('`'),
                    "{shape:?} builtin {code}: an error that names nothing: {e}"
                );
            }
        }
    }
}

/// SVDF (rank 2, memory 3, ReLU) over three runs carrying the state: TFLite's definition,
/// a window of past feature columns weighted per filter.
#[test]
fn svdf_matches_its_definition_across_runs() {
    const SVDF: i32 = 27;
    let (batch, n_in, filters, memory, rank) = (2usize, 4usize, 6usize, 3usize, 2usize);
    let units = filters / rank;
    let wf = noise(101, filters * n_in, 0.5);
    let wt = noise(102, filters * memory, 0.5);
    let bias = noise(103, units, 0.2);
    let runs: Vec<A> = (0..3).map(|k| random(&[batch, n_in], 110 + k)).collect();
    // reference: state[b][f][m], newest column last
    let mut state = vec![0f32; batch * filters * memory];
    let mut wants = Vec::new();
    for x in &runs {
        let mut y = vec![0f32; batch * units];
        for b in 0..batch {
            let s = &mut state[b * filters * memory..][..filters * memory];
            s.rotate_left(1);
            for f in 0..filters {
                s[f * memory + memory - 1] = (0..n_in).map(|i| wf[f * n_in + i] * x.v[b * n_in + i]).sum();
            }
            for u in 0..units {
                let total: f32 = (0..rank)
                    .map(|r| {
                        (0..memory)
                            .map(|m| s[(u * rank + r) * memory + m] * wt[(u * rank + r) * memory + m])
                            .sum::<f32>()
                    })
                    .sum();
                y[b * units + u] = (total + bias[u]).max(0.0);
            }
        }
        wants.push(A {
            s: vec![batch, units],
            v: y,
        });
    }
    let mut st = act("state", &[batch as i32, (filters * memory) as i32]);
    st.variable = true;
    let tensors = vec![
        act("x", &[batch as i32, n_in as i32]),
        floats("wf", &[filters as i32, n_in as i32], &wf),
        floats("wt", &[filters as i32, memory as i32], &wt),
        floats("bias", &[units as i32], &bias),
        st,
        act("y", &[batch as i32, units as i32]),
    ];
    let opts = T(vec![(0, F::I32(rank as i32)), (1, F::U8(1))]);
    let bytes = model(
        tensors,
        vec![op(SVDF, &[0, 1, 2, 3, 4], &[5], Some((6, opts)))],
        &[0],
        &[5],
    );
    let mut s = A {
        s: vec![batch, filters * memory],
        v: vec![0.0; batch * filters * memory],
    };
    for (k, (x, want)) in runs.iter().zip(&wants).enumerate() {
        let got = run(&bytes, "svdf", &[x, &s]);
        assert_close(&got[0], want, &format!("svdf run {k}"));
        s = A {
            s: got[1].shape.clone(),
            v: got[1].to_f32_vec(),
        };
    }
}

/// The f16 bits of an f32 that binary16 holds exactly (a normal number or zero).
fn half_bits(v: f32) -> u16 {
    if v == 0.0 {
        return 0;
    }
    let b = v.to_bits();
    let (sign, exp, man) = (
        (b >> 16) & 0x8000,
        ((b >> 23) & 0xff) as i32 - 127 + 15,
        (b >> 13) & 0x3ff,
    );
    assert!(
        (1..31).contains(&exp) && b & 0x1fff == 0,
        "{v} is not exact in binary16"
    );
    (sign | (exp as u32) << 10 | man) as u16
}

/// Weights stored as float16 (TFLite's float16 quantization) or int8 per channel (dynamic
/// range), each widened by a DEQUANTIZE before the convolution that reads them.
#[test]
fn dequantized_weights_feed_convolutions() {
    const DEQUANTIZE: i32 = 6;
    let x = random(&[1, 5, 5, 2], 121);
    let case = ConvCase {
        depthwise: false,
        x: [1, 5, 5, 2],
        w: [3, 3, 3, 2],
        stride: [1, 1],
        dilation: [1, 1],
        same: true,
        act: 0,
    };
    let b = [0.25f32, -0.5, 0.125];
    // float16: values on a 1/16 grid, exact in binary16
    let w: Vec<f32> = (0..54).map(|i| ((i * 7 % 17) as f32 - 8.0) / 16.0).collect();
    let mut w16 = floats("w16", &[3, 3, 3, 2], &[]);
    w16.ty = 1;
    w16.data = Some(w.iter().flat_map(|&v| half_bits(v).to_le_bytes()).collect());
    // int8 per output channel
    let q: Vec<i8> = (0..54).map(|i| (i * 37 % 255) as i8).collect();
    let scales = [0.01f32, 0.02, 0.005];
    let wq: Vec<f32> = q.iter().enumerate().map(|(i, &v)| v as f32 * scales[i / 18]).collect();
    let w8 = tflite_build::weights8("w8", &[3, 3, 3, 2], &q, &scales, 0);
    for (tag, wt, wf) in [("float16", w16, &w), ("int8", w8, &wq)] {
        let want = conv_ref(&case, &x, wf, &b);
        let bytes = model(
            vec![
                act("x", &[1, 5, 5, 2]),
                wt,
                act("w", &[3, 3, 3, 2]),
                floats("b", &[3], &b),
                act("y", &[1, 5, 5, 3]),
            ],
            vec![
                op(DEQUANTIZE, &[1], &[2], None),
                op(
                    CONV_2D,
                    &[0, 2, 3],
                    &[4],
                    Some((1, T(vec![(0, F::U8(0)), (1, F::I32(1)), (2, F::I32(1))]))),
                ),
            ],
            &[0],
            &[4],
        );
        assert_close(&run(&bytes, &format!("dequantized_{tag}"), &[&x])[0], &want, tag);
    }
}

//! The native int8 depthwise kernel (channels-last on the byte dot product) on shapes that
//! reach every edge: channel counts that are not whole vectors of sixteen or four, kernels
//! whose taps are not whole groups of four, strides, dilations, uneven padding, two images,
//! per-channel and per-tensor rescales, zero points at the ends of the range, regular and
//! pointwise convolutions (the dot-product or pair-product kernel), both roundings of the
//! rescale (ONNX Runtime's and TFLite's), and a rescale
//! large enough that the sums do not provably fit (the saturating path). Every backend must
//! give the evaluator's bytes; the native object is also built with `--target-cpu native`
//! (the VNNI or `sdot` form where the host has it).

use kiln_ir::op::{Numerics, QLinear, Window};
use kiln_ir::{DType, Graph, Op, QParams, Scalar, Tensor, TensorType};
use kiln_tests::{HOST, Toolchain, bit_exact_on_every_backend_many, build_native_for};

#[derive(Clone)]
struct Case {
    /// One group of all channels (a regular convolution on im2col rows) instead of one
    /// channel per group.
    dense: bool,
    n: usize,
    c: usize,
    hw: (usize, usize),
    k: (usize, usize),
    stride: (usize, usize),
    dil: (usize, usize),
    pads: [usize; 4],
    zp: i32,
    per_channel: bool,
    /// log2 of the rescale: around -10 for realistic layers, +20 to defeat the fit proof
    scale_exp: i32,
    out_zp: i32,
    /// The rounding of the rescale (TFLite's two steps, or ONNX Runtime's one).
    numerics: Numerics,
    /// A fused ReLU: outputs clamped below at the output zero point.
    relu: bool,
}

/// Deterministic bytes over the whole int8 range.
fn bytes(seed: u64, n: usize) -> Vec<i8> {
    let mut s = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 24) as u8 as i8
        })
        .collect()
}

fn depthwise(case: &Case, seed: u64) -> (Graph, Vec<Tensor>) {
    let (c, (h, w), (kh, kw)) = (case.c, case.hw, case.k);
    let q = |zp| QParams::PerTensor {
        scale: 0.05,
        zero_point: zp,
    };
    let mut g = Graph::new("qdw");
    let x = g.add_input(
        "x",
        TensorType::new(DType::quantized(Scalar::I8, q(case.zp)), vec![case.n, c, h, w]),
    );
    let cg = if case.dense { c } else { 1 };
    let wv = g.add_const(
        "w",
        Tensor::from_vec(vec![c, cg, kh, kw], bytes(seed + 1, c * cg * kh * kw)),
    );
    let bias: Vec<i32> = bytes(seed + 2, c).iter().map(|&b| b as i32 * 300).collect();
    let bv = g.add_const("b", Tensor::from_vec(vec![c], bias));
    let requant: std::sync::Arc<[_]> = (0..if case.per_channel { c } else { 1 })
        .map(|i| kiln_runtime::quantize_multiplier(2f64.powi(case.scale_exp) * (1.0 + i as f64 / 7.0)).unwrap())
        .collect();
    let op = Op::QConv {
        window: Window {
            kernel: vec![kh, kw],
            strides: vec![case.stride.0, case.stride.1],
            dilations: vec![case.dil.0, case.dil.1],
            pads: case.pads.to_vec(),
        },
        group: if case.dense { 1 } else { c },
        q: QLinear {
            input_zp: case.zp,
            output_scale: 0.1,
            output_zp: case.out_zp,
            requant,
            act_min: if case.relu { case.out_zp } else { -128 },
            act_max: 127,
            weight_bits: 8,
            numerics: case.numerics,
        },
    };
    let (_, y) = g.add_node("dw", op, vec![x, wv, bv], &[]).unwrap();
    g.add_output(y[0]);
    let xs = Tensor::from_vec(vec![case.n, c, h, w], bytes(seed, case.n * c * h * w));
    (g, vec![xs])
}

/// Each model built for the host's own CPU (`--target-cpu native`: its byte dot product, or
/// on AVX2 the 256-bit kernels), apart from the portable object: a line per model whose
/// outputs on any set are not the evaluator's bytes.
fn host_cpu_failures(built: &[(String, Graph, Vec<Vec<Tensor>>)]) -> Vec<String> {
    let native = Toolchain {
        cpu: Some("native"),
        ..HOST
    };
    let mut failures = Vec::new();
    for (tag, g, sets) in built {
        let d = std::env::temp_dir().join(format!("kiln-int8k-native-{}-{tag}", std::process::id()));
        let exe = build_native_for(g, "m", &d, &native).unwrap();
        for inputs in sets {
            let want = kiln_ir::eval::run(g, inputs).unwrap();
            let got = exe.run(g, inputs).unwrap();
            if got[0].data.to_le_bytes() != want[0].data.to_le_bytes() {
                failures.push(format!("{tag} native --target-cpu native: not the evaluator's bytes"));
                break;
            }
        }
        let _ = std::fs::remove_dir_all(&d);
    }
    failures
}

#[test]
fn int8_depthwise_convolutions_are_bit_exact_everywhere() {
    let d = |n, c, hw, k, stride, dil, pads, zp, per_channel, scale_exp| Case {
        dense: false,
        // with the saturating rescale, zero points that would push a saturated sum past
        // either i32 bound (the stage adds them in exact integers)
        out_zp: match scale_exp {
            20 => 5,
            21 => -5,
            _ => -3,
        },
        n,
        c,
        hw,
        k,
        stride,
        dil,
        pads,
        zp,
        per_channel,
        scale_exp,
        numerics: Numerics::Onnx,
        relu: false,
    };
    let cases = [
        // KWS: 3x3 same padding, 64 channels (four whole vectors)
        d(1, 64, (25, 5), (3, 3), (1, 1), (1, 1), [1, 1, 1, 1], -128, true, -10),
        // MobileNet stride 2 with padding only at the end, 24 channels (one and a half vectors)
        d(1, 24, (9, 11), (3, 3), (2, 2), (1, 1), [0, 0, 1, 1], 5, false, -9),
        // 5 channels (no whole group of four), dilation, uneven padding, two images
        d(2, 5, (7, 6), (3, 2), (1, 2), (2, 1), [2, 0, 1, 1], 127, true, -8),
        // 5x5 (25 taps: a last group of one), no padding at all
        d(1, 18, (8, 9), (5, 5), (1, 1), (1, 1), [0, 0, 0, 0], 0, true, -11),
        // a rescale of 2^20: the sums cannot be proven to fit, so the saturating path runs
        d(1, 20, (6, 6), (3, 3), (1, 1), (1, 1), [1, 1, 1, 1], -7, true, 20),
        d(1, 20, (6, 6), (3, 3), (1, 1), (1, 1), [1, 1, 1, 1], -7, true, 21),
        // 1x1 depthwise (a per-channel scale) and a 1-wide plane
        d(1, 33, (4, 1), (1, 1), (1, 1), (1, 1), [0, 0, 0, 0], 3, true, -6),
        // 1-D convolutions over time, `[C][H][1]` (taken as the one row they are in
        // memory, as SWW's): 10x1 with padding above and below and stride 2, dilated 3x1
        d(1, 40, (30, 1), (10, 1), (2, 1), (1, 1), [4, 0, 5, 0], 6, true, -9),
        d(2, 17, (9, 1), (3, 1), (1, 1), (2, 1), [0, 0, 0, 0], -2, false, -8),
    ];
    // regular convolutions with stride 2 (im2col gathers every other byte), rows of 9, 33
    // and 40 outputs (partial and whole 8-byte chunks), 3 and 5 input channels
    let dense = |c, hw: (usize, usize), pads| Case {
        dense: true,
        ..d(1, c, hw, (3, 3), (2, 2), (1, 1), pads, -5, true, -9)
    };
    // pointwise (the direct product; 12 channels, then 6: rows padded to whole words and a
    // last block of two output channels), 21 positions (a partial block of five)
    let pointwise = |c| Case {
        dense: true,
        ..d(1, c, (3, 7), (1, 1), (1, 1), (1, 1), [0, 0, 0, 0], 9, true, -8)
    };
    // stride 1 (read in place from a bordered copy on the pair kernel): 3x3 same padding
    // with 16 columns, uneven padding and dilation with 11, a 5x1 window on one column
    let dense1 = |c, hw, k, dil, pads| Case {
        dense: true,
        ..d(1, c, hw, k, (1, 1), dil, pads, 4, true, -9)
    };
    let cases: Vec<Case> = cases
        .into_iter()
        .chain([
            dense1(4, (6, 16), (3, 3), (1, 1), [1, 1, 1, 1]),
            dense1(3, (7, 11), (3, 2), (2, 1), [2, 0, 0, 1]),
            dense1(2, (9, 9), (5, 1), (1, 1), [2, 0, 2, 0]),
            dense(3, (7, 18), [1, 1, 1, 1]),
            dense(5, (9, 66), [0, 0, 1, 1]),
            dense(3, (5, 80), [1, 1, 1, 1]),
            pointwise(12),
            pointwise(6),
            // sixteen channels, one rescale for all, a fused ReLU (on AVX2 the whole blocks
            // of eight positions are finished inside the 256-bit kernel)
            Case {
                relu: true,
                per_channel: false,
                ..pointwise(16)
            },
        ])
        // every case in both roundings of the rescale
        .flat_map(|c| {
            let t = Case {
                numerics: Numerics::Tflite,
                ..c.clone()
            };
            [c, t]
        })
        .collect();
    let built: Vec<(String, Graph, Vec<Vec<Tensor>>)> = cases
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let (g, x) = depthwise(c, 300 + i as u64);
            (format!("qdw{i}"), g, vec![x])
        })
        .collect();
    let models: Vec<(&str, &Graph, &[Vec<Tensor>])> =
        built.iter().map(|(t, g, s)| (t.as_str(), g, s.as_slice())).collect();
    let dir = std::env::temp_dir().join(format!("kiln-qdw-{}", std::process::id()));
    let mut failures = bit_exact_on_every_backend_many(&models, &dir);
    failures.extend(host_cpu_failures(&built));
    // the saturating case must reach both ends, the others must not be a few values
    for ((tag, g, sets), case) in built.iter().zip(&cases) {
        let y = kiln_ir::eval::run(g, &sets[0]).unwrap()[0].to_i64_vec();
        let distinct = y.iter().collect::<std::collections::BTreeSet<_>>().len();
        if case.scale_exp > 0 {
            assert!(
                y.contains(&-128) && y.contains(&127),
                "{tag}: does not saturate both ways"
            );
        } else {
            assert!(distinct > 8, "{tag}: only {distinct} distinct outputs");
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Int8 `QAdd` as the quantizer builds it (TFLite's scheme: both sides rescaled to twice the
/// larger input scale after a left shift of 20, summed, rescaled to the output), on lengths
/// with and without a tail past the sixteen-element vectors, scale ratios from 1:1 to 1:40,
/// an output scale small enough to clamp, a fused ReLU bound and a Sub (b's multiplier
/// negated); every byte value on both sides; both numerics. Natively the whole vectors take
/// the lane-wise rescales, the tail the scalar tables.
#[test]
fn int8_adds_are_bit_exact_everywhere() {
    let q = |m: f64| kiln_runtime::quantize_multiplier(m).unwrap();
    let mut graphs = Vec::new();
    let cases = [
        // (len, scale a, scale b, out scale, zps (a, b, out), act_min, sub)
        (16usize, 0.05f64, 0.05f64, 0.1f64, (0, 0, 0), -128, false),
        (105, 0.02, 0.8, 0.5, (-3, 7, 2), -128, false),
        (300, 0.1, 0.0025, 0.004, (12, -128, -20), -128, false),
        (67, 0.03, 0.06, 0.02, (5, -5, -128), -128, true),
        (45, 0.04, 0.05, 0.07, (-1, 3, -10), -10, false),
    ];
    for (i, &(len, sa, sb, so, (za, zb, zo), act_min, sub)) in cases.iter().enumerate() {
        for numerics in [Numerics::Onnx, Numerics::Tflite] {
            let twice = 2.0 * sa.max(sb);
            let mut b = q(sb / twice);
            if sub {
                b.multiplier = -b.multiplier;
            }
            let op = Op::QAdd(kiln_ir::op::QAdd {
                a_zp: za,
                a: q(sa / twice),
                b_zp: zb,
                b,
                output_scale: so as f32,
                output_zp: zo,
                out: q(twice / ((1u64 << kiln_runtime::ADD_LEFT_SHIFT) as f64 * so)),
                act_min,
                act_max: 127,
                numerics,
            });
            let ty = |s: f64, z: i32| {
                let p = QParams::PerTensor {
                    scale: s as f32,
                    zero_point: z,
                };
                TensorType::new(DType::quantized(Scalar::I8, p), vec![1, len])
            };
            let mut g = Graph::new("qadd");
            let x = g.add_input("a", ty(sa, za));
            let y = g.add_input("b", ty(sb, zb));
            let out = vec![("y".to_string(), ty(so, zo))];
            let (_, o) = g.add_node_typed("add", op, vec![x, y], out);
            g.add_output(o[0]);
            // every byte on each side (shifted against each other), then random ones
            let all = |k: usize| -> Vec<i8> { (0..len).map(|j| ((j * k + i) % 256) as u8 as i8).collect() };
            let sets = vec![
                vec![
                    Tensor::from_vec(vec![1, len], all(1)),
                    Tensor::from_vec(vec![1, len], all(7)),
                ],
                vec![
                    Tensor::from_vec(vec![1, len], bytes(90 + i as u64, len)),
                    Tensor::from_vec(vec![1, len], bytes(190 + i as u64, len)),
                ],
            ];
            graphs.push((format!("qadd{i}_{numerics:?}").to_lowercase(), g, sets));
        }
    }
    let models: Vec<(&str, &Graph, &[Vec<Tensor>])> =
        graphs.iter().map(|(t, g, s)| (t.as_str(), g, s.as_slice())).collect();
    let dir = std::env::temp_dir().join(format!("kiln-qadd-{}", std::process::id()));
    let mut failures = bit_exact_on_every_backend_many(&models, &dir);
    failures.extend(host_cpu_failures(&graphs));
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Int8 dense products (`QMatMul` with constant weights and bias): 150 outputs (37 blocks of
/// four, so one whole chunk of the 256-bit kernel and a partial one, then two single
/// outputs), 7 outputs over three rows, depths of 16 and 48; per tensor and per channel;
/// both numerics.
#[test]
fn int8_dense_products_are_bit_exact_everywhere() {
    let mut built = Vec::new();
    for (i, &(rows, k, n, per_channel)) in [(1usize, 32usize, 150usize, false), (3, 16, 7, true), (2, 48, 36, true)]
        .iter()
        .enumerate()
    {
        for numerics in [Numerics::Onnx, Numerics::Tflite] {
            let qp = |s: f32, z: i32| QParams::PerTensor {
                scale: s,
                zero_point: z,
            };
            let mut g = Graph::new("qmm");
            let x = g.add_input(
                "x",
                TensorType::new(DType::quantized(Scalar::I8, qp(0.05, -7)), vec![rows, k]),
            );
            let w = g.add_const("w", Tensor::from_vec(vec![k, n], bytes(40 + i as u64, k * n)));
            let bias: Vec<i32> = bytes(50 + i as u64, n).iter().map(|&b| b as i32 * 90).collect();
            let b = g.add_const("b", Tensor::from_vec(vec![n], bias));
            let requant: std::sync::Arc<[_]> = (0..if per_channel { n } else { 1 })
                .map(|j| kiln_runtime::quantize_multiplier(2f64.powi(-10) * (1.0 + j as f64 / 50.0)).unwrap())
                .collect();
            let op = Op::QMatMul {
                q: QLinear {
                    input_zp: -7,
                    output_scale: 0.1,
                    output_zp: 3,
                    requant,
                    act_min: -128,
                    act_max: 127,
                    weight_bits: 8,
                    numerics,
                },
            };
            let out = vec![(
                "y".to_string(),
                TensorType::new(DType::quantized(Scalar::I8, qp(0.1, 3)), vec![rows, n]),
            )];
            let (_, y) = g.add_node_typed("mm", op, vec![x, w, b], out);
            g.add_output(y[0]);
            let sets = vec![vec![Tensor::from_vec(vec![rows, k], bytes(60 + i as u64, rows * k))]];
            let y = kiln_ir::eval::run(&g, &sets[0]).unwrap()[0].to_i64_vec();
            let distinct = y.iter().collect::<std::collections::BTreeSet<_>>().len();
            assert!(distinct > 5, "qmm{i}: only {distinct} distinct outputs");
            built.push((format!("qmm{i}_{numerics:?}").to_lowercase(), g, sets));
        }
    }
    let models: Vec<(&str, &Graph, &[Vec<Tensor>])> =
        built.iter().map(|(t, g, s)| (t.as_str(), g, s.as_slice())).collect();
    let dir = std::env::temp_dir().join(format!("kiln-qmm-{}", std::process::id()));
    let mut failures = bit_exact_on_every_backend_many(&models, &dir);
    failures.extend(host_cpu_failures(&built));
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Byte transposes that move the last axis in front of the axes before it, as a
/// channels-last int8 input becomes planar: two to four channels (natively gathered by
/// constant swizzles, sixteen positions at a time, and the positions past them), sixteen or
/// more (blocks of four positions by sixteen channels), several outer items, and a
/// five-channel one that takes the generic copy. Every backend gives the
/// evaluator's bytes.
#[test]
fn channels_last_bytes_transpose_exactly() {
    let cases: [(&[usize], &[usize]); 10] = [
        (&[1, 5, 7, 3], &[0, 3, 1, 2]),
        (&[2, 17, 2], &[0, 2, 1]),
        (&[1, 4, 4, 4], &[0, 3, 1, 2]),
        (&[3, 9, 4], &[2, 0, 1]),
        (&[1, 32, 3], &[0, 2, 1]),
        (&[1, 6, 6, 5], &[0, 3, 1, 2]),
        // sixteen channels and more: blocks of four positions by sixteen channels, the
        // last partial ones overlapping (SWW's input: 30 positions of 40 channels)
        (&[1, 30, 1, 40], &[0, 3, 1, 2]),
        (&[1, 4, 16], &[0, 2, 1]),
        (&[2, 5, 17], &[0, 2, 1]),
        (&[1, 2, 3, 20], &[0, 3, 1, 2]),
    ];
    let built: Vec<(String, Graph, Vec<Vec<Tensor>>)> = cases
        .iter()
        .enumerate()
        .map(|(i, &(shape, perm))| {
            let q = QParams::PerTensor {
                scale: 0.1,
                zero_point: 3,
            };
            let mut g = Graph::new("t");
            let x = g.add_input("x", TensorType::new(DType::quantized(Scalar::I8, q), shape.to_vec()));
            let op = Op::Transpose { perm: perm.to_vec() };
            let (_, y) = g.add_node("t", op, vec![x], &[]).unwrap();
            g.add_output(y[0]);
            let len = shape.iter().product();
            let xs = Tensor::from_vec(shape.to_vec(), bytes(900 + i as u64, len));
            (format!("transpose{i}"), g, vec![vec![xs]])
        })
        .collect();
    let models: Vec<(&str, &Graph, &[Vec<Tensor>])> =
        built.iter().map(|(t, g, s)| (t.as_str(), g, s.as_slice())).collect();
    let dir = std::env::temp_dir().join(format!("kiln-transpose-{}", std::process::id()));
    let mut failures = bit_exact_on_every_backend_many(&models, &dir);
    failures.extend(host_cpu_failures(&built));
    let _ = std::fs::remove_dir_all(&dir);
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

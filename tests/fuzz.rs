//! A seeded, structure-aware fuzzer that runs on stable Rust: mutants of the repository's
//! models (ONNX field mutations and byte mutations, TFLite byte mutations, and small random
//! TFLite graphs from the test writer) go through import, the pass pipeline, a quantized
//! model's integer rewrite, C and native code generation and, when small, the evaluator. Any
//! panic fails the test; the input is saved under `target/fuzz-found/`, to be kept in
//! `tests/fuzz/corpus/` as a regression case (every file there is replayed first). An abort
//! (an allocation failure) cannot be caught: the input it died on is `target/fuzz-last.model`.
//!
//! The sequence of inputs is fixed by the seed, so CI runs exactly the inputs a developer
//! ran: `KILN_FUZZ_ITERS` (default 900 rounds of four mutants, about a minute in a debug
//! build) sets the budget, `KILN_FUZZ_SEED` another sequence; for long runs
//! `KILN_FUZZ_ITERS=20000 cargo test --release -p kiln-tests --test fuzz -- --nocapture`.

mod tflite_build;

use kiln::compile::{CompileOptions, Emit, compile, parse_target};
use kiln::onnx::proto::ModelProto;
use kiln::quantize::{Mode, apply};
use kiln_ir::{Graph, Tensor};
use kiln_tests::repo;
use prost::Message;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

/// xorshift32: small, seedable, the same everywhere.
struct Rng(u32);

impl Rng {
    fn next(&mut self) -> u32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 17;
        self.0 ^= self.0 << 5;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        self.next() as usize % n.max(1)
    }
    /// A value from the edges integers like to break at.
    fn edgy(&mut self) -> i64 {
        const E: [i64; 12] = [0, 1, -1, 2, 3, 7, 64, 255, 65536, -65536, i32::MAX as i64, 1 << 40];
        E[self.below(E.len())]
    }
}

/// Elements a graph's values hold in all: the evaluator runs only on small mutants.
fn elements(g: &Graph) -> usize {
    (0..g.num_values())
        .map(|i| g.value(kiln_ir::ValueId::from_index(i)).ty.numel())
        .fold(0usize, |a, n| a.saturating_add(n))
}

/// Everything a user's command could do with the model in `bytes`; errors are fine.
fn exercise(bytes: &[u8], dir: &Path) {
    let path = dir.join("mutant.model");
    let opts = Default::default();
    let imported = if kiln::tflite::is_tflite(bytes) {
        kiln::tflite::import(&path, bytes, &opts)
    } else {
        kiln::onnx::load_bytes(&path, bytes, &opts)
    };
    let Ok(mut m) = imported else { return };
    if kiln::passes::run(&mut m.graph, &Default::default(), |_, _| {}).is_err() {
        return;
    }
    let mut graphs = vec![m.graph.clone()];
    if let Mode::Model { .. } = Mode::default_for(&m.graph)
        && let Ok(a) = apply(
            &m.graph,
            &m.producer,
            &Mode::default_for(&m.graph),
            &Default::default(),
            |_, _| {},
        )
    {
        graphs.push(a.graph);
    }
    for g in &graphs {
        if elements(g) > 1 << 22 {
            continue;
        }
        for emit in [Emit::C, Emit::Object] {
            let o = CompileOptions {
                emit,
                target: parse_target("host").expect("host"),
                prefix: "m".into(),
                static_arena: false,
            };
            let _ = compile(g, &o, "fuzz");
        }
        if elements(g) < 1 << 18 {
            let inputs: Vec<Tensor> = g.inputs().iter().map(|&v| Tensor::zeros(&g.value(v).ty)).collect();
            let _ = kiln_ir::eval::run(g, &inputs);
        }
    }
}

/// One structural change to an ONNX model.
fn mutate_onnx(m: &mut ModelProto, rng: &mut Rng) {
    let Some(g) = m.graph.as_mut() else { return };
    let names: Vec<String> = (g.node.iter().flat_map(|n| n.output.clone()))
        .chain(g.initializer.iter().map(|t| t.name.clone()))
        .collect();
    match rng.below(6) {
        0 if !g.node.is_empty() => {
            let ops = kiln::onnx::ops::REGISTRY;
            let i = rng.below(g.node.len());
            g.node[i].op_type = ops[rng.below(ops.len())].op_type.to_string();
        }
        1 if !g.node.is_empty() => {
            let i = rng.below(g.node.len());
            let n = &mut g.node[i];
            if let Some(a) = (!n.attribute.is_empty()).then(|| rng.below(n.attribute.len())) {
                let a = &mut n.attribute[a];
                a.i = rng.edgy();
                if !a.ints.is_empty() {
                    let k = rng.below(a.ints.len());
                    a.ints[k] = rng.edgy();
                }
            }
        }
        2 if !g.node.is_empty() && !names.is_empty() => {
            let i = rng.below(g.node.len());
            let n = &mut g.node[i];
            if !n.input.is_empty() {
                let k = rng.below(n.input.len());
                n.input[k] = names[rng.below(names.len())].clone();
            }
        }
        3 if !g.initializer.is_empty() => {
            let i = rng.below(g.initializer.len());
            let t = &mut g.initializer[i];
            if !t.dims.is_empty() {
                let k = rng.below(t.dims.len());
                t.dims[k] = rng.edgy();
            }
        }
        4 if !g.node.is_empty() => {
            let i = rng.below(g.node.len());
            g.node.remove(i);
        }
        _ if !g.node.is_empty() => {
            let i = rng.below(g.node.len());
            let n = g.node[i].clone();
            g.node.push(n);
        }
        _ => {}
    }
}

fn mutate_bytes(b: &mut [u8], rng: &mut Rng, window: usize) {
    for _ in 0..1 + rng.below(4) {
        if b.is_empty() {
            return;
        }
        let at = rng.below(b.len().min(window));
        match rng.below(3) {
            0 => b[at] = rng.next() as u8,
            1 => b[at] ^= 1 << rng.below(8),
            _ => {
                let v = rng.edgy() as u32;
                let end = (at + 4).min(b.len());
                b[at..end].copy_from_slice(&v.to_le_bytes()[..end - at]);
            }
        }
    }
}

/// A small random TFLite graph: a chain of builtins on a `[1, 4, 4, 3]` float tensor.
fn random_tflite(rng: &mut Rng) -> Vec<u8> {
    use tflite_build::{F, T, act, floats, ints, model, op};
    let mut tensors = vec![act("x", &[1, 4, 4, 3])];
    let mut ops = Vec::new();
    let mut cur = 0i32;
    for k in 0..1 + rng.below(4) {
        let shape = [1, 4, 4, 3];
        let out = tensors.len() as i32;
        let (code, extra, options): (i32, Vec<tflite_build::Tensor>, Option<(u8, T)>) = match rng.below(8) {
            0 => (
                3,
                vec![floats("w", &[3, 1, 1, 3], &[0.5; 9])],
                Some((1, T(vec![(0, F::U8(rng.below(3) as u8))]))),
            ),
            1 => (
                4,
                vec![floats("w", &[1, 3, 3, 3], &[0.1; 27])],
                Some((2, T(vec![(3, F::I32(rng.edgy() as i32))]))),
            ),
            2 => (
                17,
                vec![],
                Some((5, T(vec![(3, F::I32(rng.edgy() as i32)), (4, F::I32(2))]))),
            ),
            3 => (22, vec![ints("s", &[2], &[rng.edgy() as i32, 12])], None),
            4 => (
                34,
                vec![ints("p", &[4, 2], &[0, 0, rng.edgy() as i32, 0, 0, 0, 0, 0])],
                None,
            ),
            5 => (39, vec![ints("perm", &[4], &[0, rng.below(4) as i32, 2, 1])], None),
            6 => (
                45,
                vec![
                    ints("b", &[4], &[0; 4]),
                    ints("e", &[4], &[1, 4, 4, 3]),
                    ints("s", &[4], &[1, rng.edgy() as i32, 1, 1]),
                ],
                None,
            ),
            _ => (97, vec![ints("size", &[2], &[rng.edgy() as i32, 3])], None),
        };
        let mut ins = vec![cur];
        for t in extra {
            ins.push(tensors.len() as i32);
            tensors.push(t);
        }
        let out = out.max(tensors.len() as i32);
        tensors.push(act(&format!("t{k}"), &shape));
        ops.push(op(code, &ins, &[out], options));
        cur = out;
    }
    model(tensors, ops, &[0], &[cur])
}

fn save(found: &mut Vec<PathBuf>, tag: &str, bytes: &[u8]) {
    let dir = repo().join("target/fuzz-found");
    let _ = std::fs::create_dir_all(&dir);
    let p = dir.join(format!("{tag}-{}.model", found.len()));
    let _ = std::fs::write(&p, bytes);
    found.push(p);
}

#[test]
fn mutants_of_the_repository_models_never_panic() {
    let iters: usize = std::env::var("KILN_FUZZ_ITERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(900);
    let seed: u32 = std::env::var("KILN_FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0x6b69_6c6e);
    let dir = std::env::temp_dir().join(format!("kiln-fuzz-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::panic::set_hook(Box::new(|_| {}));
    let mut found = Vec::new();
    // an abort (not a panic) ends the process: the input it died on stays here
    let last = repo().join("target/fuzz-last.model");
    let run = |tag: &str, bytes: &[u8], found: &mut Vec<PathBuf>| {
        let _ = std::fs::write(&last, bytes);
        if catch_unwind(AssertUnwindSafe(|| exercise(bytes, &dir))).is_err() {
            save(found, tag, bytes);
        }
    };
    // the regression corpus first
    let corpus = repo().join("tests/fuzz/corpus");
    let mut replayed = 0;
    for e in std::fs::read_dir(&corpus).into_iter().flatten().flatten() {
        if e.path().extension().is_some_and(|x| x != "md") {
            run("corpus", &std::fs::read(e.path()).unwrap(), &mut found);
            replayed += 1;
        }
    }
    let models = repo().join("tests/models");
    let onnx = std::fs::read(models.join("digits_cnn/model.onnx")).unwrap();
    let qdq = std::fs::read(models.join("mlperf_tiny_kws_dscnn/model_int8_qdq_tflite.onnx")).unwrap();
    let tfl = std::fs::read(models.join("mlperf_tiny_kws_dscnn/source/kws_ref_model.tflite")).unwrap();
    let mut rng = Rng(seed | 1);
    let mut inputs = 0;
    for _ in 0..iters {
        for (tag, base) in [("onnx", &onnx), ("qdq", &qdq)] {
            let mut m = ModelProto::decode(base.as_slice()).unwrap();
            for _ in 0..1 + rng.below(3) {
                mutate_onnx(&mut m, &mut rng);
            }
            let mut b = m.encode_to_vec();
            if rng.below(4) == 0 {
                mutate_bytes(&mut b, &mut rng, usize::MAX);
            }
            run(tag, &b, &mut found);
        }
        let mut b = tfl.clone();
        mutate_bytes(&mut b, &mut rng, 4096);
        run("tflite", &b, &mut found);
        run("tflite-random", &random_tflite(&mut rng), &mut found);
        inputs += 4;
    }
    let _ = std::panic::take_hook();
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_file(&last);
    println!(
        "fuzz: {replayed} corpus cases and {inputs} mutants (seed {seed:#x}), {} panics",
        found.len()
    );
    assert!(found.is_empty(), "panics, inputs saved as {found:?}");
}

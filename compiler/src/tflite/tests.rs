//! Loader tests on the MLPerf Tiny files the repository ships: damaged copies of a real
//! model are refused with an error, never a panic.

use super::import;
use std::path::{Path, PathBuf};

fn kws() -> (PathBuf, Vec<u8>) {
    let p =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/models/mlperf_tiny_kws_dscnn/source/kws_ref_model.tflite");
    let b = std::fs::read(&p).unwrap();
    (p, b)
}

#[test]
fn the_real_model_imports() {
    let (p, b) = kws();
    let m = import(&p, &b, &Default::default()).unwrap();
    assert_eq!(m.producer, super::PRODUCER);
    assert_eq!(m.graph.inputs().len(), 1);
}

#[test]
fn truncated_files_are_errors() {
    let (p, b) = kws();
    for n in (0..b.len()).step_by(53) {
        let r = import(&p, &b[..n], &Default::default());
        let e = r.err().unwrap_or_else(|| panic!("a file cut at {n} bytes imported"));
        assert!(e.to_string().contains("kws_ref_model.tflite"), "{e}");
    }
}

#[test]
fn mutated_files_give_results_or_errors() {
    let (p, b) = kws();
    let mut seed = 0x2545_f491u32;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 17;
        seed ^= seed << 5;
        seed as usize
    };
    let mut errors = 0;
    for _ in 0..300 {
        let mut m = b.clone();
        for _ in 0..1 + next() % 4 {
            let at = next() % m.len().min(4096); // the tables sit before the weights
            m[at] = next() as u8;
        }
        errors += import(&p, &m, &Default::default()).is_err() as usize;
    }
    assert!(errors > 0, "no mutation was noticed");
}

//! Runs the digits classifier compiled by `build.rs` on the shipped reference input: the
//! Rust-source build must agree with the native object (float within 1e-5 relative, int8
//! bit for bit) and both must pick the class ONNX Runtime picked.

include!(concat!(env!("OUT_DIR"), "/digits_obj.rs"));
include!(concat!(env!("OUT_DIR"), "/digits_rs.rs"));
include!(concat!(env!("OUT_DIR"), "/digits_q8_obj.rs"));
include!(concat!(env!("OUT_DIR"), "/digits_q8_rs.rs"));

/// The f32 payload of a little-endian `.npy` file.
fn npy_f32(bytes: &[u8]) -> Vec<f32> {
    let header = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
    bytes[10 + header..]
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

fn argmax(v: &[f32]) -> usize {
    (0..v.len()).fold(0, |b, i| if v[i] > v[b] { i } else { b })
}

fn check() -> Result<String, String> {
    let x = npy_f32(include_bytes!(
        "../../models/digits_cnn/ref/test_data_set_0/input_0.npy"
    ));
    let want = npy_f32(include_bytes!(
        "../../models/digits_cnn/ref/test_data_set_0/output_0.npy"
    ));
    let x: &[f32; digits_rs::INPUT0_COUNT] = x.as_slice().try_into().map_err(|_| "input size")?;

    let mut arena = digits_rs::Arena::new();
    let mut y_rs = [0f32; digits_rs::OUTPUT0_COUNT];
    digits_rs::run(x, &mut y_rs, &mut arena).map_err(|e| format!("rust source: {e}"))?;
    let mut arena = digits_obj::Arena::new();
    let mut y_obj = [0f32; digits_obj::OUTPUT0_COUNT];
    digits_obj::run(x, &mut y_obj, &mut arena).map_err(|e| format!("object: {e}"))?;
    for (a, b) in y_rs.iter().zip(&y_obj) {
        if (a - b).abs() > 1e-6 + 1e-5 * b.abs() {
            return Err(format!("float: Rust source {y_rs:?} vs object {y_obj:?}"));
        }
    }

    let mut arena = digits_q8_rs::Arena::new();
    let mut q_rs = [0f32; digits_q8_rs::OUTPUT0_COUNT];
    digits_q8_rs::run(x, &mut q_rs, &mut arena).map_err(|e| format!("int8 rust source: {e}"))?;
    let mut arena = digits_q8_obj::Arena::new();
    let mut q_obj = [0f32; digits_q8_obj::OUTPUT0_COUNT];
    digits_q8_obj::run(x, &mut q_obj, &mut arena).map_err(|e| format!("int8 object: {e}"))?;
    if q_rs.map(f32::to_bits) != q_obj.map(f32::to_bits) {
        return Err(format!("int8: Rust source {q_rs:?} vs object {q_obj:?}"));
    }

    let class = argmax(&want);
    for (what, y) in [("float", &y_rs), ("int8", &q_rs)] {
        if argmax(y) != class {
            return Err(format!("{what}: class {} where ONNX Runtime says {class}", argmax(y)));
        }
    }
    Ok(format!(
        "digit {class}: float p={:.4} (ONNX Runtime {:.4}), int8 p={:.4}; arenas {} B float, {} B int8",
        y_rs[class],
        want[class],
        q_rs[class],
        digits_rs::ARENA_SIZE,
        digits_q8_rs::ARENA_SIZE
    ))
}

fn main() {
    match check() {
        Ok(s) => println!("{s}"),
        Err(e) => {
            eprintln!("mismatch: {e}");
            std::process::exit(1);
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn object_and_rust_source_agree_with_onnx_runtime() {
        super::check().unwrap();
    }
}

//! Calibration streams its data: samples are read from a stacked `.npy` one at a time, so
//! peak memory does not grow with the data set. A test binary of its own, since it reads
//! the peak resident size of this process's children (`getrusage(RUSAGE_CHILDREN)`).

mod common;
use common::{support, text, tmp};
use kiln::onnx::proto::tensor_shape_proto::dimension::Value as D;

/// The largest resident size of any child waited for so far, in bytes.
fn children_peak_rss() -> u64 {
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `u` is a valid, writable rusage.
    assert_eq!(unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut u) }, 0);
    u.ru_maxrss as u64 * 1024 // kilobytes on Linux
}

/// Writes a float32 `.npy` of `shape` one sample (`per` values) at a time: this process
/// must stay small, since a child's peak includes its parent's at the time it starts.
fn write_npy_f32(path: &std::path::Path, shape: &[usize], per: usize) {
    use std::io::Write;
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let mut head = format!(
        "{{'descr': '<f4', 'fortran_order': False, 'shape': ({}), }}",
        dims.join(", ")
    );
    while (10 + head.len() + 1) % 64 != 0 {
        head.push(' ');
    }
    head.push('\n');
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    f.write_all(b"\x93NUMPY\x01\x00").unwrap();
    f.write_all(&(head.len() as u16).to_le_bytes()).unwrap();
    f.write_all(head.as_bytes()).unwrap();
    for s in 0..shape[0] {
        let bytes: Vec<u8> = (0..per)
            .flat_map(|i| ((((s * per + i) * 7919) % 1000) as f32 / 500.0 - 1.0).to_le_bytes())
            .collect();
        f.write_all(&bytes).unwrap();
    }
    f.flush().unwrap();
}

#[test]
fn calibration_memory_does_not_grow_with_the_data_set() {
    // Relu on 3x256x256 floats (768 KiB a sample), 176 samples: 132 MiB of data
    let dims = [D::DimValue(1), D::DimValue(3), D::DimValue(256), D::DimValue(256)];
    let model = tmp("stream.onnx");
    std::fs::write(&model, support::one_op_model("Relu", "relu", 1, &dims)).unwrap();
    let calib = tmp("stream-calib");
    std::fs::create_dir_all(&calib).unwrap();
    let per = 3 * 256 * 256;
    let n = 176;
    write_npy_f32(&calib.join("input_0.npy"), &[n, 3, 256, 256], per);
    let data = std::fs::metadata(calib.join("input_0.npy")).unwrap().len();
    let out = tmp("stream-out");
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(["compile", model.to_str().unwrap(), "--quantize", "int8", "--calibrate"])
        .arg(&calib)
        .args(["--calibration-method", "minmax", "--emit", "c", "-o"])
        .arg(&out)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o).1);
    assert!(text(&o).1.contains("calibrated on 176 sample(s)"), "{}", text(&o).1);
    let peak = children_peak_rss();
    eprintln!("peak resident {peak} bytes for {data} bytes of calibration data");
    // the whole set in memory would be `data` bytes; streamed it is a few samples
    assert!(
        peak < data / 2,
        "peak {peak} bytes with {data} bytes of calibration data"
    );
    let _ = std::fs::remove_dir_all(&calib);
    let _ = std::fs::remove_dir_all(&out);
}

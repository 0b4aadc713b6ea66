//! Compiles the shipped digits classifier four ways with `kiln::Build`: float and int8, each
//! as a Cranelift object (linked through cargo) and as Rust source.

use kiln::{Build, Emit, Quantize};

fn main() {
    let model = "../models/digits_cnn/model.onnx";
    let calib = "../models/digits_cnn/calib";
    let builds = [
        ("digits_obj", Emit::Object, Quantize::None),
        ("digits_rs", Emit::RustSource, Quantize::None),
        ("digits_q8_obj", Emit::Object, Quantize::int8(calib)),
        ("digits_q8_rs", Emit::RustSource, Quantize::int8(calib)),
    ];
    for (name, emit, q) in builds {
        match Build::new(model).quantize(q).emit(emit).compile(name) {
            Ok(_) => {}
            Err(e) => {
                // A build script fails cleanly by printing the error and exiting non-zero.
                eprintln!("error: {e}");
                std::process::exit(1);
            }
        }
    }
    println!("cargo:rerun-if-changed=build.rs");
}

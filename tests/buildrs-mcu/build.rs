//! Lets `kiln::Build` pick the code generator from cargo's TARGET: a Cranelift object where
//! Cranelift has the target, Rust source elsewhere (this crate is built for
//! `thumbv7em-none-eabihf` in CI), and tells `lib.rs` which one it got.

use kiln::{Build, Emit, Quantize};

fn main() {
    let built = Build::new("../models/digits_cnn/model.onnx")
        .quantize(Quantize::int8("../models/digits_cnn/calib"))
        .compile("digits");
    match built {
        Ok(a) if a.emit == Emit::RustSource => println!("cargo:rustc-cfg=kiln_rust_source"),
        Ok(_) => {}
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    }
    println!("cargo::rustc-check-cfg=cfg(kiln_rust_source)");
}

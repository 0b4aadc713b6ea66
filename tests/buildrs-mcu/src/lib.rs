//! Handwritten-digit recognition on a microcontroller: the int8 digits CNN compiled by
//! `build.rs` for the crate's target (Rust source for a Cortex-M, a native object on the
//! host), behind one safe `no_std` function.
#![no_std]

include!(concat!(env!("OUT_DIR"), "/digits.rs"));

/// Arena type of the compiled model.
pub use digits::Arena;

/// Values per image (8x8 grey levels) and number of classes.
pub const PIXELS: usize = digits::INPUT0_COUNT;
pub const CLASSES: usize = digits::OUTPUT0_COUNT;

/// Whether the model was compiled to Rust source (true on targets Cranelift does not have).
pub const RUST_SOURCE: bool = cfg!(kiln_rust_source);

/// Classifies an image given as int8 (quantized with `digits::INPUT0_SCALE` and
/// `digits::INPUT0_ZERO_POINT`) and returns the digit.
pub fn classify(image: &[i8; PIXELS], arena: &mut Arena) -> usize {
    let mut scores = [0i8; CLASSES];
    if digits::run_int(image, &mut scores, arena).is_err() {
        return 0;
    }
    (0..CLASSES).fold(0, |best, i| if scores[i] > scores[best] { i } else { best })
}

/// Quantizes a float image for [`classify`].
pub fn quantize(image: &[f32; PIXELS]) -> [i8; PIXELS] {
    image.map(|v| kiln_runtime::quantize(v, digits::INPUT0_SCALE, digits::INPUT0_ZERO_POINT, -128, 127) as i8)
}

#[cfg(test)]
mod tests {
    extern crate std;

    /// The reference image of the shipped model is a 6 (ONNX Runtime agrees).
    #[test]
    fn classifies_the_reference_image() {
        let bytes = include_bytes!("../../models/digits_cnn/ref/test_data_set_0/input_0.npy");
        let header = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
        let mut image = [0f32; super::PIXELS];
        for (v, c) in image.iter_mut().zip(bytes[10 + header..].chunks_exact(4)) {
            *v = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        }
        let mut arena = super::Arena::new();
        assert_eq!(super::classify(&super::quantize(&image), &mut arena), 6);
        const {
            assert!(
                !super::RUST_SOURCE,
                "the host has Cranelift: a native object is expected"
            )
        };
    }
}

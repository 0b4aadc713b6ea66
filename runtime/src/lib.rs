//! Integer arithmetic shared, bit for bit, by the reference evaluator and generated code.
//! `no_std` and allocation-free so the same functions can be linked into firmware.
//! The quantized kernels' rounding contract lands here with full-integer quantization.
#![no_std]

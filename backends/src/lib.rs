//! Kiln's code generators. Each backend is a module with the same shape (`Options`, `Error`,
//! one `emit` entry) and depends only on `kiln-ir`; none exist yet — the Cranelift, C and
//! Rust-source backends land with their own issues.

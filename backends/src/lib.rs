//! Kiln's code generators. Each backend depends only on `kiln-ir`, accepts a verified graph
//! with its memory plan, and reports every node it cannot compile at once.

pub mod c;
pub mod cranelift;
pub mod header;
pub mod namer;
pub mod pack;
pub mod rust;
pub mod shapes;
pub mod text;

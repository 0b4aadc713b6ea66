//! Kiln's graph IR. It knows tensors, element types (with quantization), the closed op set,
//! shapes, verification, a stable text form and a reference evaluator — and nothing about
//! ONNX, protobuf or any backend, so every front end and back end meets here.

pub mod accumulate;
pub mod analysis;
pub mod dtype;
pub mod error;
pub mod eval;
pub mod graph;
pub mod op;
pub mod parse;
pub mod plan;
pub mod shape;
pub mod tensor;
pub mod text;
pub mod verify;

pub use dtype::{DType, QParams, Scalar, TensorType};
pub use error::{IrError, Result};
pub use graph::{Graph, Node, NodeId, Value, ValueDef, ValueId};
pub use op::Op;
pub use tensor::{Data, Tensor};

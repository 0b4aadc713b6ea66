//! TensorFlow Lite front end: the only place that knows FlatBuffers and TFLite's schema. A
//! `.tflite` model is lowered into the same IR an ONNX QDQ model becomes, so everything
//! after import (the QDQ reader, the quantizer, every backend) is shared:
//! - quantized activations are integer values; an op reads them through `Dequantize`, and
//!   its float result is `Quantize`d to the tensor's parameters, the pairs `quantize::qdq`
//!   turns back into integer ops with the model's own scales;
//! - quantized weights and biases become float constants that record their integer grid;
//! - TFLite keeps images channels-last, the IR's convolutions and pools channels-first: each
//!   tensor remembers the layout its IR value has, and a transpose is made only where an op
//!   needs the other one (once per tensor and layout), so a chain of convolutions, pools and
//!   elementwise ops stays channels-first from the first layer to the classifier.
//!
//! A model whose tensors are int8 is marked as written by `tflite`, which selects TFLite's
//! integer numerics (`kiln_ir::op::Numerics::Tflite`) by default.

mod flatbuf;
mod lower;
mod lstm;
mod ops;
pub mod schema;
mod svdf;

pub use ops::{BUILTINS, markdown};

use crate::onnx::{DeclaredInput, ImportError, ImportOptions, Imported};
use std::path::Path;

/// The producer name a TFLite import records (it selects TFLite numerics).
pub const PRODUCER: &str = "tflite";

/// Whether `bytes` look like a TFLite model: the FlatBuffers file identifier `TFL3`.
pub fn is_tflite(bytes: &[u8]) -> bool {
    bytes.get(4..8) == Some(b"TFL3")
}

fn decode_error(path: &Path, e: flatbuf::Malformed) -> ImportError {
    ImportError::Tflite {
        path: path.to_path_buf(),
        msg: e.0,
    }
}

/// Imports the TFLite model in `bytes` (read from `path`).
pub fn import(path: &Path, bytes: &[u8], opts: &ImportOptions) -> Result<Imported, ImportError> {
    let model = schema::decode(bytes).map_err(|e| decode_error(path, e))?;
    let name = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut imported = lower::lower(&model, &name, opts).map_err(|e| match e {
        lower::Failure::Import(e) => e,
        lower::Failure::Malformed(m) => decode_error(path, m),
    })?;
    imported.files.push(path.to_path_buf());
    Ok(imported)
}

/// The inputs of the main subgraph as the file declares them: a dimension the converter
/// left open (-1 in the shape signature) is reported by its position.
pub fn declared_inputs(path: &Path, bytes: &[u8]) -> Result<Vec<DeclaredInput>, ImportError> {
    let model = schema::decode(bytes).map_err(|e| decode_error(path, e))?;
    let Some(sg) = model.subgraphs.first() else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for &i in &sg.inputs {
        let Some(t) = usize::try_from(i).ok().and_then(|i| sg.tensors.get(i)) else {
            continue;
        };
        let dims = (t.shape.iter().enumerate())
            .map(|(k, &d)| match t.signature.get(k) {
                Some(&s) if s < 0 => Err(format!("dim{k}")),
                _ => usize::try_from(d).map_err(|_| format!("dim{k}")),
            })
            .collect();
        out.push((t.name.clone(), dims));
    }
    Ok(out)
}

/// What `kiln inspect` prints about the file itself: schema version, description and the
/// operator counts of the main subgraph.
pub fn summary(bytes: &[u8]) -> Result<(String, Vec<(String, usize)>), flatbuf::Malformed> {
    let model = schema::decode(bytes)?;
    let mut counts = std::collections::BTreeMap::new();
    for sg in model.subgraphs.iter().take(1) {
        for op in &sg.operators {
            let code = model.opcodes.get(op.opcode as usize).map_or(-1, |c| c.builtin);
            *counts.entry(schema::op_name(code)).or_insert(0) += 1;
        }
    }
    let head = format!(
        "TFLite schema {}, {} subgraph(s), description `{}`",
        model.version,
        model.subgraphs.len(),
        model.description.escape_debug()
    );
    Ok((head, counts.into_iter().collect()))
}

#[cfg(test)]
mod tests;

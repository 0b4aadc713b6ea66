//! The Kiln compiler: ONNX and TFLite import, the pass pipeline and the command-line driver's building
//! blocks. Backends live in `kiln-backends`; the IR and the reference evaluator in `kiln-ir`.

pub mod bench;
pub mod builder;
pub mod compile;
pub mod fsutil;
pub mod npy;
pub mod onchip;
pub mod onnx;
pub mod passes;
pub mod quantize;
pub mod target;
pub mod tflite;

use std::path::Path;
use thiserror::Error;

pub use builder::{Artifacts, Build, BuildError, Quantize};
pub use compile::Emit;
pub use onnx::{ImportError, ImportOptions};
pub use passes::{PassError, PipelineOptions};

#[derive(Debug, Error)]
pub enum Error {
    #[error(transparent)]
    Import(#[from] ImportError),
    #[error(transparent)]
    Pass(#[from] PassError),
}

/// A model after import and the float pipeline.
pub struct Model {
    pub graph: kiln_ir::Graph,
    pub notices: Vec<String>,
    pub opset: i64,
    /// The model file and its external data files (outputs are never written over them).
    pub files: Vec<std::path::PathBuf>,
    /// The tool that wrote the model (`producer_name`), e.g. `tf2onnx`.
    pub producer: String,
}

/// Imports the model file at `path`, ONNX or TFLite (told apart by content, not name).
pub fn import_file(path: &Path, import: &ImportOptions) -> Result<onnx::Imported, ImportError> {
    let bytes = std::fs::read(path).map_err(|source| ImportError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    if tflite::is_tflite(&bytes) {
        return tflite::import(path, &bytes, import);
    }
    onnx::load_bytes(path, &bytes, import)
}

/// The graph inputs a model file declares, ONNX or TFLite (see `onnx::declared_inputs`).
pub fn declared_inputs(path: &Path) -> Result<Vec<onnx::DeclaredInput>, ImportError> {
    let bytes = std::fs::read(path).map_err(|source| ImportError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    if tflite::is_tflite(&bytes) {
        return tflite::declared_inputs(path, &bytes);
    }
    onnx::declared_inputs(path)
}

/// Imports `path` and runs the pass pipeline on it.
pub fn load(
    path: &Path,
    import: &ImportOptions,
    pipeline: &PipelineOptions,
    on_print: impl FnMut(&str, &kiln_ir::Graph),
) -> Result<Model, Error> {
    let onnx::Imported {
        mut graph,
        notices,
        opset,
        files,
        producer,
    } = import_file(path, import)?;
    passes::run(&mut graph, pipeline, on_print)?;
    Ok(Model {
        graph,
        notices,
        opset,
        files,
        producer,
    })
}

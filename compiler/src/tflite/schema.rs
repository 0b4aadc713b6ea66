//! The part of TFLite's model schema (`schema.fbs`, identifier `TFL3`) Kiln reads, decoded
//! into plain structs once so the lowering never handles offsets. Field ids and enum values
//! are the schema's; each decode error names the element it was reading.

use super::flatbuf::{self, Malformed, Result, Table};

/// Tensor element types (`TensorType`).
pub mod ty {
    pub const FLOAT32: u8 = 0;
    pub const FLOAT16: u8 = 1;
    pub const INT32: u8 = 2;
    pub const UINT8: u8 = 3;
    pub const INT64: u8 = 4;
    pub const BOOL: u8 = 6;
    pub const INT16: u8 = 7;
    pub const INT8: u8 = 9;
    pub const FLOAT64: u8 = 10;
    pub const UINT32: u8 = 15;
    pub const UINT16: u8 = 16;
}

pub struct Model<'a> {
    pub version: u32,
    pub description: String,
    pub opcodes: Vec<OpCode>,
    pub subgraphs: Vec<SubGraph<'a>>,
    pub buffers: Vec<&'a [u8]>,
}

pub struct OpCode {
    /// `BuiltinOperator`; `CUSTOM` (32) for custom ops.
    pub builtin: i32,
    pub custom: String,
    pub version: i32,
}

pub struct SubGraph<'a> {
    pub name: String,
    pub tensors: Vec<TensorDef>,
    pub inputs: Vec<i32>,
    pub outputs: Vec<i32>,
    pub operators: Vec<Operator<'a>>,
}

pub struct TensorDef {
    pub name: String,
    pub shape: Vec<i32>,
    /// The shape with -1 for dimensions left open at conversion (empty when all are fixed).
    pub signature: Vec<i32>,
    pub ty: u8,
    /// Index into `Model::buffers`; 0 is the empty sentinel.
    pub buffer: u32,
    pub quant: Option<Quant>,
    pub variable: bool,
    pub sparse: bool,
}

/// Affine quantization: one pair per tensor, or per index along `axis`.
#[derive(Clone, Debug, PartialEq)]
pub struct Quant {
    pub scales: Vec<f32>,
    pub zero_points: Vec<i64>,
    pub axis: i32,
}

pub struct Operator<'a> {
    pub opcode: u32,
    /// Tensor indices; -1 marks an absent optional input.
    pub inputs: Vec<i32>,
    pub outputs: Vec<i32>,
    /// `BuiltinOptions` union tag and table.
    pub options_type: u8,
    pub options: Option<Table<'a>>,
}

fn ctx<T>(r: Result<T>, what: impl FnOnce() -> String) -> Result<T> {
    r.map_err(|e| Malformed(format!("{}: {e}", what())))
}

/// Decodes the model in `buf` (which must start with the root offset).
pub fn decode(buf: &[u8]) -> Result<Model<'_>> {
    let m = flatbuf::root(buf)?;
    let opcodes = ctx(m.tables(1), || "operator codes".into())?
        .iter()
        .enumerate()
        .map(|(i, t)| ctx(opcode(t), || format!("operator code {i}")))
        .collect::<Result<_>>()?;
    let subgraphs = ctx(m.tables(2), || "subgraphs".into())?
        .iter()
        .enumerate()
        .map(|(i, t)| ctx(subgraph(t), || format!("subgraph {i}")))
        .collect::<Result<_>>()?;
    let buffers = ctx(m.tables(4), || "buffers".into())?
        .iter()
        .enumerate()
        .map(|(i, t)| ctx(buffer(buf, t), || format!("buffer {i}")))
        .collect::<Result<_>>()?;
    Ok(Model {
        version: m.get(0, 0u32)?,
        description: m.string(3)?,
        opcodes,
        subgraphs,
        buffers,
    })
}

fn opcode(t: &Table) -> Result<OpCode> {
    let deprecated = t.get(0, 0i8)? as i32;
    Ok(OpCode {
        // files from before the 127-op limit only set the deprecated byte
        builtin: t.get(3, 0i32)?.max(deprecated),
        custom: t.string(1)?,
        version: t.get(2, 1i32)?,
    })
}

fn subgraph<'a>(t: &Table<'a>) -> Result<SubGraph<'a>> {
    let tensors = (t.tables(0)?.iter().enumerate())
        .map(|(i, t)| ctx(tensor(t), || format!("tensor {i}")))
        .collect::<Result<_>>()?;
    let operators = (t.tables(3)?.iter().enumerate())
        .map(|(i, t)| ctx(operator(t), || format!("operator {i}")))
        .collect::<Result<_>>()?;
    Ok(SubGraph {
        name: t.string(4)?,
        tensors,
        inputs: t.scalars(1)?,
        outputs: t.scalars(2)?,
        operators,
    })
}

fn tensor(t: &Table) -> Result<TensorDef> {
    let quant = match t.table(4)? {
        None => None,
        Some(q) => {
            let scales: Vec<f32> = q.scalars(2)?;
            let zero_points: Vec<i64> = q.scalars(3)?;
            if q.get(4, 0u8)? != 0 {
                return Err(Malformed(
                    "quantization details (custom, blockwise) are not supported".into(),
                ));
            }
            (!scales.is_empty()).then_some(Quant {
                scales,
                zero_points,
                axis: q.get(6, 0i32)?,
            })
        }
    };
    Ok(TensorDef {
        shape: t.scalars(0)?,
        ty: t.get(1, 0u8)?,
        buffer: t.get(2, 0u32)?,
        name: t.string(3)?,
        quant,
        variable: t.get(5, 0u8)? != 0,
        sparse: t.table(6)?.is_some(),
        signature: t.scalars(7)?,
    })
}

fn operator<'a>(t: &Table<'a>) -> Result<Operator<'a>> {
    Ok(Operator {
        opcode: t.get(0, 0u32)?,
        inputs: t.scalars(1)?,
        outputs: t.scalars(2)?,
        options_type: t.get(3, 0u8)?,
        options: t.table(4)?,
    })
}

/// A buffer's bytes: inline, or (models over 2 GB) at an offset from the file's start.
fn buffer<'a>(file: &'a [u8], t: &Table<'a>) -> Result<&'a [u8]> {
    let (offset, size) = (t.get(1, 0u64)?, t.get(2, 0u64)?);
    if offset > 1 {
        let end = offset.checked_add(size).filter(|&e| e <= file.len() as u64);
        return match end {
            Some(end) => Ok(&file[offset as usize..end as usize]),
            None => Err(Malformed(format!(
                "{size} bytes at offset {offset} run past the end of the file ({} bytes)",
                file.len()
            ))),
        };
    }
    match t.vector(0)? {
        None => Ok(&[]),
        Some(v) => v.bytes(),
    }
}

/// The `BuiltinOperator` names Kiln reports, by code.
pub fn op_name(code: i32) -> String {
    const NAMES: &[&str] = &[
        "ADD",
        "AVERAGE_POOL_2D",
        "CONCATENATION",
        "CONV_2D",
        "DEPTHWISE_CONV_2D",
        "DEPTH_TO_SPACE",
        "DEQUANTIZE",
        "EMBEDDING_LOOKUP",
        "FLOOR",
        "FULLY_CONNECTED",
        "HASHTABLE_LOOKUP",
        "L2_NORMALIZATION",
        "L2_POOL_2D",
        "LOCAL_RESPONSE_NORMALIZATION",
        "LOGISTIC",
        "LSH_PROJECTION",
        "LSTM",
        "MAX_POOL_2D",
        "MUL",
        "RELU",
        "RELU_N1_TO_1",
        "RELU6",
        "RESHAPE",
        "RESIZE_BILINEAR",
        "RNN",
        "SOFTMAX",
        "SPACE_TO_DEPTH",
        "SVDF",
        "TANH",
        "CONCAT_EMBEDDINGS",
        "SKIP_GRAM",
        "CALL",
        "CUSTOM",
        "EMBEDDING_LOOKUP_SPARSE",
        "PAD",
        "UNIDIRECTIONAL_SEQUENCE_RNN",
        "GATHER",
        "BATCH_TO_SPACE_ND",
        "SPACE_TO_BATCH_ND",
        "TRANSPOSE",
        "MEAN",
        "SUB",
        "DIV",
        "SQUEEZE",
        "UNIDIRECTIONAL_SEQUENCE_LSTM",
        "STRIDED_SLICE",
        "BIDIRECTIONAL_SEQUENCE_RNN",
        "EXP",
        "TOPK_V2",
        "SPLIT",
        "LOG_SOFTMAX",
        "DELEGATE",
        "BIDIRECTIONAL_SEQUENCE_LSTM",
        "CAST",
        "PRELU",
        "MAXIMUM",
        "ARG_MAX",
        "MINIMUM",
        "LESS",
        "NEG",
        "PADV2",
        "GREATER",
        "GREATER_EQUAL",
        "LESS_EQUAL",
        "SELECT",
        "SLICE",
        "SIN",
        "TRANSPOSE_CONV",
        "SPARSE_TO_DENSE",
        "TILE",
        "EXPAND_DIMS",
        "EQUAL",
        "NOT_EQUAL",
        "LOG",
        "SUM",
        "SQRT",
        "RSQRT",
        "SHAPE",
        "POW",
        "ARG_MIN",
        "FAKE_QUANT",
        "REDUCE_PROD",
        "REDUCE_MAX",
        "PACK",
        "LOGICAL_OR",
        "ONE_HOT",
        "LOGICAL_AND",
        "LOGICAL_NOT",
        "UNPACK",
        "REDUCE_MIN",
        "FLOOR_DIV",
        "REDUCE_ANY",
        "SQUARE",
        "ZEROS_LIKE",
        "FILL",
        "FLOOR_MOD",
        "RANGE",
        "RESIZE_NEAREST_NEIGHBOR",
        "LEAKY_RELU",
        "SQUARED_DIFFERENCE",
        "MIRROR_PAD",
        "ABS",
        "SPLIT_V",
        "UNIQUE",
        "CEIL",
        "REVERSE_V2",
        "ADD_N",
        "GATHER_ND",
        "COS",
        "WHERE",
        "RANK",
        "ELU",
        "REVERSE_SEQUENCE",
        "MATRIX_DIAG",
        "QUANTIZE",
        "MATRIX_SET_DIAG",
        "ROUND",
        "HARD_SWISH",
        "IF",
        "WHILE",
        "NON_MAX_SUPPRESSION_V4",
        "NON_MAX_SUPPRESSION_V5",
        "SCATTER_ND",
        "SELECT_V2",
        "DENSIFY",
        "SEGMENT_SUM",
        "BATCH_MATMUL",
    ];
    match usize::try_from(code).ok().and_then(|c| NAMES.get(c)) {
        Some(n) => (*n).to_string(),
        None if code == 150 => "GELU".into(),
        None => format!("builtin operator {code}"),
    }
}

//! Element types. Quantization parameters live *inside* the element type so that no pass can
//! drop them by accident: a tensor of `I8` with a scale is a different type from a plain `I8`.

use std::fmt;
use std::sync::Arc;

/// Storage kind of one element, without quantization meaning.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scalar {
    F32,
    F64,
    F16,
    I8,
    U8,
    I16,
    U16,
    I32,
    U32,
    I64,
    U64,
    Bool,
}

impl Scalar {
    /// Bytes one element occupies in memory.
    pub fn size(self) -> usize {
        match self {
            Scalar::I8 | Scalar::U8 | Scalar::Bool => 1,
            Scalar::F16 | Scalar::I16 | Scalar::U16 => 2,
            Scalar::F32 | Scalar::I32 | Scalar::U32 => 4,
            Scalar::F64 | Scalar::I64 | Scalar::U64 => 8,
        }
    }

    pub fn is_float(self) -> bool {
        matches!(self, Scalar::F32 | Scalar::F64 | Scalar::F16)
    }

    pub fn is_int(self) -> bool {
        !self.is_float() && self != Scalar::Bool
    }

    pub fn name(self) -> &'static str {
        match self {
            Scalar::F32 => "f32",
            Scalar::F64 => "f64",
            Scalar::F16 => "f16",
            Scalar::I8 => "i8",
            Scalar::U8 => "u8",
            Scalar::I16 => "i16",
            Scalar::U16 => "u16",
            Scalar::I32 => "i32",
            Scalar::U32 => "u32",
            Scalar::I64 => "i64",
            Scalar::U64 => "u64",
            Scalar::Bool => "bool",
        }
    }

    pub const ALL: [Scalar; 12] = [
        Scalar::F32,
        Scalar::F64,
        Scalar::F16,
        Scalar::I8,
        Scalar::U8,
        Scalar::I16,
        Scalar::U16,
        Scalar::I32,
        Scalar::U32,
        Scalar::I64,
        Scalar::U64,
        Scalar::Bool,
    ];

    pub fn from_name(s: &str) -> Option<Scalar> {
        Scalar::ALL.into_iter().find(|d| d.name() == s)
    }
}

/// Affine quantization: `real = scale * (q - zero_point)`.
#[derive(Clone, Debug, PartialEq)]
pub enum QParams {
    PerTensor {
        scale: f32,
        zero_point: i32,
    },
    /// One scale/zero point per index along `axis` (weights, per output channel).
    PerAxis {
        axis: usize,
        scales: Arc<[f32]>,
        zero_points: Arc<[i32]>,
    },
    /// One scale/zero point per `block` consecutive indices along `axis` and per index of
    /// every other axis (ONNX blocked quantization): laid out as the tensor's shape with
    /// `axis` shortened to `ceil(len / block)`, row-major. Scales are non-zero and may be
    /// negative (as the model wrote them).
    Blocked {
        axis: usize,
        block: usize,
        scales: Arc<[f32]>,
        zero_points: Arc<[i32]>,
    },
}

impl QParams {
    /// The parameter index of each element of a tensor of `shape` quantized with `self`.
    pub fn index(&self, shape: &[usize]) -> Vec<usize> {
        let total: usize = shape.iter().product();
        match self {
            QParams::PerTensor { .. } => vec![0; total],
            QParams::PerAxis { axis, .. } => {
                let inner: usize = shape[axis + 1..].iter().product();
                (0..total).map(|i| (i / inner.max(1)) % shape[*axis]).collect()
            }
            QParams::Blocked { axis, block, .. } => {
                let inner: usize = shape[axis + 1..].iter().product::<usize>().max(1);
                let (len, blocks) = (shape[*axis], shape[*axis].div_ceil(*block));
                (0..total)
                    .map(|i| {
                        let (o, r) = (i / (inner * len), i % (inner * len));
                        (o * blocks + r / inner / block) * inner + r % inner
                    })
                    .collect()
            }
        }
    }
}

/// Element type of a tensor: a storage scalar, optionally with quantization parameters.
#[derive(Clone, Debug, PartialEq)]
pub struct DType {
    pub scalar: Scalar,
    pub quant: Option<QParams>,
}

impl DType {
    pub const F32: DType = DType::plain(Scalar::F32);
    pub const I64: DType = DType::plain(Scalar::I64);
    pub const BOOL: DType = DType::plain(Scalar::Bool);

    pub const fn plain(scalar: Scalar) -> DType {
        DType { scalar, quant: None }
    }

    pub fn quantized(scalar: Scalar, q: QParams) -> DType {
        DType { scalar, quant: Some(q) }
    }
}

impl From<Scalar> for DType {
    fn from(s: Scalar) -> DType {
        DType::plain(s)
    }
}

impl fmt::Display for Scalar {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.scalar)?;
        match &self.quant {
            None => Ok(()),
            Some(QParams::PerTensor { scale, zero_point }) => {
                write!(f, "<scale={scale:e}, zp={zero_point}>")
            }
            Some(QParams::PerAxis {
                axis,
                scales,
                zero_points,
            }) => {
                write!(f, "<axis={axis}, scales=[")?;
                for (i, s) in scales.iter().enumerate() {
                    write!(f, "{}{s:e}", if i > 0 { "," } else { "" })?;
                }
                write!(f, "], zps=[")?;
                for (i, z) in zero_points.iter().enumerate() {
                    write!(f, "{}{z}", if i > 0 { "," } else { "" })?;
                }
                write!(f, "]>")
            }
            Some(QParams::Blocked {
                axis, block, scales, ..
            }) => {
                write!(f, "<axis={axis}, block={block}, {} scales>", scales.len())
            }
        }
    }
}

/// Static type of a value: element type and shape. Kiln shapes are always concrete.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorType {
    pub dtype: DType,
    pub shape: Vec<usize>,
}

impl TensorType {
    pub fn new(dtype: impl Into<DType>, shape: Vec<usize>) -> Self {
        TensorType {
            dtype: dtype.into(),
            shape,
        }
    }

    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    pub fn bytes(&self) -> usize {
        self.numel() * self.dtype.scalar.size()
    }
}

impl fmt::Display for TensorType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}[", self.dtype)?;
        for (i, d) in self.shape.iter().enumerate() {
            write!(f, "{}{d}", if i > 0 { "," } else { "" })?;
        }
        write!(f, "]")
    }
}

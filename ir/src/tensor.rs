//! Host tensors: the constants of a graph and the values the reference evaluator computes.
//! Storage is one `Vec` per scalar kind, so kernels are plain generic loops over slices.

use crate::dtype::{DType, QParams, Scalar, TensorType};
use half::f16;

/// Typed element storage.
#[derive(Clone, Debug, PartialEq)]
pub enum Data {
    F32(Vec<f32>),
    F64(Vec<f64>),
    F16(Vec<f16>),
    I8(Vec<i8>),
    U8(Vec<u8>),
    I16(Vec<i16>),
    U16(Vec<u16>),
    I32(Vec<i32>),
    U32(Vec<u32>),
    I64(Vec<i64>),
    U64(Vec<u64>),
    Bool(Vec<bool>),
}

/// Runs `$body` with `$v` bound to the inner `Vec` of whichever variant `$data` holds.
#[macro_export]
macro_rules! with_data {
    ($data:expr, $v:ident => $body:expr) => {
        match $data {
            $crate::tensor::Data::F32($v) => $body,
            $crate::tensor::Data::F64($v) => $body,
            $crate::tensor::Data::F16($v) => $body,
            $crate::tensor::Data::I8($v) => $body,
            $crate::tensor::Data::U8($v) => $body,
            $crate::tensor::Data::I16($v) => $body,
            $crate::tensor::Data::U16($v) => $body,
            $crate::tensor::Data::I32($v) => $body,
            $crate::tensor::Data::U32($v) => $body,
            $crate::tensor::Data::I64($v) => $body,
            $crate::tensor::Data::U64($v) => $body,
            $crate::tensor::Data::Bool($v) => $body,
        }
    };
}

/// Like [`with_data!`], but rebuilds the same variant from `$body`'s `Vec`.
#[macro_export]
macro_rules! map_data {
    ($data:expr, $v:ident => $body:expr) => {
        match $data {
            $crate::tensor::Data::F32($v) => $crate::tensor::Data::F32($body),
            $crate::tensor::Data::F64($v) => $crate::tensor::Data::F64($body),
            $crate::tensor::Data::F16($v) => $crate::tensor::Data::F16($body),
            $crate::tensor::Data::I8($v) => $crate::tensor::Data::I8($body),
            $crate::tensor::Data::U8($v) => $crate::tensor::Data::U8($body),
            $crate::tensor::Data::I16($v) => $crate::tensor::Data::I16($body),
            $crate::tensor::Data::U16($v) => $crate::tensor::Data::U16($body),
            $crate::tensor::Data::I32($v) => $crate::tensor::Data::I32($body),
            $crate::tensor::Data::U32($v) => $crate::tensor::Data::U32($body),
            $crate::tensor::Data::I64($v) => $crate::tensor::Data::I64($body),
            $crate::tensor::Data::U64($v) => $crate::tensor::Data::U64($body),
            $crate::tensor::Data::Bool($v) => $crate::tensor::Data::Bool($body),
        }
    };
}

/// Conversion between every pair of storage scalars with ONNX `Cast` semantics
/// (float to int truncates toward zero; out-of-range follows Rust's saturating `as`).
pub trait Elem: Copy + Default + PartialOrd + Send + Sync + 'static {
    const SCALAR: Scalar;
    fn to_f64(self) -> f64;
    fn from_f64(v: f64) -> Self;
    fn to_i64(self) -> i64 {
        self.to_f64() as i64
    }
    fn from_i64(v: i64) -> Self {
        Self::from_f64(v as f64)
    }
    fn wrap(v: Vec<Self>) -> Data;
    fn unwrap(d: &Data) -> Option<&Vec<Self>>;
}

macro_rules! elem_int {
    ($t:ty, $s:ident) => {
        impl Elem for $t {
            const SCALAR: Scalar = Scalar::$s;
            fn to_f64(self) -> f64 {
                self as f64
            }
            fn from_f64(v: f64) -> Self {
                v as $t
            }
            fn to_i64(self) -> i64 {
                self as i64
            }
            fn from_i64(v: i64) -> Self {
                v as $t
            }
            fn wrap(v: Vec<Self>) -> Data {
                Data::$s(v)
            }
            fn unwrap(d: &Data) -> Option<&Vec<Self>> {
                match d {
                    Data::$s(v) => Some(v),
                    _ => None,
                }
            }
        }
    };
}
elem_int!(i8, I8);
elem_int!(u8, U8);
elem_int!(i16, I16);
elem_int!(u16, U16);
elem_int!(i32, I32);
elem_int!(u32, U32);
elem_int!(i64, I64);
elem_int!(u64, U64);

macro_rules! elem_float {
    ($t:ty, $s:ident) => {
        impl Elem for $t {
            const SCALAR: Scalar = Scalar::$s;
            fn to_f64(self) -> f64 {
                self as f64
            }
            fn from_f64(v: f64) -> Self {
                v as $t
            }
            fn wrap(v: Vec<Self>) -> Data {
                Data::$s(v)
            }
            fn unwrap(d: &Data) -> Option<&Vec<Self>> {
                match d {
                    Data::$s(v) => Some(v),
                    _ => None,
                }
            }
        }
    };
}
elem_float!(f32, F32);
elem_float!(f64, F64);

impl Elem for f16 {
    const SCALAR: Scalar = Scalar::F16;
    fn to_f64(self) -> f64 {
        self.to_f64()
    }
    fn from_f64(v: f64) -> Self {
        // one correct rounding everywhere (`half` may go through f32 on CPUs with F16C)
        f16::from_bits(kiln_runtime::kernels::d2h(v))
    }
    fn wrap(v: Vec<Self>) -> Data {
        Data::F16(v)
    }
    fn unwrap(d: &Data) -> Option<&Vec<Self>> {
        match d {
            Data::F16(v) => Some(v),
            _ => None,
        }
    }
}

impl Elem for bool {
    const SCALAR: Scalar = Scalar::Bool;
    fn to_f64(self) -> f64 {
        if self { 1.0 } else { 0.0 }
    }
    fn from_f64(v: f64) -> Self {
        v != 0.0
    }
    fn to_i64(self) -> i64 {
        self as i64
    }
    fn from_i64(v: i64) -> Self {
        v != 0
    }
    fn wrap(v: Vec<Self>) -> Data {
        Data::Bool(v)
    }
    fn unwrap(d: &Data) -> Option<&Vec<Self>> {
        match d {
            Data::Bool(v) => Some(v),
            _ => None,
        }
    }
}

impl Data {
    pub fn scalar(&self) -> Scalar {
        match self {
            Data::F32(_) => Scalar::F32,
            Data::F64(_) => Scalar::F64,
            Data::F16(_) => Scalar::F16,
            Data::I8(_) => Scalar::I8,
            Data::U8(_) => Scalar::U8,
            Data::I16(_) => Scalar::I16,
            Data::U16(_) => Scalar::U16,
            Data::I32(_) => Scalar::I32,
            Data::U32(_) => Scalar::U32,
            Data::I64(_) => Scalar::I64,
            Data::U64(_) => Scalar::U64,
            Data::Bool(_) => Scalar::Bool,
        }
    }

    pub fn len(&self) -> usize {
        with_data!(self, v => v.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A zero-filled buffer of `n` elements.
    pub fn zeros(scalar: Scalar, n: usize) -> Data {
        match scalar {
            Scalar::F32 => Data::F32(vec![0.0; n]),
            Scalar::F64 => Data::F64(vec![0.0; n]),
            Scalar::F16 => Data::F16(vec![f16::ZERO; n]),
            Scalar::I8 => Data::I8(vec![0; n]),
            Scalar::U8 => Data::U8(vec![0; n]),
            Scalar::I16 => Data::I16(vec![0; n]),
            Scalar::U16 => Data::U16(vec![0; n]),
            Scalar::I32 => Data::I32(vec![0; n]),
            Scalar::U32 => Data::U32(vec![0; n]),
            Scalar::I64 => Data::I64(vec![0; n]),
            Scalar::U64 => Data::U64(vec![0; n]),
            Scalar::Bool => Data::Bool(vec![false; n]),
        }
    }

    /// `n` copies of the first element (which must exist).
    pub fn splat(&self, n: usize) -> Data {
        map_data!(self, v => vec![v[0]; n])
    }

    /// Elements gathered by index: `out[i] = self[idx[i]]`.
    pub fn gather(&self, idx: &[usize]) -> Data {
        map_data!(self, v => idx.iter().map(|&i| v[i]).collect())
    }

    /// Converts to another storage kind with ONNX `Cast` semantics.
    pub fn cast(&self, to: Scalar) -> Data {
        fn conv<S: Elem, D: Elem>(v: &[S]) -> Vec<D> {
            if S::SCALAR.is_float() || D::SCALAR.is_float() {
                v.iter().map(|x| D::from_f64(x.to_f64())).collect()
            } else {
                v.iter().map(|x| D::from_i64(x.to_i64())).collect()
            }
        }
        fn cv<D: Elem>(d: &Data) -> Vec<D> {
            with_data!(d, v => conv::<_, D>(v))
        }
        match to {
            Scalar::F32 => Data::F32(cv(self)),
            Scalar::F64 => Data::F64(cv(self)),
            Scalar::F16 => Data::F16(cv(self)),
            Scalar::I8 => Data::I8(cv(self)),
            Scalar::U8 => Data::U8(cv(self)),
            Scalar::I16 => Data::I16(cv(self)),
            Scalar::U16 => Data::U16(cv(self)),
            Scalar::I32 => Data::I32(cv(self)),
            Scalar::U32 => Data::U32(cv(self)),
            Scalar::I64 => Data::I64(cv(self)),
            Scalar::U64 => Data::U64(cv(self)),
            Scalar::Bool => Data::Bool(cv(self)),
        }
    }

    /// Little-endian bytes, the layout of ONNX `raw_data` and of `.npy` files.
    pub fn to_le_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.len() * self.scalar().size());
        match self {
            Data::F32(v) => v.iter().for_each(|x| out.extend(x.to_le_bytes())),
            Data::F64(v) => v.iter().for_each(|x| out.extend(x.to_le_bytes())),
            Data::F16(v) => v.iter().for_each(|x| out.extend(x.to_le_bytes())),
            Data::I8(v) => v.iter().for_each(|x| out.extend(x.to_le_bytes())),
            Data::U8(v) => out.extend_from_slice(v),
            Data::I16(v) => v.iter().for_each(|x| out.extend(x.to_le_bytes())),
            Data::U16(v) => v.iter().for_each(|x| out.extend(x.to_le_bytes())),
            Data::I32(v) => v.iter().for_each(|x| out.extend(x.to_le_bytes())),
            Data::U32(v) => v.iter().for_each(|x| out.extend(x.to_le_bytes())),
            Data::I64(v) => v.iter().for_each(|x| out.extend(x.to_le_bytes())),
            Data::U64(v) => v.iter().for_each(|x| out.extend(x.to_le_bytes())),
            Data::Bool(v) => v.iter().for_each(|&x| out.push(x as u8)),
        }
        out
    }

    /// Parses little-endian bytes; `None` if the length is not a multiple of the element size.
    pub fn from_le_bytes(scalar: Scalar, b: &[u8]) -> Option<Data> {
        let n = scalar.size();
        if !b.len().is_multiple_of(n) {
            return None;
        }
        macro_rules! parse {
            ($t:ty, $var:ident) => {
                Data::$var(
                    b.chunks_exact(n)
                        .map(|c| <$t>::from_le_bytes(c.try_into().unwrap()))
                        .collect(),
                )
            };
        }
        Some(match scalar {
            Scalar::F32 => parse!(f32, F32),
            Scalar::F64 => parse!(f64, F64),
            Scalar::F16 => parse!(f16, F16),
            Scalar::I8 => parse!(i8, I8),
            Scalar::U8 => Data::U8(b.to_vec()),
            Scalar::I16 => parse!(i16, I16),
            Scalar::U16 => parse!(u16, U16),
            Scalar::I32 => parse!(i32, I32),
            Scalar::U32 => parse!(u32, U32),
            Scalar::I64 => parse!(i64, I64),
            Scalar::U64 => parse!(u64, U64),
            Scalar::Bool => Data::Bool(b.iter().map(|&x| x != 0).collect()),
        })
    }
}

/// A dense, row-major host tensor.
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    pub shape: Vec<usize>,
    pub data: Data,
    pub quant: Option<QParams>,
}

impl Tensor {
    /// Builds a tensor; panics only on a caller bug (length not matching the shape).
    pub fn new(shape: Vec<usize>, data: Data) -> Tensor {
        assert_eq!(
            shape.iter().product::<usize>(),
            data.len(),
            "tensor data length does not match shape {shape:?}"
        );
        Tensor {
            shape,
            data,
            quant: None,
        }
    }

    pub fn from_vec<T: Elem>(shape: Vec<usize>, v: Vec<T>) -> Tensor {
        Tensor::new(shape, T::wrap(v))
    }

    pub fn scalar_f32(v: f32) -> Tensor {
        Tensor::new(vec![], Data::F32(vec![v]))
    }

    pub fn zeros(ty: &TensorType) -> Tensor {
        Tensor {
            shape: ty.shape.clone(),
            data: Data::zeros(ty.dtype.scalar, ty.numel()),
            quant: ty.dtype.quant.clone(),
        }
    }

    pub fn numel(&self) -> usize {
        self.data.len()
    }

    pub fn dtype(&self) -> DType {
        DType {
            scalar: self.data.scalar(),
            quant: self.quant.clone(),
        }
    }

    pub fn ty(&self) -> TensorType {
        TensorType {
            dtype: self.dtype(),
            shape: self.shape.clone(),
        }
    }

    pub fn as_slice<T: Elem>(&self) -> Option<&[T]> {
        T::unwrap(&self.data).map(|v| v.as_slice())
    }

    /// All elements as f32 (a copy; exact for every type but wide integers and f64).
    pub fn to_f32_vec(&self) -> Vec<f32> {
        match &self.data {
            Data::F32(v) => v.clone(),
            d => with_data!(d, v => v.iter().map(|x| x.to_f64() as f32).collect()),
        }
    }

    pub fn to_f64_vec(&self) -> Vec<f64> {
        with_data!(&self.data, v => v.iter().map(|x| x.to_f64()).collect())
    }

    /// All elements as i64 (floats truncate), e.g. for shape and index inputs.
    pub fn to_i64_vec(&self) -> Vec<i64> {
        with_data!(&self.data, v => v.iter().map(|x| x.to_i64()).collect())
    }

    pub fn cast(&self, to: Scalar) -> Tensor {
        Tensor::new(self.shape.clone(), self.data.cast(to))
    }

    /// Same data, new shape (element count must match).
    pub fn reshaped(mut self, shape: Vec<usize>) -> Tensor {
        assert_eq!(shape.iter().product::<usize>(), self.numel());
        self.shape = shape;
        self
    }
}

/// Row-major strides of `shape`, in elements.
pub fn strides(shape: &[usize]) -> Vec<usize> {
    let mut s = vec![1; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        s[i] = s[i + 1] * shape[i + 1];
    }
    s
}

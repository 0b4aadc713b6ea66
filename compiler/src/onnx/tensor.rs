//! TensorProto to IR tensor: every storage field ONNX allows (typed fields, `raw_data`,
//! external data files), with sizes checked before anything is allocated.

use super::proto::{TensorProto, data_type as dt};
use super::{ImportError, MAX_ELEMENTS};
use half::f16;
use kiln_ir::{Data, Scalar, Tensor};
use std::path::Path;

/// IR scalar for an ONNX data type code.
pub fn scalar_of(code: i32) -> Option<Scalar> {
    Some(match code {
        dt::FLOAT => Scalar::F32,
        dt::DOUBLE => Scalar::F64,
        dt::FLOAT16 => Scalar::F16,
        dt::INT8 => Scalar::I8,
        dt::UINT8 => Scalar::U8,
        dt::INT16 => Scalar::I16,
        dt::UINT16 => Scalar::U16,
        dt::INT32 => Scalar::I32,
        dt::UINT32 => Scalar::U32,
        dt::INT64 => Scalar::I64,
        dt::UINT64 => Scalar::U64,
        dt::BOOL => Scalar::Bool,
        _ => return None,
    })
}

/// Element count of `dims`, refusing negative or absurd sizes.
pub fn checked_numel(dims: &[i64], what: &str) -> Result<usize, ImportError> {
    let mut n: usize = 1;
    for &d in dims {
        if d < 0 {
            return Err(ImportError::BadTensor {
                name: what.to_string(),
                msg: format!("negative dimension in {dims:?}"),
            });
        }
        n = n
            .checked_mul(d as usize)
            .filter(|&n| n <= MAX_ELEMENTS)
            .ok_or_else(|| ImportError::BadTensor {
                name: what.to_string(),
                msg: format!("dimensions {dims:?} exceed the limit of {MAX_ELEMENTS} elements"),
            })?;
    }
    Ok(n)
}

/// The IR type of an ONNX element type, 4-bit integers widened to one per byte (a graph
/// input declared INT4 takes one value per int8).
pub fn scalar_of_unpacked(code: i32) -> Option<Scalar> {
    match code {
        INT4 => Some(Scalar::I8),
        UINT4 => Some(Scalar::U8),
        c => scalar_of(c),
    }
}

/// ONNX's 4-bit integer element types, held in the IR one per int8 (signed) or uint8.
const INT4: i32 = 22;
const UINT4: i32 = 21;

pub fn convert(t: &TensorProto, base_dir: Option<&Path>) -> Result<Tensor, ImportError> {
    let name = if t.name.is_empty() { "<unnamed tensor>" } else { &t.name };
    let bad = |msg: String| ImportError::BadTensor {
        name: name.to_string(),
        msg,
    };
    if matches!(t.data_type, INT4 | UINT4) {
        return convert_4bit(t, base_dir).map_err(bad);
    }
    let scalar = scalar_of(t.data_type)
        .ok_or_else(|| bad(format!("element type {} is not supported", dt::name(t.data_type))))?;
    let n = checked_numel(&t.dims, name)?;
    let shape: Vec<usize> = t.dims.iter().map(|&d| d as usize).collect();
    let external;
    let raw: Option<&[u8]> = if t.data_location == 1 {
        let need = n
            .checked_mul(scalar.size())
            .ok_or_else(|| bad("byte size overflows".into()))?;
        external = read_external(t, base_dir, need).map_err(bad)?;
        Some(&external)
    } else if !t.raw_data.is_empty() || (n == 0) {
        Some(&t.raw_data)
    } else {
        None
    };
    let data = match raw {
        Some(bytes) => {
            if bytes.len() != n * scalar.size() {
                return Err(bad(format!(
                    "holds {} bytes, shape {shape:?} of {scalar} needs {}",
                    bytes.len(),
                    n * scalar.size()
                )));
            }
            Data::from_le_bytes(scalar, bytes).expect("length checked")
        }
        None => {
            let len = match scalar {
                Scalar::F32 => t.float_data.len(),
                Scalar::F64 => t.double_data.len(),
                Scalar::I64 => t.int64_data.len(),
                Scalar::U32 | Scalar::U64 => t.uint64_data.len(),
                _ => t.int32_data.len(),
            };
            if len != n {
                return Err(bad(format!("holds {len} values, shape {shape:?} needs {n}")));
            }
            match scalar {
                Scalar::F32 => Data::F32(t.float_data.clone()),
                Scalar::F64 => Data::F64(t.double_data.clone()),
                Scalar::I64 => Data::I64(t.int64_data.clone()),
                Scalar::U64 => Data::U64(t.uint64_data.clone()),
                Scalar::U32 => Data::U32(t.uint64_data.iter().map(|&v| v as u32).collect()),
                // float16 stores its bit pattern in int32_data.
                Scalar::F16 => Data::F16(t.int32_data.iter().map(|&v| f16::from_bits(v as u16)).collect()),
                s => Data::I32(t.int32_data.clone()).cast(s),
            }
        }
    };
    Ok(Tensor::new(shape, data))
}

/// INT4/UINT4: two values to a byte, the first in the low nibble (`raw_data`, or one byte
/// pair per `int32_data` entry); widened to one int8/uint8 each, so a 4-bit weight reaches
/// the quantizer as its exact integers (and is packed again by the backends).
fn convert_4bit(t: &TensorProto, base_dir: Option<&Path>) -> Result<Tensor, String> {
    let n = checked_numel(&t.dims, &t.name).map_err(|e| e.to_string())?;
    let shape: Vec<usize> = t.dims.iter().map(|&d| d as usize).collect();
    let bytes: Vec<u8> = if t.data_location == 1 {
        read_external(t, base_dir, n.div_ceil(2))?
    } else if !t.raw_data.is_empty() || n == 0 {
        t.raw_data.clone()
    } else {
        t.int32_data.iter().map(|&v| v as u8).collect()
    };
    if bytes.len() != n.div_ceil(2) {
        return Err(format!(
            "holds {} bytes, shape {shape:?} of 4-bit values needs {}",
            bytes.len(),
            n.div_ceil(2)
        ));
    }
    let nibble = |i: usize| (bytes[i / 2] >> (4 * (i % 2))) & 15;
    Ok(if t.data_type == INT4 {
        Tensor::from_vec(
            shape,
            (0..n).map(|i| ((nibble(i) as i8) << 4) >> 4).collect::<Vec<i8>>(),
        )
    } else {
        Tensor::from_vec(shape, (0..n).map(nibble).collect::<Vec<u8>>())
    })
}

/// Reads the `need` bytes of an external tensor. The file must be a regular file inside the
/// model's folder once links are resolved (a link to `/etc/passwd` or `/dev/zero` is refused),
/// and only the bytes the tensor needs are read, so a huge or endless file costs nothing.
fn read_external(t: &TensorProto, base_dir: Option<&Path>, need: usize) -> Result<Vec<u8>, String> {
    use std::io::{Read, Seek, SeekFrom};
    let get = |k: &str| t.external_data.iter().find(|e| e.key == k).map(|e| e.value.as_str());
    let loc = get("location").ok_or("external data without a `location`")?;
    let rel = Path::new(loc);
    let outside = || format!("external data location `{loc}` must be a relative path inside the model's folder");
    if rel.is_absolute() || rel.components().any(|c| matches!(c, std::path::Component::ParentDir)) {
        return Err(outside());
    }
    let base = base_dir.unwrap_or(Path::new("."));
    let path = base.join(rel);
    let cannot = |e: std::io::Error| format!("cannot read external data file {}: {e}", path.display());
    let real = path.canonicalize().map_err(cannot)?;
    let real_base = base.canonicalize().map_err(cannot)?;
    if !real.starts_with(&real_base) {
        return Err(format!(
            "{} (`{}` resolves to {})",
            outside(),
            path.display(),
            real.display()
        ));
    }
    let mut file = std::fs::File::open(&real).map_err(cannot)?;
    let meta = file.metadata().map_err(cannot)?;
    if !meta.is_file() {
        return Err(format!("external data `{}` is not a regular file", path.display()));
    }
    let parse = |k: &str| -> Result<u64, String> {
        get(k)
            .map(|v| v.parse::<u64>().map_err(|_| format!("bad external data {k} `{v}`")))
            .unwrap_or(Ok(0))
    };
    let offset = parse("offset")?;
    let size = meta.len();
    let length = match get("length") {
        Some(_) => parse("length")?,
        None => size.saturating_sub(offset),
    };
    let end = offset.checked_add(length).ok_or("external data range overflows")?;
    if end > size {
        return Err(format!(
            "external data range {offset}..{end} is outside {} ({size} bytes)",
            path.display()
        ));
    }
    if length != need as u64 {
        return Err(format!("holds {length} bytes of external data, its shape needs {need}"));
    }
    file.seek(SeekFrom::Start(offset)).map_err(cannot)?;
    let mut bytes = Vec::new();
    (&mut file).take(length).read_to_end(&mut bytes).map_err(cannot)?;
    if bytes.len() as u64 != length {
        return Err(format!("{} ended early while reading external data", path.display()));
    }
    Ok(bytes)
}

/// IR tensor to TensorProto (raw little-endian data); used by tests and fixtures.
pub fn to_proto(name: &str, t: &Tensor) -> TensorProto {
    let code = match t.data.scalar() {
        Scalar::F32 => dt::FLOAT,
        Scalar::F64 => dt::DOUBLE,
        Scalar::F16 => dt::FLOAT16,
        Scalar::I8 => dt::INT8,
        Scalar::U8 => dt::UINT8,
        Scalar::I16 => dt::INT16,
        Scalar::U16 => dt::UINT16,
        Scalar::I32 => dt::INT32,
        Scalar::U32 => dt::UINT32,
        Scalar::I64 => dt::INT64,
        Scalar::U64 => dt::UINT64,
        Scalar::Bool => dt::BOOL,
    };
    TensorProto {
        name: name.to_string(),
        dims: t.shape.iter().map(|&d| d as i64).collect(),
        data_type: code,
        raw_data: t.data.to_le_bytes(),
        ..Default::default()
    }
}

//! `.npy` files in and out (the format of the reference data and of `kiln eval`), mapped to
//! IR tensors with their exact element type. Writes go to a temporary name first, so a
//! failure never leaves a half-written file.

use half::f16;
use kiln_ir::{Data, Scalar, Tensor};
use npyz::WriterBuilder;
use std::path::{Path, PathBuf};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum NpyError {
    #[error("cannot read {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: {msg}")]
    Format { path: PathBuf, msg: String },
}

fn scalar_of(descr: &str) -> Option<Scalar> {
    let d = descr.trim_start_matches(['<', '|', '=']);
    Some(match d {
        "f4" => Scalar::F32,
        "f8" => Scalar::F64,
        "f2" => Scalar::F16,
        "i1" => Scalar::I8,
        "u1" => Scalar::U8,
        "i2" => Scalar::I16,
        "u2" => Scalar::U16,
        "i4" => Scalar::I32,
        "u4" => Scalar::U32,
        "i8" => Scalar::I64,
        "u8" => Scalar::U64,
        "b1" => Scalar::Bool,
        _ => return None,
    })
}

pub fn read(path: &Path) -> Result<Tensor, NpyError> {
    let bytes = std::fs::read(path).map_err(|source| NpyError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let file = npyz::NpyFile::new(bytes.as_slice()).map_err(|e| NpyError::Format {
        path: path.to_path_buf(),
        msg: format!("not a .npy file ({e})"),
    })?;
    decode(file, path, bytes.len())
}

/// A `.npy` file with only its header read.
fn open_header(path: &Path) -> Result<npyz::NpyFile<std::io::BufReader<std::fs::File>>, NpyError> {
    let file = std::fs::File::open(path).map_err(|source| NpyError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    npyz::NpyFile::new(std::io::BufReader::new(file)).map_err(|e| NpyError::Format {
        path: path.to_path_buf(),
        msg: format!("not a .npy file ({e})"),
    })
}

/// The shape and element type of a little-endian (or byte-sized), C-ordered `.npy` file,
/// from its header only: `None` for any other layout (read those whole).
pub fn read_header(path: &Path) -> Result<Option<(Vec<usize>, Scalar)>, NpyError> {
    let npy = open_header(path)?;
    let npyz::DType::Plain(t) = npy.dtype() else {
        return Ok(None);
    };
    let descr = t.to_string();
    let scalar = scalar_of(&descr).filter(|_| !descr.starts_with('>') && npy.order() == npyz::Order::C);
    Ok(scalar.map(|s| (npy.shape().iter().map(|&d| d as usize).collect(), s)))
}

/// The shape a `.npy` file declares, reading its header only.
pub fn read_shape(path: &Path) -> Result<Vec<usize>, NpyError> {
    Ok(open_header(path)?.shape().iter().map(|&d| d as usize).collect())
}

/// The largest array an `.npz` archive may inflate to: 1 GiB, or `KILN_MAX_ARRAY_BYTES`.
pub fn max_array_bytes() -> usize {
    (std::env::var("KILN_MAX_ARRAY_BYTES").ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(1 << 30)
}

/// Every array of an `.npz` archive (as `np.savez` / `np.savez_compressed` write them),
/// by name.
pub fn read_npz(path: &Path) -> Result<Vec<(String, Tensor)>, NpyError> {
    let fmt = |msg: String| NpyError::Format {
        path: path.to_path_buf(),
        msg,
    };
    let file = std::fs::File::open(path).map_err(|source| NpyError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let mut archive =
        zip::ZipArchive::new(std::io::BufReader::new(file)).map_err(|e| fmt(format!("not an .npz archive ({e})")))?;
    let mut out = Vec::new();
    for i in 0..archive.len() {
        let mut entry = archive.by_index(i).map_err(|e| fmt(format!("entry {i}: {e}")))?;
        let Some(name) = entry.name().strip_suffix(".npy").map(String::from) else {
            continue;
        };
        let inner = path.join(&name);
        // the size the archive declares, checked before inflating, then enforced while
        // inflating (a zip bomb may declare less than it holds)
        let limit = max_array_bytes();
        if entry.size() > limit as u64 {
            return Err(fmt(format!(
                "array `{name}` inflates to {} bytes, over the limit of {limit} (KILN_MAX_ARRAY_BYTES raises it)",
                entry.size()
            )));
        }
        let declared = entry.size();
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut std::io::Read::take(&mut entry, declared + 1), &mut bytes)
            .map_err(|e| fmt(format!("array `{name}`: {e}")))?;
        if bytes.len() as u64 > declared {
            return Err(fmt(format!(
                "array `{name}` holds more than the {declared} bytes the archive declares"
            )));
        }
        let npy = npyz::NpyFile::new(bytes.as_slice()).map_err(|e| NpyError::Format {
            path: inner.clone(),
            msg: format!("not a .npy array ({e})"),
        })?;
        out.push((name.clone(), decode(npy, &inner, bytes.len())?));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

/// Converts one parsed array; `avail` bounds the data size before anything is allocated.
fn decode<R: std::io::Read>(file: npyz::NpyFile<R>, path: &Path, avail: usize) -> Result<Tensor, NpyError> {
    let fmt = |msg: String| NpyError::Format {
        path: path.to_path_buf(),
        msg,
    };
    let descr = match file.dtype() {
        npyz::DType::Plain(t) => t.to_string(),
        other => return Err(fmt(format!("unsupported dtype {}", other.descr()))),
    };
    if file.order() != npyz::Order::C {
        return Err(fmt("Fortran-ordered arrays are not supported".into()));
    }
    let scalar = scalar_of(&descr).ok_or_else(|| fmt(format!("unsupported dtype `{descr}`")))?;
    let shape: Vec<usize> = file.shape().iter().map(|&d| d as usize).collect();
    let n = shape
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or_else(|| fmt("absurd shape".into()))?;
    if n.checked_mul(scalar.size()).is_none_or(|b| b > avail || b > 1 << 34) {
        return Err(fmt(format!("shape {shape:?} needs more data than the file holds")));
    }
    let io = |e: std::io::Error| fmt(e.to_string());
    let data = match scalar {
        Scalar::F32 => Data::F32(file.into_vec().map_err(io)?),
        Scalar::F64 => Data::F64(file.into_vec().map_err(io)?),
        Scalar::F16 => Data::F16(file.into_vec::<f16>().map_err(io)?),
        Scalar::I8 => Data::I8(file.into_vec().map_err(io)?),
        Scalar::U8 => Data::U8(file.into_vec().map_err(io)?),
        Scalar::I16 => Data::I16(file.into_vec().map_err(io)?),
        Scalar::U16 => Data::U16(file.into_vec().map_err(io)?),
        Scalar::I32 => Data::I32(file.into_vec().map_err(io)?),
        Scalar::U32 => Data::U32(file.into_vec().map_err(io)?),
        Scalar::I64 => Data::I64(file.into_vec().map_err(io)?),
        Scalar::U64 => Data::U64(file.into_vec().map_err(io)?),
        Scalar::Bool => Data::Bool(file.into_vec().map_err(io)?),
    };
    if data.len() != n {
        return Err(fmt(format!("holds {} values, shape {shape:?} needs {n}", data.len())));
    }
    Ok(Tensor::new(shape, data))
}

fn encode(t: &Tensor) -> std::io::Result<Vec<u8>> {
    fn put<T: npyz::AutoSerialize + Clone>(shape: &[u64], v: &[T]) -> std::io::Result<Vec<u8>> {
        let mut buf = Vec::new();
        let mut w = npyz::WriteOptions::new()
            .default_dtype()
            .shape(shape)
            .writer(&mut buf)
            .begin_nd()?;
        w.extend(v.iter().cloned())?;
        w.finish()?;
        Ok(buf)
    }
    let shape: Vec<u64> = t.shape.iter().map(|&d| d as u64).collect();
    kiln_ir::with_data!(&t.data, v => put(&shape, v))
}

/// Writes `t` to `path` atomically (temporary file, then rename).
pub fn write(path: &Path, t: &Tensor) -> Result<(), NpyError> {
    let io = |source| NpyError::Io {
        path: path.to_path_buf(),
        source,
    };
    let bytes = encode(t).map_err(io)?;
    crate::fsutil::write_atomic(path, &bytes).map_err(io)
}

//! A bounds-checked reader for the FlatBuffers wire format, just what the TFLite schema
//! needs: tables with vtables, vectors of scalars and tables, strings. Every access returns
//! an error instead of reading outside the file, so a truncated or hostile model cannot
//! panic the importer. Field ids are the schema's (slot `id` lives at vtable byte `4 + 2*id`).

use std::fmt;

/// What went wrong, with the position in the file.
#[derive(Debug, Clone, PartialEq)]
pub struct Malformed(pub String);

impl fmt::Display for Malformed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

pub type Result<T> = std::result::Result<T, Malformed>;

fn bad<T>(msg: String) -> Result<T> {
    Err(Malformed(msg))
}

/// `n` bytes at `pos`, or an error naming what was being read.
fn bytes(buf: &[u8], pos: usize, n: usize) -> Result<&[u8]> {
    match pos.checked_add(n) {
        Some(end) if end <= buf.len() => Ok(&buf[pos..end]),
        _ => bad(format!(
            "{n} bytes at offset {pos} run past the end of the file ({} bytes)",
            buf.len()
        )),
    }
}

fn u16_at(buf: &[u8], pos: usize) -> Result<u16> {
    Ok(u16::from_le_bytes(bytes(buf, pos, 2)?.try_into().expect("2 bytes")))
}

fn u32_at(buf: &[u8], pos: usize) -> Result<u32> {
    Ok(u32::from_le_bytes(bytes(buf, pos, 4)?.try_into().expect("4 bytes")))
}

/// The target of the unsigned offset stored at `pos`.
fn follow(buf: &[u8], pos: usize) -> Result<usize> {
    let off = u32_at(buf, pos)? as usize;
    match pos.checked_add(off) {
        Some(t) if t < buf.len() => Ok(t),
        _ => bad(format!("offset {off} at {pos} points outside the file")),
    }
}

/// The root table of a buffer (its first four bytes hold the offset to it).
pub fn root(buf: &[u8]) -> Result<Table<'_>> {
    Table::at(buf, follow(buf, 0)?)
}

/// One table: its position and its vtable's field offsets.
#[derive(Clone, Copy)]
pub struct Table<'a> {
    buf: &'a [u8],
    pos: usize,
    vtable: &'a [u8],
}

/// Scalars a table field or vector element can hold.
pub trait Scalar: Sized + Copy {
    const SIZE: usize;
    fn read(b: &[u8]) -> Self;
}

macro_rules! scalar {
    ($($t:ty),*) => {$(
        impl Scalar for $t {
            const SIZE: usize = std::mem::size_of::<$t>();
            fn read(b: &[u8]) -> Self {
                <$t>::from_le_bytes(b.try_into().expect("sized by SIZE"))
            }
        }
    )*};
}
scalar!(u8, i8, u16, i16, u32, i32, u64, i64, f32);

impl<'a> Table<'a> {
    fn at(buf: &'a [u8], pos: usize) -> Result<Table<'a>> {
        let soff = u32_at(buf, pos)? as i32 as i64;
        let vt = pos as i64 - soff;
        if vt < 0 || vt as usize >= buf.len() {
            return bad(format!("the table at {pos} has its vtable outside the file"));
        }
        let vt = vt as usize;
        let len = u16_at(buf, vt)? as usize;
        if len < 4 || !len.is_multiple_of(2) {
            return bad(format!("the vtable at {vt} has length {len}"));
        }
        Ok(Table {
            buf,
            pos,
            vtable: bytes(buf, vt, len)?,
        })
    }

    /// The absolute position of field `id`, if present.
    fn field(&self, id: usize) -> Option<usize> {
        let slot = 4 + 2 * id;
        let off = self.vtable.get(slot..slot + 2)?;
        match u16::from_le_bytes([off[0], off[1]]) {
            0 => None,
            o => Some(self.pos + o as usize),
        }
    }

    /// Scalar field `id`, or `default` when absent.
    pub fn get<T: Scalar>(&self, id: usize, default: T) -> Result<T> {
        match self.field(id) {
            None => Ok(default),
            Some(p) => Ok(T::read(bytes(self.buf, p, T::SIZE)?)),
        }
    }

    pub fn table(&self, id: usize) -> Result<Option<Table<'a>>> {
        match self.field(id) {
            None => Ok(None),
            Some(p) => Table::at(self.buf, follow(self.buf, p)?).map(Some),
        }
    }

    pub fn vector(&self, id: usize) -> Result<Option<Vector<'a>>> {
        let Some(p) = self.field(id) else {
            return Ok(None);
        };
        let v = follow(self.buf, p)?;
        let len = u32_at(self.buf, v)? as usize;
        Ok(Some(Vector {
            buf: self.buf,
            pos: v + 4,
            len,
        }))
    }

    /// String field `id` (lossy UTF-8), or empty when absent.
    pub fn string(&self, id: usize) -> Result<String> {
        match self.vector(id)? {
            None => Ok(String::new()),
            Some(v) => Ok(String::from_utf8_lossy(v.bytes()?).into_owned()),
        }
    }

    /// Scalar vector field `id`, empty when absent.
    pub fn scalars<T: Scalar>(&self, id: usize) -> Result<Vec<T>> {
        match self.vector(id)? {
            None => Ok(Vec::new()),
            Some(v) => v.scalars(),
        }
    }

    /// Table vector field `id`, empty when absent.
    pub fn tables(&self, id: usize) -> Result<Vec<Table<'a>>> {
        match self.vector(id)? {
            None => Ok(Vec::new()),
            Some(v) => (0..v.len).map(|i| v.table(i)).collect(),
        }
    }
}

/// A vector: `len` elements from `pos`.
#[derive(Clone, Copy)]
pub struct Vector<'a> {
    buf: &'a [u8],
    pos: usize,
    len: usize,
}

impl<'a> Vector<'a> {
    /// The raw bytes of a byte vector.
    pub fn bytes(&self) -> Result<&'a [u8]> {
        bytes(self.buf, self.pos, self.len)
    }

    pub fn scalars<T: Scalar>(&self) -> Result<Vec<T>> {
        let n = self
            .len
            .checked_mul(T::SIZE)
            .ok_or_else(|| Malformed(format!("vector at {} is too long", self.pos)))?;
        Ok(bytes(self.buf, self.pos, n)?
            .chunks_exact(T::SIZE)
            .map(T::read)
            .collect())
    }

    pub fn table(&self, i: usize) -> Result<Table<'a>> {
        if i >= self.len {
            return bad(format!("index {i} past a vector of {}", self.len));
        }
        Table::at(self.buf, follow(self.buf, self.pos + 4 * i)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A root table with one i32 field (id 1 = 7), one string (id 0 = "hi").
    fn sample() -> Vec<u8> {
        let mut b = vec![0u8; 4];
        // vtable at 4: len 8, table size 12, field0 at +4, field1 at +8
        b.extend([8, 0, 12, 0, 4, 0, 8, 0]);
        let table = b.len(); // 12
        b.extend((table as i32 - 4).to_le_bytes()); // soffset to the vtable
        b.extend(8u32.to_le_bytes()); // the string at 16 + 8 = 24
        b.extend(7i32.to_le_bytes());
        b.extend(2u32.to_le_bytes());
        b.extend(b"hi\0");
        b[0..4].copy_from_slice(&(table as u32).to_le_bytes());
        b
    }

    #[test]
    fn reads_fields_and_defaults() {
        let b = sample();
        let t = root(&b).unwrap();
        assert_eq!(t.get::<i32>(1, 0).unwrap(), 7);
        assert_eq!(t.get::<i32>(5, -3).unwrap(), -3);
        assert_eq!(t.string(0).unwrap(), "hi");
    }

    #[test]
    fn every_truncation_is_an_error_not_a_panic() {
        let b = sample();
        for n in 0..b.len() {
            let cut = &b[..n];
            let r = root(cut).and_then(|t| Ok((t.get::<i32>(1, 0)?, t.string(0)?)));
            assert!(r.is_err() || n >= 30, "truncated at {n} read {r:?}");
        }
    }

    #[test]
    fn huge_vector_lengths_are_refused() {
        let mut b = sample();
        let at = b.len() - 7;
        b[at..at + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(root(&b).unwrap().string(0).is_err());
        assert!(root(&b).unwrap().scalars::<i64>(0).is_err());
    }
}

//! A minimal FlatBuffers writer for TFLite test models: tables, vectors and strings laid
//! out front to back (every offset points forward, every field 8-aligned), enough to build
//! one- and few-operator models that both Kiln and LiteRT read.

#![allow(dead_code)]

/// A field value.
pub enum F {
    U8(u8),
    I32(i32),
    U32(u32),
    F32(f32),
    Table(T),
    Tables(Vec<T>),
    Bytes(Vec<u8>),
    I32s(Vec<i32>),
    F32s(Vec<f32>),
    I64s(Vec<i64>),
    Str(String),
}

/// A table: `(field id, value)` pairs.
pub struct T(pub Vec<(usize, F)>);

fn pad_to(b: &mut Vec<u8>, rem: usize, modulo: usize) {
    while b.len() % modulo != rem {
        b.push(0);
    }
}

fn patch(b: &mut [u8], at: usize, target: usize) {
    b[at..at + 4].copy_from_slice(&((target - at) as u32).to_le_bytes());
}

fn table(b: &mut Vec<u8>, t: &T) -> usize {
    let slots = t.0.iter().map(|f| f.0 + 1).max().unwrap_or(0);
    pad_to(b, 0, 2);
    let vt = b.len();
    b.extend(((4 + 2 * slots) as u16).to_le_bytes());
    b.extend(((8 + 8 * t.0.len()) as u16).to_le_bytes());
    let mut offsets = vec![0u16; slots];
    for (k, (id, _)) in t.0.iter().enumerate() {
        offsets[*id] = (8 + 8 * k) as u16;
    }
    offsets.iter().for_each(|o| b.extend(o.to_le_bytes()));
    pad_to(b, 0, 8);
    let p = b.len();
    b.extend(((p - vt) as i32).to_le_bytes());
    b.extend([0u8; 4]);
    let mut later = Vec::new();
    for (k, (_, f)) in t.0.iter().enumerate() {
        let mut v = [0u8; 8];
        match f {
            F::U8(x) => v[0] = *x,
            F::I32(x) => v[..4].copy_from_slice(&x.to_le_bytes()),
            F::U32(x) => v[..4].copy_from_slice(&x.to_le_bytes()),
            F::F32(x) => v[..4].copy_from_slice(&x.to_le_bytes()),
            _ => later.push((p + 8 + 8 * k, f)),
        }
        b.extend(v);
    }
    for (at, f) in later {
        let target = child(b, f);
        patch(b, at, target);
    }
    p
}

/// A vector of `n` elements whose data starts aligned to `align`; returns its position.
fn vector(b: &mut Vec<u8>, n: usize, align: usize, data: &[u8]) -> usize {
    pad_to(b, (align - 4 % align) % align, align);
    let v = b.len();
    b.extend((n as u32).to_le_bytes());
    b.extend(data);
    v
}

fn child(b: &mut Vec<u8>, f: &F) -> usize {
    match f {
        F::Table(t) => table(b, t),
        F::Tables(ts) => {
            let v = vector(b, ts.len(), 4, &vec![0u8; 4 * ts.len()]);
            for (i, t) in ts.iter().enumerate() {
                let p = table(b, t);
                patch(b, v + 4 + 4 * i, p);
            }
            v
        }
        F::Bytes(d) => vector(b, d.len(), 16, d),
        F::I32s(d) => vector(
            b,
            d.len(),
            4,
            &d.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<_>>(),
        ),
        F::F32s(d) => vector(
            b,
            d.len(),
            4,
            &d.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<_>>(),
        ),
        F::I64s(d) => vector(
            b,
            d.len(),
            8,
            &d.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<_>>(),
        ),
        F::Str(s) => {
            let mut d = s.as_bytes().to_vec();
            d.push(0);
            vector(b, s.len(), 4, &d)
        }
        _ => unreachable!("scalars are inline"),
    }
}

/// A finished buffer with identifier `TFL3` and root table `root`.
pub fn finish(root: &T) -> Vec<u8> {
    let mut b = vec![0u8; 4];
    b.extend(b"TFL3");
    let p = table(&mut b, root);
    patch(&mut b, 0, p);
    b
}

// ---- TFLite models ----

pub const FLOAT32: u8 = 0;
pub const INT32: u8 = 2;
pub const INT8: u8 = 9;

/// One tensor: name, shape, type, constant data (little-endian) and quantization
/// `(scales, zero points, axis)`.
pub struct Tensor {
    pub name: String,
    pub shape: Vec<i32>,
    pub ty: u8,
    pub data: Option<Vec<u8>>,
    pub quant: Option<(Vec<f32>, Vec<i64>, i32)>,
    /// A state tensor (`is_variable`) that persists between invocations.
    pub variable: bool,
}

pub fn act(name: &str, shape: &[i32]) -> Tensor {
    Tensor {
        name: name.into(),
        shape: shape.to_vec(),
        ty: FLOAT32,
        data: None,
        quant: None,
        variable: false,
    }
}

pub fn floats(name: &str, shape: &[i32], v: &[f32]) -> Tensor {
    Tensor {
        data: Some(v.iter().flat_map(|x| x.to_le_bytes()).collect()),
        ..act(name, shape)
    }
}

pub fn ints(name: &str, shape: &[i32], v: &[i32]) -> Tensor {
    Tensor {
        ty: INT32,
        data: Some(v.iter().flat_map(|x| x.to_le_bytes()).collect()),
        ..act(name, shape)
    }
}

/// One operator: builtin code, input and output tensor indices, options (union tag, table).
pub struct Op {
    pub code: i32,
    pub inputs: Vec<i32>,
    pub outputs: Vec<i32>,
    pub options: Option<(u8, T)>,
}

pub fn op(code: i32, inputs: &[i32], outputs: &[i32], options: Option<(u8, T)>) -> Op {
    Op {
        code,
        inputs: inputs.to_vec(),
        outputs: outputs.to_vec(),
        options,
    }
}

/// A model of one subgraph.
pub fn model(tensors: Vec<Tensor>, ops: Vec<Op>, inputs: &[i32], outputs: &[i32]) -> Vec<u8> {
    let mut codes: Vec<i32> = Vec::new();
    for o in &ops {
        if !codes.contains(&o.code) {
            codes.push(o.code);
        }
    }
    let mut buffers = vec![T(vec![])];
    let mut tensor_tables = Vec::new();
    for t in tensors {
        let mut fields = vec![(0, F::I32s(t.shape)), (1, F::U8(t.ty)), (3, F::Str(t.name))];
        if let Some(d) = t.data {
            fields.push((2, F::U32(buffers.len() as u32)));
            buffers.push(T(vec![(0, F::Bytes(d))]));
        }
        if t.variable {
            fields.push((5, F::U8(1)));
        }
        if let Some((s, z, axis)) = t.quant {
            fields.push((
                4,
                F::Table(T(vec![(2, F::F32s(s)), (3, F::I64s(z)), (6, F::I32(axis))])),
            ));
        }
        tensor_tables.push(T(fields));
    }
    let op_tables = ops
        .into_iter()
        .map(|o| {
            let index = codes.iter().position(|&c| c == o.code).unwrap() as u32;
            let mut fields = vec![(0, F::U32(index)), (1, F::I32s(o.inputs)), (2, F::I32s(o.outputs))];
            if let Some((tag, t)) = o.options {
                fields.push((3, F::U8(tag)));
                fields.push((4, F::Table(t)));
            }
            T(fields)
        })
        .collect();
    let code_tables = codes
        .iter()
        .map(|&c| T(vec![(0, F::U8(c.min(127) as u8)), (2, F::I32(1)), (3, F::I32(c))]))
        .collect();
    let subgraph = T(vec![
        (0, F::Tables(tensor_tables)),
        (1, F::I32s(inputs.to_vec())),
        (2, F::I32s(outputs.to_vec())),
        (3, F::Tables(op_tables)),
        (4, F::Str("main".into())),
    ]);
    finish(&T(vec![
        (0, F::U32(3)),
        (1, F::Tables(code_tables)),
        (2, F::Tables(vec![subgraph])),
        (3, F::Str("kiln test".into())),
        (4, F::Tables(buffers)),
    ]))
}

/// An int8 activation with per-tensor parameters.
pub fn q8(name: &str, shape: &[i32], scale: f32, zero_point: i64) -> Tensor {
    Tensor {
        ty: INT8,
        quant: Some((vec![scale], vec![zero_point], 0)),
        ..act(name, shape)
    }
}

/// Constant int8 weights with one scale per index of `axis`.
pub fn weights8(name: &str, shape: &[i32], v: &[i8], scales: &[f32], axis: i32) -> Tensor {
    Tensor {
        name: name.into(),
        shape: shape.to_vec(),
        ty: INT8,
        data: Some(v.iter().map(|&x| x as u8).collect()),
        quant: Some((scales.to_vec(), vec![0; scales.len()], axis)),
        variable: false,
    }
}

/// A constant int32 bias on the grid `scales` (input scale times each weight scale).
pub fn bias32(name: &str, v: &[i32], scales: &[f32]) -> Tensor {
    Tensor {
        quant: Some((scales.to_vec(), vec![0; scales.len()], 0)),
        ..ints(name, &[v.len() as i32], v)
    }
}

pub const INT16: u8 = 7;
pub const INT64: u8 = 4;

/// An int16 activation (16x8 models: zero point 0).
pub fn q16(name: &str, shape: &[i32], scale: f32) -> Tensor {
    Tensor {
        ty: INT16,
        quant: Some((vec![scale], vec![0], 0)),
        ..act(name, shape)
    }
}

/// A constant int64 bias on the grid `scales` (16x8 models).
pub fn bias64(name: &str, v: &[i64], scales: &[f32]) -> Tensor {
    Tensor {
        ty: INT64,
        data: Some(v.iter().flat_map(|x| x.to_le_bytes()).collect()),
        quant: Some((scales.to_vec(), vec![0; scales.len()], 0)),
        ..act(name, &[v.len() as i32])
    }
}

pub const UINT8: u8 = 3;

/// A uint8 tensor with per-tensor parameters (TFLite's older quantized models), constant
/// when `data` is given.
pub fn qu8(name: &str, shape: &[i32], scale: f32, zero_point: i64, data: Option<Vec<u8>>) -> Tensor {
    Tensor {
        ty: UINT8,
        data,
        quant: Some((vec![scale], vec![zero_point], 0)),
        ..act(name, shape)
    }
}

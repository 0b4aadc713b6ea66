//! Reads the text form `text::dump` prints back into a graph, so passes can be tested text
//! in, text out. It covers float graphs: every constant must carry its values (the dump
//! prints them up to eight elements), quantization only per tensor or per axis, and the
//! integer ops (whose tables the dump abbreviates) are refused with the line they are on.

use crate::dtype::{DType, QParams, Scalar, TensorType};
use crate::error::{IrError, Result};
use crate::graph::{Graph, ValueId};
use crate::op::*;
use crate::tensor::{Data, Tensor};
use std::collections::HashMap;

fn bad(line: usize, msg: impl std::fmt::Display) -> IrError {
    IrError::Invalid(format!("line {line}: {msg}"))
}

/// Parses a graph from its text form (see the module doc for what it covers).
pub fn parse(text: &str) -> Result<Graph> {
    let mut lines = text.lines().enumerate().map(|(i, l)| (i + 1, l.trim()));
    let (_, head) = lines.next().ok_or_else(|| bad(1, "empty text"))?;
    let name = head
        .strip_prefix("graph ")
        .and_then(|h| h.strip_suffix(" {"))
        .ok_or_else(|| bad(1, "expected `graph NAME {`"))?;
    let mut g = Graph::new(name);
    let mut names: HashMap<String, ValueId> = HashMap::new();
    let mut done = false;
    for (no, line) in lines {
        if line.is_empty() || done {
            continue;
        }
        if line == "}" {
            done = true;
        } else if let Some(rest) = line.strip_prefix("in ") {
            let (n, ty) = typed(no, rest)?;
            let v = g.add_input(&n, ty);
            names.insert(n, v);
        } else if let Some(rest) = line.strip_prefix("const ") {
            let (decl, values) = rest
                .split_once(" = ")
                .ok_or_else(|| bad(no, "a constant needs its values (`= [..]`)"))?;
            let (n, ty) = typed(no, decl)?;
            let v = g.add_const(&n, constant(no, &ty, values)?);
            names.insert(n, v);
        } else if let Some(rest) = line.strip_prefix("out ") {
            let outs = (rest.split(", ").map(|o| value(no, &names, o))).collect::<Result<Vec<_>>>()?;
            g.set_outputs(outs);
        } else {
            node(&mut g, &mut names, no, line)?;
        }
    }
    if !done {
        return Err(bad(text.lines().count(), "missing the closing `}`"));
    }
    Ok(g)
}

fn value(no: usize, names: &HashMap<String, ValueId>, s: &str) -> Result<ValueId> {
    let n = s
        .trim()
        .strip_prefix('%')
        .ok_or_else(|| bad(no, format!("expected `%name`, got `{s}`")))?;
    names
        .get(n)
        .copied()
        .ok_or_else(|| bad(no, format!("`%{n}` is not defined above")))
}

/// `%name: type`.
fn typed(no: usize, s: &str) -> Result<(String, TensorType)> {
    let (n, ty) = s
        .split_once(": ")
        .ok_or_else(|| bad(no, format!("expected `%name: type`, got `{s}`")))?;
    let n = n
        .trim()
        .strip_prefix('%')
        .ok_or_else(|| bad(no, "a value name starts with `%`"))?;
    Ok((n.to_string(), tensor_type(no, ty.trim())?))
}

/// `f32[1,2]`, `i8<scale=.., zp=..>[4]` or `i8<axis=0, scales=[..], zps=[..]>[2,3]`.
fn tensor_type(no: usize, s: &str) -> Result<TensorType> {
    let open = s
        .rfind('[')
        .ok_or_else(|| bad(no, format!("expected a shape in `{s}`")))?;
    let dims = s[open + 1..]
        .strip_suffix(']')
        .ok_or_else(|| bad(no, "unclosed shape"))?;
    let shape = if dims.is_empty() {
        vec![]
    } else {
        dims.split(',').map(|d| num::<usize>(no, d)).collect::<Result<_>>()?
    };
    let dt = &s[..open];
    let (scalar, quant) = match dt.split_once('<') {
        None => (dt, None),
        Some((sc, q)) => (sc, Some(qparams(no, q.strip_suffix('>').unwrap_or(q))?)),
    };
    let scalar = Scalar::from_name(scalar).ok_or_else(|| bad(no, format!("unknown element type `{scalar}`")))?;
    Ok(TensorType::new(DType { scalar, quant }, shape))
}

fn qparams(no: usize, s: &str) -> Result<QParams> {
    let kv = pairs(no, s, ", ")?;
    let get = |k: &str| {
        kv.get(k)
            .copied()
            .ok_or_else(|| bad(no, format!("quantization without `{k}`")))
    };
    if kv.contains_key("scale") {
        return Ok(QParams::PerTensor {
            scale: num(no, get("scale")?)?,
            zero_point: num(no, get("zp")?)?,
        });
    }
    Ok(QParams::PerAxis {
        axis: num(no, get("axis")?)?,
        scales: list::<f32>(no, get("scales")?)?.into(),
        zero_points: list::<i32>(no, get("zps")?)?.into(),
    })
}

fn num<T: std::str::FromStr>(no: usize, s: &str) -> Result<T> {
    s.trim()
        .parse()
        .map_err(|_| bad(no, format!("cannot read `{}`", s.trim())))
}

fn list<T: std::str::FromStr>(no: usize, s: &str) -> Result<Vec<T>> {
    let inner = s.trim().strip_prefix('[').and_then(|x| x.strip_suffix(']'));
    let inner = inner.ok_or_else(|| bad(no, format!("expected `[..]`, got `{s}`")))?;
    if inner.trim().is_empty() {
        return Ok(vec![]);
    }
    inner.split(',').map(|x| num(no, x)).collect()
}

fn constant(no: usize, ty: &TensorType, values: &str) -> Result<Tensor> {
    let v: Vec<f64> = list(no, values)?;
    if v.len() != ty.numel() {
        return Err(bad(no, format!("{} values for {ty}", v.len())));
    }
    Ok(Tensor::new(ty.shape.clone(), Data::F64(v).cast(ty.dtype.scalar)))
}

/// `key=value` pairs split at `sep` only where a new `key=` starts, so values may hold
/// spaces (`kind=Avg { count_include_pad: true }`).
fn pairs<'a>(no: usize, s: &'a str, sep: &str) -> Result<HashMap<&'a str, &'a str>> {
    let mut starts = vec![0];
    let mut at = 0;
    while let Some(i) = s[at..].find(sep) {
        let j = at + i + sep.len();
        let key_end = s[j..].find(['=', ' ']).map(|k| j + k);
        if key_end.is_some_and(|k| {
            s.as_bytes()[k] == b'='
                && s[j..k]
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
        }) {
            starts.push(j);
        }
        at = j;
    }
    let mut out = HashMap::new();
    for (k, &st) in starts.iter().enumerate() {
        let end = starts.get(k + 1).map_or(s.len(), |&e| e - sep.len());
        let item = s[st..end].trim();
        if item.is_empty() {
            continue;
        }
        let (key, val) = item
            .split_once('=')
            .ok_or_else(|| bad(no, format!("expected `key=value`, got `{item}`")))?;
        out.insert(key, val);
    }
    Ok(out)
}

/// `%y: T, .. = Op(%a, ..) {attrs}  # name`.
fn node(g: &mut Graph, names: &mut HashMap<String, ValueId>, no: usize, line: &str) -> Result<()> {
    let (body, name) = line
        .rsplit_once("  # ")
        .ok_or_else(|| bad(no, "a node line ends with `  # name`"))?;
    let (outs, call) = body
        .split_once(" = ")
        .ok_or_else(|| bad(no, "expected `outputs = Op(inputs)`"))?;
    let open = call.find('(').ok_or_else(|| bad(no, "expected `Op(`"))?;
    let close = call.find(')').ok_or_else(|| bad(no, "expected `)`"))?;
    let op_name = &call[..open];
    let args = &call[open + 1..close];
    let inputs = if args.is_empty() {
        vec![]
    } else {
        args.split(", ")
            .map(|a| value(no, names, a))
            .collect::<Result<Vec<_>>>()?
    };
    let rest = call[close + 1..].trim();
    let attrs = match rest.strip_prefix('{').and_then(|r| r.strip_suffix('}')) {
        Some(a) => pairs(no, a, " ")?,
        None => HashMap::new(),
    };
    let op = op(op_name, &Attrs(attrs)).map_err(|e| bad(no, e))?;
    let mut outputs = Vec::new();
    for o in split_outputs(outs) {
        outputs.push(typed(no, o)?);
    }
    let (_, vals) = g.add_node_typed(name, op, inputs, outputs.clone());
    for ((n, _), v) in outputs.into_iter().zip(vals) {
        names.insert(n, v);
    }
    Ok(())
}

/// Output declarations, split at the `, %` that starts each (types hold commas).
fn split_outputs(s: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut from = 0;
    while let Some(i) = s[from + 1..].find(", %") {
        out.push(&s[from..from + 1 + i]);
        from = from + 1 + i + 2;
    }
    out.push(&s[from..]);
    out
}

struct Attrs<'a>(HashMap<&'a str, &'a str>);

impl Attrs<'_> {
    fn raw(&self, k: &str) -> std::result::Result<&str, String> {
        self.0.get(k).copied().ok_or_else(|| format!("missing attribute `{k}`"))
    }
    fn get<T: std::str::FromStr>(&self, k: &str) -> std::result::Result<T, String> {
        let v = self.raw(k)?;
        v.trim()
            .parse()
            .map_err(|_| format!("attribute `{k}`: cannot read `{v}`"))
    }
    fn list<T: std::str::FromStr>(&self, k: &str) -> std::result::Result<Vec<T>, String> {
        list(0, self.raw(k)?).map_err(|_| format!("attribute `{k}`: expected a list"))
    }
    fn window(&self) -> std::result::Result<Window, String> {
        Ok(Window {
            kernel: self.list("kernel")?,
            strides: self.list("strides")?,
            dilations: self.list("dilations")?,
            pads: self.list("pads")?,
        })
    }
    fn fused(&self) -> std::result::Result<Option<UnaryOp>, String> {
        match self.0.get("fused") {
            None => Ok(None),
            Some(f) => unary_from_debug(f).map(Some),
        }
    }
    fn numerics(&self) -> Numerics {
        match self.0.get("numerics") {
            Some(&"tflite") => Numerics::Tflite,
            _ => Numerics::Onnx,
        }
    }
}

/// A unary op from its name and `key=value` attributes.
fn unary(name: &str, a: &Attrs) -> std::result::Result<Option<UnaryOp>, String> {
    use UnaryOp::*;
    let plain = [
        Relu, HardSwish, Sigmoid, Tanh, Softplus, Softsign, Mish, Exp, Log, Sqrt, Neg, Abs, Sign, Reciprocal, Floor,
        Ceil, Round, Erf, Sin, Cos, Tan, Asin, Acos, Atan, Sinh, Cosh, Asinh, Acosh, Atanh, Not, IsNaN, BitwiseNot,
    ];
    if let Some(u) = plain.into_iter().find(|u| u.name() == name) {
        return Ok(Some(u));
    }
    Ok(Some(match name {
        "LeakyRelu" => LeakyRelu { alpha: a.get("alpha")? },
        "Elu" => Elu { alpha: a.get("alpha")? },
        "Celu" => Celu { alpha: a.get("alpha")? },
        "Selu" => Selu {
            alpha: a.get("alpha")?,
            gamma: a.get("gamma")?,
        },
        "ThresholdedRelu" => ThresholdedRelu { alpha: a.get("alpha")? },
        "HardSigmoid" => HardSigmoid {
            alpha: a.get("alpha")?,
            beta: a.get("beta")?,
        },
        "Gelu" => Gelu {
            tanh_approx: a.get("tanh_approx")?,
        },
        "Clip" => Clip {
            min: a.get("min")?,
            max: a.get("max")?,
        },
        "IsInf" => IsInf {
            positive: a.get("positive")?,
            negative: a.get("negative")?,
        },
        _ => return Ok(None),
    }))
}

/// A unary op as `{:?}` prints it (`Relu`, `Clip { min: 0.0, max: 6.0 }`).
fn unary_from_debug(s: &str) -> std::result::Result<UnaryOp, String> {
    let (name, fields) = match s.split_once(" { ") {
        Some((n, f)) => (n, f.trim_end_matches(" }").replace(": ", "=").replace(", ", " ")),
        None => (s, String::new()),
    };
    let kv = pairs(0, &fields, " ").map_err(|e| e.to_string())?;
    unary(name.trim(), &Attrs(kv))?.ok_or_else(|| format!("unknown activation `{s}`"))
}

fn binary(name: &str, a: &Attrs) -> std::result::Result<Option<BinaryOp>, String> {
    use BinaryOp::*;
    let all = [
        Add,
        Sub,
        Mul,
        Div,
        Pow,
        Max,
        Min,
        PRelu,
        Equal,
        Less,
        LessOrEqual,
        Greater,
        GreaterOrEqual,
        And,
        Or,
        Xor,
        BitwiseAnd,
        BitwiseOr,
        BitwiseXor,
        BitShiftLeft,
        BitShiftRight,
    ];
    if name == "Mod" {
        return Ok(Some(Mod { fmod: a.get("fmod")? }));
    }
    Ok(all.into_iter().find(|b| b.name() == name))
}

fn pool_kind(s: &str) -> std::result::Result<PoolKind, String> {
    let s = s.trim();
    if s == "Max" {
        return Ok(PoolKind::Max);
    }
    if let Some(f) = s
        .strip_prefix("Avg { count_include_pad: ")
        .and_then(|f| f.strip_suffix(" }"))
    {
        let count_include_pad = f.parse().map_err(|_| format!("cannot read `{s}`"))?;
        return Ok(PoolKind::Avg { count_include_pad });
    }
    if let Some(p) = s.strip_prefix("Lp { p: ").and_then(|f| f.strip_suffix(" }")) {
        return Ok(PoolKind::Lp {
            p: p.parse().map_err(|_| format!("cannot read `{s}`"))?,
        });
    }
    Err(format!("unknown pool kind `{s}`"))
}

fn reduce_kind(name: &str) -> Option<ReduceKind> {
    use ReduceKind::*;
    [Sum, Mean, Max, Min, Prod, L1, L2, LogSum, LogSumExp, SumSquare]
        .into_iter()
        .find(|&kind| {
            Op::Reduce {
                kind,
                axes: vec![],
                keep_dims: false,
            }
            .name()
                == name
        })
}

fn op(name: &str, a: &Attrs) -> std::result::Result<Op, String> {
    if let Some(u) = unary(name, a)? {
        return Ok(Op::Unary(u));
    }
    if let Some(b) = binary(name, a)? {
        return Ok(Op::Binary(b));
    }
    if let Some(kind) = reduce_kind(name) {
        return Ok(Op::Reduce {
            kind,
            axes: a.list("axes")?,
            keep_dims: a.get("keep_dims")?,
        });
    }
    Ok(match name {
        "Identity" => Op::Identity,
        "Where" => Op::Where,
        "MatMul" => Op::MatMul,
        "Cast" => Op::Cast {
            to: Scalar::from_name(a.raw("to")?).ok_or("unknown element type")?,
        },
        "Conv" => Op::Conv(Conv {
            window: a.window()?,
            group: a.get("group")?,
            fused: a.fused()?,
        }),
        "Gemm" => Op::Gemm {
            alpha: a.get("alpha")?,
            beta: a.get("beta")?,
            trans_a: a.get("trans_a")?,
            trans_b: a.get("trans_b")?,
            fused: a.fused()?,
        },
        "MaxPool" | "AveragePool" | "LpPool" => Op::Pool(Pool {
            kind: pool_kind(a.raw("kind")?)?,
            window: a.window()?,
            ceil_mode: a.get("ceil_mode")?,
            numerics: a.numerics(),
        }),
        "GlobalMaxPool" | "GlobalAveragePool" | "GlobalLpPool" => Op::GlobalPool(pool_kind(a.raw("kind")?)?),
        "BatchNorm" => Op::BatchNorm {
            epsilon: a.get("epsilon")?,
        },
        "InstanceNorm" => Op::InstanceNorm {
            epsilon: a.get("epsilon")?,
        },
        "LayerNorm" => Op::LayerNorm {
            axis: a.get("axis")?,
            epsilon: a.get("epsilon")?,
        },
        "Softmax" => Op::Softmax { axis: a.get("axis")? },
        "LogSoftmax" => Op::LogSoftmax { axis: a.get("axis")? },
        "Hardmax" => Op::Hardmax { axis: a.get("axis")? },
        "Reshape" => Op::Reshape {
            shape: a.list("shape")?,
        },
        "Transpose" => Op::Transpose { perm: a.list("perm")? },
        "Concat" => Op::Concat { axis: a.get("axis")? },
        "Split" => Op::Split {
            axis: a.get("axis")?,
            sizes: a.list("sizes")?,
        },
        "Gather" => Op::Gather { axis: a.get("axis")? },
        "GatherElements" => Op::GatherElements { axis: a.get("axis")? },
        "Expand" => Op::Expand {
            shape: a.list("shape")?,
        },
        "Tile" => Op::Tile {
            repeats: a.list("repeats")?,
        },
        "Trilu" => Op::Trilu {
            upper: a.get("upper")?,
            k: a.get("k")?,
        },
        "Slice" => {
            let items: Vec<String> = a.list("start:step:len")?;
            let axes = items
                .iter()
                .map(|it| {
                    let f: Vec<&str> = it.split(':').collect();
                    match f[..] {
                        [s, st, l] => Ok(SliceAxis {
                            start: s.parse().map_err(|_| "bad slice start")?,
                            step: st.parse().map_err(|_| "bad slice step")?,
                            len: l.parse().map_err(|_| "bad slice length")?,
                        }),
                        _ => Err("a slice axis is `start:step:len`"),
                    }
                })
                .collect::<std::result::Result<_, &str>>()?;
            Op::Slice { axes }
        }
        other => return Err(format!("`{other}` cannot be read from text yet (float graphs only)")),
    })
}

#[cfg(test)]
mod tests {
    use super::parse;
    use crate::text::dump;

    /// Every line of the text form read back prints the same, and the graph verifies.
    #[test]
    fn the_text_form_reads_back_to_itself() {
        let text = "graph g {
  in %x: f32[1,2,4,4]
  in %m: f32[8,3]
  const %w: f32[2,1,1,1] = [0.5, -2]
  const %b: f32[2] = [1, 0]
  const %s: f32[] = [3]
  %c: f32[1,2,4,4] = Conv(%x, %w, %b) {kernel=[1,1] strides=[1,1] dilations=[1,1] pads=[0,0,0,0] group=2 fused=Clip { min: 0.0, max: 6.0 }}  # conv
  %p: f32[1,2,2,2] = AveragePool(%c) {kernel=[2,2] strides=[2,2] dilations=[1,1] pads=[0,0,0,0] ceil_mode=false kind=Avg { count_include_pad: true }}  # pool
  %l: f32[1,2,2,2] = LeakyRelu(%p) {alpha=0.1}  # act
  %r: f32[1,8] = Reshape(%l) {shape=[1,8]}  # flat
  %q: f32[1,8] = Mul(%r, %s)  # scale
  %y: f32[1,3] = Gemm(%q, %m) {alpha=1 beta=1 trans_a=false trans_b=false}  # fc
  %z: f32[1,3] = Softmax(%y) {axis=1}  # prob
  %t: f32[1,2] = Slice(%z) {start:step:len=[0:1:1,1:1:2]}  # cut
  %u: f32[1,1] = ReduceMax(%t) {axes=[1] keep_dims=true}  # top
  out %z, %u
}
";
        let g = parse(text).expect("parses");
        crate::verify::verify(&g).expect("verifies");
        assert_eq!(dump(&g).expect("acyclic"), text);
    }

    #[test]
    fn what_it_cannot_read_names_the_line() {
        let e = parse("graph g {\n  in %x: f32[2]\n  %y: f32[2] = Relu(%z)  # r\n  out %y\n}\n").unwrap_err();
        assert!(e.to_string().contains("line 3") && e.to_string().contains("%z"), "{e}");
        let e = parse("graph g {\n  const %w: f32[9]\n}\n").unwrap_err();
        assert!(
            e.to_string().contains("line 2") && e.to_string().contains("values"),
            "{e}"
        );
        let e = parse("graph g {\n  in %x: i8[2]\n  %y: i8[2] = QAdd(%x, %x)  # q\n}\n").unwrap_err();
        assert!(e.to_string().contains("cannot be read"), "{e}");
        assert!(parse("graph g {\n  in %x: f32[2]\n").is_err());
    }
}

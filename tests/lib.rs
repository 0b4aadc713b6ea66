//! Shared helpers for Kiln's end-to-end tests: locating fixtures, comparing tensors with a
//! stated bound, and building small ONNX models in code for error-path tests.

use kiln::onnx::proto::{
    self, AttributeProto, GraphProto, ModelProto, NodeProto, OperatorSetIdProto, TensorProto, ValueInfoProto,
};
use kiln_ir::Tensor;
use std::path::PathBuf;

/// The repository root.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// Largest violation of `|a - b| <= atol + rtol * |b|` as a ratio (<= 1 passes), plus the
/// maximum absolute difference. Integer and bool tensors must match exactly (ratio 0 or inf).
pub fn compare(got: &Tensor, want: &Tensor, rtol: f64, atol: f64) -> Result<(f64, f64), String> {
    if got.shape != want.shape {
        return Err(format!("shape {:?}, expected {:?}", got.shape, want.shape));
    }
    if got.data.scalar() != want.data.scalar() {
        return Err(format!("type {}, expected {}", got.data.scalar(), want.data.scalar()));
    }
    if !want.data.scalar().is_float() {
        return if got.data == want.data {
            Ok((0.0, 0.0))
        } else {
            let (g, w) = (got.to_i64_vec(), want.to_i64_vec());
            let i = g.iter().zip(&w).position(|(a, b)| a != b).unwrap_or(0);
            Err(format!("element {i} is {}, expected {}", g[i], w[i]))
        };
    }
    let (g, w) = (got.to_f64_vec(), want.to_f64_vec());
    let mut worst = 0f64;
    let mut max_abs = 0f64;
    for (i, (&a, &b)) in g.iter().zip(&w).enumerate() {
        if a.is_nan() && b.is_nan() || a == b {
            continue;
        }
        let d = (a - b).abs();
        if d.is_nan() {
            return Err(format!("element {i} is {a}, expected {b}"));
        }
        max_abs = max_abs.max(d);
        worst = worst.max(d / (atol + rtol * b.abs()));
    }
    Ok((worst, max_abs))
}

/// The native backend's float tolerance where it fuses multiply-add (`--target-cpu` with
/// `fma`, AArch64): `|got - want| <= NATIVE_REL * max |want| + NATIVE_ABS` per output tensor,
/// relative to the output's range (ARCHITECTURE.md, "Float tolerance").
pub const NATIVE_REL: f64 = 1e-5;
pub const NATIVE_ABS: f64 = 1e-6;

/// As [`compare`], with the bound relative to the output's range rather than to each
/// element: `|a - b| <= atol + rel * max |want|`.
pub fn compare_range(got: &Tensor, want: &Tensor, rel: f64, atol: f64) -> Result<(f64, f64), String> {
    if !want.data.scalar().is_float() || got.shape != want.shape {
        return compare(got, want, rel, atol);
    }
    let range = want
        .to_f64_vec()
        .iter()
        .filter(|v| v.is_finite())
        .fold(0f64, |m, v| m.max(v.abs()));
    let (_, max_abs) = compare(got, want, 0.0, 1.0)?;
    Ok((max_abs / (atol + rel * range), max_abs))
}

/// Reads a serialized TensorProto (`input_0.pb`).
pub fn read_pb(path: &std::path::Path) -> Result<Tensor, String> {
    use prost::Message;
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let t = TensorProto::decode(bytes.as_slice()).map_err(|e| format!("{}: {e}", path.display()))?;
    kiln::onnx::tensor::convert(&t, None).map_err(|e| e.to_string())
}

// ---- building models in code ----

pub fn attr_i(name: &str, i: i64) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: proto::AttributeType::Int as i32,
        i,
        ..Default::default()
    }
}

pub fn attr_f(name: &str, f: f32) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: proto::AttributeType::Float as i32,
        f,
        ..Default::default()
    }
}

pub fn attr_ints(name: &str, ints: &[i64]) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: proto::AttributeType::Ints as i32,
        ints: ints.to_vec(),
        ..Default::default()
    }
}

pub fn attr_t(name: &str, t: TensorProto) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: proto::AttributeType::Tensor as i32,
        t: Some(t),
        ..Default::default()
    }
}

pub fn node(op: &str, name: &str, inputs: &[&str], outputs: &[&str], attribute: Vec<AttributeProto>) -> NodeProto {
    NodeProto {
        op_type: op.into(),
        name: name.into(),
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: outputs.iter().map(|s| s.to_string()).collect(),
        attribute,
        ..Default::default()
    }
}

/// A float tensor value with fixed dims; `None` entries are symbolic.
pub fn value(name: &str, dims: &[Option<i64>]) -> ValueInfoProto {
    use proto::tensor_shape_proto::{Dimension, dimension::Value as D};
    let dim = dims
        .iter()
        .enumerate()
        .map(|(i, d)| Dimension {
            value: Some(match d {
                Some(v) => D::DimValue(*v),
                None => D::DimParam(format!("d{i}")),
            }),
            denotation: String::new(),
        })
        .collect();
    ValueInfoProto {
        name: name.into(),
        r#type: Some(proto::TypeProto {
            value: Some(proto::type_proto::Value::TensorType(proto::type_proto::Tensor {
                elem_type: proto::data_type::FLOAT,
                shape: Some(proto::TensorShapeProto { dim }),
            })),
            denotation: String::new(),
        }),
        doc_string: String::new(),
    }
}

pub fn fixed(name: &str, dims: &[i64]) -> ValueInfoProto {
    value(name, &dims.iter().map(|&d| Some(d)).collect::<Vec<_>>())
}

pub fn tensor(name: &str, shape: &[usize], v: Vec<f32>) -> TensorProto {
    kiln::onnx::tensor::to_proto(name, &Tensor::from_vec(shape.to_vec(), v))
}

pub fn model(
    nodes: Vec<NodeProto>,
    inputs: Vec<ValueInfoProto>,
    outputs: Vec<ValueInfoProto>,
    inits: Vec<TensorProto>,
    opset: i64,
) -> ModelProto {
    ModelProto {
        ir_version: 8,
        opset_import: vec![OperatorSetIdProto {
            domain: String::new(),
            version: opset,
        }],
        graph: Some(GraphProto {
            node: nodes,
            name: "test".into(),
            initializer: inits,
            input: inputs,
            output: outputs,
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Writes `m` into a fresh temporary directory and returns the file path.
pub fn write_model(tag: &str, m: &ModelProto) -> PathBuf {
    use prost::Message;
    let dir = std::env::temp_dir().join(format!("kiln-test-{}-{tag}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let p = dir.join("model.onnx");
    // Tests in one process may write the same tag at once: write aside, then rename, so a
    // reader never sees a half-written file.
    static SEQ: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = dir.join(format!("model.onnx.{n}.tmp"));
    std::fs::write(&tmp, m.encode_to_vec()).expect("write model");
    std::fs::rename(&tmp, &p).expect("rename model");
    p
}

pub fn f32_tensor(shape: &[usize], v: Vec<f32>) -> Tensor {
    Tensor::from_vec(shape.to_vec(), v)
}

// ---- native builds: compile, link into a C harness with the system `cc`, run ----

/// A model compiled to an executable that reads raw inputs and writes raw outputs.
pub struct NativeExe {
    pub exe: PathBuf,
    pub dir: PathBuf,
    pub runner: Option<&'static str>,
    pub runner_args: &'static [&'static str],
}

/// A target with the C compiler that links for it and the emulator that runs it.
pub struct Toolchain {
    pub triple: &'static str,
    pub cc: &'static str,
    pub runner: Option<&'static str>,
    /// Arguments for the runner before the program (e.g. qemu's `-cpu`).
    pub runner_args: &'static [&'static str],
    /// `--target-cpu` for the object.
    pub cpu: Option<&'static str>,
}

pub const HOST: Toolchain = Toolchain {
    triple: "host",
    cc: "cc",
    runner: None,
    runner_args: &[],
    cpu: None,
};
pub const AARCH64: Toolchain = Toolchain {
    triple: "aarch64-unknown-linux-gnu",
    cc: "aarch64-linux-gnu-gcc",
    runner: Some("qemu-aarch64-static"),
    runner_args: &[],
    cpu: None,
};
pub const RISCV64: Toolchain = Toolchain {
    triple: "riscv64gc-unknown-linux-gnu",
    cc: "riscv64-linux-gnu-gcc",
    runner: Some("qemu-riscv64-static"),
    runner_args: &[],
    cpu: None,
};

impl Toolchain {
    /// Whether the compiler and emulator are installed (`scripts/setup-cross.sh`).
    pub fn available(&self) -> bool {
        let has = |c: &str| {
            std::process::Command::new(c)
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success())
        };
        has(self.cc) && self.runner.is_none_or(has)
    }
}

/// Compiles `g` with the Cranelift backend for the host, links a generated C harness
/// against `lib<prefix>.a`, and returns the executable.
pub fn build_native(g: &kiln_ir::Graph, prefix: &str, dir: &std::path::Path) -> Result<NativeExe, String> {
    build_native_for(g, prefix, dir, &HOST)
}

/// As [`build_native`] for any toolchain (cross targets link statically for the emulator).
pub fn build_native_for(
    g: &kiln_ir::Graph,
    prefix: &str,
    dir: &std::path::Path,
    tc: &Toolchain,
) -> Result<NativeExe, String> {
    use kiln::compile::{CompileOptions, Emit, compile, parse_target, write_files};
    let target = parse_target(tc.triple).map_err(|e| e.to_string())?.with_cpu(tc.cpu);
    let opts = CompileOptions {
        emit: Emit::Object,
        target,
        prefix: prefix.into(),
        static_arena: false,
    };
    let out = compile(g, &opts, "test").map_err(|e| e.to_string())?;
    write_files(dir, &out.files, &[]).map_err(|e| e.to_string())?;
    let c = harness_source(g, prefix);
    let src = dir.join("harness.c");
    std::fs::write(&src, c).map_err(|e| e.to_string())?;
    let exe = dir.join("harness");
    let st = std::process::Command::new(tc.cc)
        .args(["-std=c11", "-O1", "-Wall", "-Wextra", "-Werror"])
        .args(if tc.runner.is_some() { &["-static"][..] } else { &[] })
        .arg(&src)
        .arg("-L")
        .arg(dir)
        .arg(format!("-l{prefix}"))
        .arg("-o")
        .arg(&exe)
        .output()
        .map_err(|e| format!("cannot run cc: {e}"))?;
    if !st.status.success() {
        return Err(format!("cc failed: {}", String::from_utf8_lossy(&st.stderr)));
    }
    Ok(NativeExe {
        exe,
        dir: dir.to_path_buf(),
        runner: tc.runner,
        runner_args: tc.runner_args,
    })
}

impl NativeExe {
    /// Runs the executable on `inputs`; outputs come back with the graph's output types.
    pub fn run(&self, g: &kiln_ir::Graph, inputs: &[Tensor]) -> Result<Vec<Tensor>, String> {
        let mut args = Vec::new();
        for (i, t) in inputs.iter().enumerate() {
            let p = self.dir.join(format!("in{i}.bin"));
            std::fs::write(&p, t.data.to_le_bytes()).map_err(|e| e.to_string())?;
            args.push(p);
        }
        let outs: Vec<PathBuf> = (0..g.outputs().len())
            .map(|i| self.dir.join(format!("out{i}.bin")))
            .collect();
        args.extend(outs.iter().cloned());
        let mut cmd = match self.runner {
            Some(r) => {
                let mut c = std::process::Command::new(r);
                c.args(self.runner_args).arg(&self.exe);
                c
            }
            None => std::process::Command::new(&self.exe),
        };
        let st = cmd.args(&args).output().map_err(|e| e.to_string())?;
        if !st.status.success() {
            return Err(format!(
                "native run failed ({}): {}",
                st.status,
                String::from_utf8_lossy(&st.stderr)
            ));
        }
        g.outputs()
            .iter()
            .zip(&outs)
            .map(|(&v, p)| {
                let ty = &g.value(v).ty;
                let b = std::fs::read(p).map_err(|e| e.to_string())?;
                let d = kiln_ir::Data::from_le_bytes(ty.dtype.scalar, &b).ok_or("bad output size")?;
                if d.len() != ty.numel() {
                    return Err("bad output size".to_string());
                }
                Ok(Tensor::new(ty.shape.clone(), d))
            })
            .collect()
    }
}

/// A C11 program that reads the model's inputs from raw files, runs `<prefix>_run` and
/// writes the outputs to raw files (arguments: inputs, then outputs).
pub fn harness_source(g: &kiln_ir::Graph, prefix: &str) -> String {
    let up = prefix.to_ascii_uppercase();
    let ctype = |s: kiln_ir::Scalar| kiln_backends::header::c_type(s);
    let mut c = format!("#include \"{prefix}.h\"\n#include <stdio.h>\n#include <stdlib.h>\n");
    c.push_str("static void io(const char *p, void *b, size_t n, int w) {\n  FILE *f = fopen(p, w ? \"wb\" : \"rb\");\n  if (!f || (w ? fwrite(b, 1, n, f) : fread(b, 1, n, f)) != n) { fprintf(stderr, \"io %s\\n\", p); exit(2); }\n  fclose(f);\n}\n");
    let (ni, no) = (g.inputs().len(), g.outputs().len());
    for (i, &v) in g.inputs().iter().enumerate() {
        c.push_str(&format!(
            "static {} in{i}[{up}_INPUT{i}_COUNT + 1];\n",
            ctype(g.value(v).ty.dtype.scalar)
        ));
    }
    for (i, &v) in g.outputs().iter().enumerate() {
        c.push_str(&format!(
            "static {} out{i}[{up}_OUTPUT{i}_COUNT + 1];\n",
            ctype(g.value(v).ty.dtype.scalar)
        ));
    }
    c.push_str(&format!("static _Alignas(16) unsigned char arena[{up}_ARENA_SIZE + 16];\nint main(int argc, char **argv) {{\n  if (argc != {}) return 3;\n", 1 + ni + no));
    for i in 0..ni {
        c.push_str(&format!(
            "  io(argv[{}], in{i}, sizeof(in{i}[0]) * {up}_INPUT{i}_COUNT, 0);\n",
            1 + i
        ));
    }
    let mut args: Vec<String> = (0..ni).map(|i| format!("in{i}")).collect();
    args.extend((0..no).map(|i| format!("out{i}")));
    args.push("arena".into());
    c.push_str(&format!(
        "  int rc = {prefix}_run({});\n  if (rc) return 10 + rc;\n",
        args.join(", ")
    ));
    for i in 0..no {
        c.push_str(&format!(
            "  io(argv[{}], out{i}, sizeof(out{i}[0]) * {up}_OUTPUT{i}_COUNT, 1);\n",
            1 + ni + i
        ));
    }
    c.push_str("  return 0;\n}\n");
    c
}

/// Compiles `g` to C, compiles that file alone with `-std=c99 -Wall -Wextra -Werror
/// -pedantic` (plus `extra` flags, e.g. sanitizers), and links it with the harness.
pub fn build_c(g: &kiln_ir::Graph, prefix: &str, dir: &std::path::Path, extra: &[&str]) -> Result<NativeExe, String> {
    use kiln::compile::{CompileOptions, Emit, compile, parse_target, write_files};
    let opts = CompileOptions {
        emit: Emit::C,
        target: parse_target("host").map_err(|e| e.to_string())?,
        prefix: prefix.into(),
        static_arena: false,
    };
    let out = compile(g, &opts, "test").map_err(|e| e.to_string())?;
    write_files(dir, &out.files, &[]).map_err(|e| e.to_string())?;
    std::fs::write(dir.join("harness.c"), harness_source(g, prefix)).map_err(|e| e.to_string())?;
    let run = |args: Vec<std::ffi::OsString>| -> Result<(), String> {
        let st = std::process::Command::new("cc")
            .current_dir(dir)
            .args(&args)
            .output()
            .map_err(|e| format!("cannot run cc: {e}"))?;
        if st.status.success() {
            Ok(())
        } else {
            Err(format!("cc failed: {}", String::from_utf8_lossy(&st.stderr)))
        }
    };
    let os = |v: &[&str]| v.iter().map(std::ffi::OsString::from).collect::<Vec<_>>();
    let mut a = os(&[
        "-std=c99",
        "-O1",
        "-Wall",
        "-Wextra",
        "-Werror",
        "-pedantic",
        "-c",
        &format!("{prefix}.c"),
        "-o",
        "model.o",
    ]);
    a.extend(os(extra));
    run(a)?;
    let mut b = os(&[
        "-std=c11",
        "-O1",
        "-Wall",
        "-Wextra",
        "-Werror",
        "harness.c",
        "model.o",
        "-lm",
        "-o",
        "harness",
    ]);
    b.extend(os(extra));
    run(b)?;
    Ok(NativeExe {
        exe: dir.join("harness"),
        dir: dir.to_path_buf(),
        runner: None,
        runner_args: &[],
    })
}

/// The same graph with every integer value that feeds a Dequantize made an output too, so
/// the integer part of a quantized graph can be compared bit for bit.
pub fn expose_integers(g: &kiln_ir::Graph) -> kiln_ir::Graph {
    let mut g = g.clone();
    let mut outs: Vec<kiln_ir::ValueId> = g.outputs().to_vec();
    for n in g.topo_order().expect("acyclic") {
        let node = g.node(n);
        if matches!(node.op, kiln_ir::Op::Dequantize { .. }) && !outs.contains(&node.inputs[0]) {
            outs.push(node.inputs[0]);
        }
    }
    g.set_outputs(outs);
    g
}

/// Builds, next to an executable made by [`build_c`] or [`build_native`], a second program
/// that calls `<prefix>_run_int` on raw int8 files (arguments: inputs, then outputs), linked
/// against the same model code (`model.o` for C, `lib<prefix>.a` for native).
pub fn build_int_harness(built: &NativeExe, g: &kiln_ir::Graph, prefix: &str, native: bool) -> Result<PathBuf, String> {
    let up = prefix.to_ascii_uppercase();
    let (ni, no) = (g.inputs().len(), g.outputs().len());
    let int = kiln_backends::header::int_boundary(g).ok_or("the graph has no integer boundary")?;
    let ty = |q: &kiln_backends::header::QPort| kiln_backends::header::c_type(q.scalar);
    let mut c = format!("#include \"{prefix}.h\"\n#include <stdio.h>\n#include <stdlib.h>\n");
    c.push_str("static void io(const char *p, void *b, size_t n, int w) {\n  FILE *f = fopen(p, w ? \"wb\" : \"rb\");\n  if (!f || (w ? fwrite(b, 1, n, f) : fread(b, 1, n, f)) != n) { fprintf(stderr, \"io %s\\n\", p); exit(2); }\n  fclose(f);\n}\n");
    for (i, q) in int.inputs.iter().enumerate() {
        c.push_str(&format!("static {} in{i}[{up}_INPUT{i}_COUNT + 1];\n", ty(q)));
    }
    for (i, q) in int.outputs.iter().enumerate() {
        c.push_str(&format!("static {} out{i}[{up}_OUTPUT{i}_COUNT + 1];\n", ty(q)));
    }
    c.push_str(&format!(
        "static _Alignas(16) unsigned char arena[{up}_ARENA_SIZE + 16];\nint main(int argc, char **argv) {{\n  if (argc != {}) return 3;\n",
        1 + ni + no
    ));
    for i in 0..ni {
        c.push_str(&format!(
            "  io(argv[{}], in{i}, sizeof in{i}[0] * {up}_INPUT{i}_COUNT, 0);\n",
            1 + i
        ));
    }
    let mut args: Vec<String> = (0..ni).map(|i| format!("in{i}")).collect();
    args.extend((0..no).map(|i| format!("out{i}")));
    args.push("arena".into());
    c.push_str(&format!("  if ({prefix}_run_int({})) return 10;\n", args.join(", ")));
    for i in 0..no {
        c.push_str(&format!(
            "  io(argv[{}], out{i}, sizeof out{i}[0] * {up}_OUTPUT{i}_COUNT, 1);\n",
            1 + ni + i
        ));
    }
    c.push_str("  return 0;\n}\n");
    let dir = &built.dir;
    std::fs::write(dir.join("harness_int.c"), c).map_err(|e| e.to_string())?;
    let exe = dir.join("harness_int");
    let mut cmd = std::process::Command::new("cc");
    cmd.current_dir(dir)
        .args(["-std=c11", "-O1", "-Wall", "-Wextra", "-Werror", "harness_int.c"]);
    if native {
        cmd.arg("-L.").arg(format!("-l{prefix}"));
    } else {
        cmd.arg("model.o");
    }
    let st = cmd
        .args(["-lm", "-o", "harness_int"])
        .output()
        .map_err(|e| e.to_string())?;
    if !st.status.success() {
        return Err(format!("cc failed: {}", String::from_utf8_lossy(&st.stderr)));
    }
    Ok(exe)
}

/// Every hybrid node of `g` on its own: a graph whose inputs are those nodes' activation
/// inputs and whose outputs are their results, and the values the evaluator computes for
/// those inputs on each of `sets`.
pub fn islands(g: &kiln_ir::Graph, sets: &[Vec<Tensor>]) -> (kiln_ir::Graph, Vec<Vec<Tensor>>) {
    let nodes: Vec<_> = g
        .topo_order()
        .unwrap()
        .into_iter()
        .filter(|&n| {
            matches!(
                g.node(n).op,
                kiln_ir::Op::DynConv { .. } | kiln_ir::Op::DynMatMul { .. }
            )
        })
        .collect();
    let mut probe = g.clone();
    probe.set_outputs(nodes.iter().map(|&n| g.node(n).inputs[0]).collect());
    let values = sets.iter().map(|s| kiln_ir::eval::run(&probe, s).unwrap()).collect();
    let mut isl = kiln_ir::Graph::new("islands");
    for (i, &n) in nodes.iter().enumerate() {
        let node = g.node(n);
        let x = isl.add_input(&format!("x{i}"), g.value(node.inputs[0]).ty.clone());
        let w = isl.add_const(
            &format!("w{i}"),
            g.const_value(node.inputs[1]).unwrap().as_ref().clone(),
        );
        let (_, o) = isl
            .add_node(&format!("n{i}"), node.op.clone(), vec![x, w], &[])
            .unwrap();
        isl.add_output(o[0]);
    }
    (isl, values)
}

/// Builds `g` as C, as a native object and as Rust source (crate binary `tag`) under `dir`,
/// runs each on every input set and returns a line per backend whose outputs are not the
/// evaluator's bytes (empty when all three match exactly). `dir` is removed afterwards.
pub fn bit_exact_on_every_backend(
    g: &kiln_ir::Graph,
    sets: &[Vec<Tensor>],
    tag: &str,
    dir: &std::path::Path,
) -> Vec<String> {
    bit_exact_on_every_backend_many(&[(tag, g, sets)], dir)
}

/// [`bit_exact_on_every_backend`] for several models, their Rust source in one crate (one
/// cargo build); failure lines start with the model's tag.
pub fn bit_exact_on_every_backend_many(
    models: &[(&str, &kiln_ir::Graph, &[Vec<Tensor>])],
    dir: &std::path::Path,
) -> Vec<String> {
    let list: Vec<(&str, &kiln_ir::Graph)> = models.iter().map(|&(t, g, _)| (t, g)).collect();
    let rust = build_rust(&list, &dir.join("rust"), false);
    let mut failures = Vec::new();
    for (k, &(tag, g, sets)) in models.iter().enumerate() {
        let results = [
            (
                "C",
                build_c(g, "model", &dir.join(tag).join("c"), &[]).and_then(|e| same_bytes(&e, g, sets)),
            ),
            (
                "native",
                build_native(g, "model", &dir.join(tag).join("n")).and_then(|e| same_bytes(&e, g, sets)),
            ),
            (
                "Rust",
                match &rust {
                    Ok(v) => same_bytes(&v[k], g, sets),
                    Err(e) => Err(e.clone()),
                },
            ),
        ];
        for (label, res) in results {
            if let Err(e) = res {
                failures.push(format!("{tag} {label}: {e}"));
            }
        }
    }
    let _ = std::fs::remove_dir_all(dir);
    failures
}

/// Runs `exe` on every input set: an error names the first byte that is not the evaluator's.
fn same_bytes(exe: &NativeExe, g: &kiln_ir::Graph, sets: &[Vec<Tensor>]) -> Result<(), String> {
    for (k, inputs) in sets.iter().enumerate() {
        let want = kiln_ir::eval::run(g, inputs).map_err(|e| e.to_string())?;
        for (i, (got, w)) in exe.run(g, inputs)?.iter().zip(&want).enumerate() {
            if got.data.to_le_bytes() != w.data.to_le_bytes() {
                let (a, b) = (got.to_f64_vec(), w.to_f64_vec());
                let e = a
                    .iter()
                    .zip(&b)
                    .position(|(x, y)| x.to_bits() != y.to_bits())
                    .unwrap_or(0);
                return Err(format!(
                    "set {k}, output {i}, element {e}: {} vs {}",
                    a.get(e).copied().unwrap_or(f64::NAN),
                    b.get(e).copied().unwrap_or(f64::NAN)
                ));
            }
        }
    }
    Ok(())
}

// ---- Rust source builds: many models in one crate, one cargo build ----

/// Compiles each `(prefix, graph)` to Rust source and builds them all into one binary with
/// cargo (`RUSTFLAGS=-D warnings`, release with overflow checks, target dir shared under
/// `target/rust-source`). The binary picks the model from the name it is run as: each
/// returned executable is a symlink `<dir>/<prefix>/<prefix>` (or `<prefix>_int`, which calls
/// `run_int` on int8 buffers, when `int` is set and the model has that entry point).
pub fn build_rust(
    models: &[(&str, &kiln_ir::Graph)],
    dir: &std::path::Path,
    int: bool,
) -> Result<Vec<NativeExe>, String> {
    use kiln::compile::{CompileOptions, Emit, compile, parse_target};
    let src = dir.join("src");
    std::fs::create_dir_all(&src).map_err(|e| e.to_string())?;
    let rt = repo().join("runtime");
    std::fs::write(
        dir.join("Cargo.toml"),
        format!(
            "[package]\nname = \"kiln-rust-source-check\"\nversion = \"0.0.0\"\nedition = \"2024\"\npublish = false\n\n[dependencies]\nkiln-runtime = {{ path = {:?} }}\nbytemuck = \"1\"\n\n[profile.release]\noverflow-checks = true\n\n[workspace]\n",
            rt.display().to_string()
        ),
    )
    .map_err(|e| e.to_string())?;
    let _ = std::fs::copy(repo().join("Cargo.lock"), dir.join("Cargo.lock"));
    let mut main = String::from(
        "use std::convert::TryInto;\n\nfn load<T: bytemuck::Pod>(p: &str) -> Vec<T> {\n    let b = std::fs::read(p).expect(p);\n    let mut v = vec![T::zeroed(); b.len() / std::mem::size_of::<T>()];\n    bytemuck::cast_slice_mut::<T, u8>(&mut v).copy_from_slice(&b);\n    v\n}\n\nfn save<T: bytemuck::Pod>(p: &str, v: &[T]) {\n    std::fs::write(p, bytemuck::cast_slice::<T, u8>(v)).expect(p);\n}\n\n",
    );
    let mut arms = String::new();
    let mut wanted = Vec::new();
    for (prefix, g) in models {
        // `m4_` builds take the Cortex-M kernels and layouts, run here in their portable form
        let target = if prefix.starts_with("m4_") { "cortex-m4" } else { "host" };
        let opts = CompileOptions {
            emit: Emit::RustSource,
            target: parse_target(target).map_err(|e| e.to_string())?,
            prefix: prefix.to_string(),
            static_arena: false,
        };
        let out = compile(g, &opts, "test").map_err(|e| format!("{prefix}: {e}"))?;
        for (name, bytes) in &out.files {
            std::fs::write(src.join(name), bytes).map_err(|e| e.to_string())?;
        }
        main.push_str(&format!("include!(\"{prefix}.rs\");\n"));
        let has_int = int && kiln_backends::header::int_boundary(g).is_some();
        for (entry, suffix) in [("run", ""), ("run_int", "_int")] {
            if entry == "run_int" && !has_int {
                continue;
            }
            let mut body = String::new();
            let (ni, no) = (g.inputs().len(), g.outputs().len());
            // `run` takes the graph's types, `run_int` its integer ports' (int8 or int16)
            let api = kiln_backends::header::int_boundary(g);
            let ty = |v: kiln_ir::ValueId, port: Option<&kiln_backends::header::QPort>| {
                let s = match (suffix.is_empty(), port) {
                    (false, Some(q)) => q.scalar,
                    _ => g.value(v).ty.dtype.scalar,
                };
                kiln_backends::header::rust_type(s)
            };
            for (i, &v) in g.inputs().iter().enumerate() {
                let port = api.as_ref().map(|a| &a.inputs[i]);
                body.push_str(&format!("        let in{i}: Vec<{}> = load(&a[{i}]);\n", ty(v, port)));
            }
            for (i, &v) in g.outputs().iter().enumerate() {
                let port = api.as_ref().map(|a| &a.outputs[i]);
                body.push_str(&format!(
                    "        let mut out{i}: Vec<{}> = vec![Default::default(); {prefix}::OUTPUT{i}_COUNT];\n",
                    ty(v, port)
                ));
            }
            let mut args: Vec<String> = (0..ni).map(|i| format!("in{i}[..].try_into().unwrap()")).collect();
            args.extend((0..no).map(|i| format!("(&mut out{i}[..]).try_into().unwrap()")));
            args.push("&mut arena".into());
            body.push_str(&format!(
                "        let mut arena = Box::new({prefix}::Arena::new());\n        {prefix}::{entry}({}).unwrap();\n",
                args.join(", ")
            ));
            for i in 0..no {
                body.push_str(&format!("        save(&a[{}], &out{i});\n", ni + i));
            }
            arms.push_str(&format!("        \"{prefix}{suffix}\" => {{\n{body}        }}\n"));
            wanted.push(format!("{prefix}{suffix}"));
        }
    }
    main.push_str(&format!(
        "\nfn main() {{\n    let argv: Vec<String> = std::env::args().collect();\n    let name = std::path::Path::new(&argv[0]).file_name().unwrap().to_string_lossy().into_owned();\n    let a = &argv[1..];\n    match name.as_str() {{\n{arms}        other => panic!(\"unknown model {{other}}\"),\n    }}\n}}\n"
    ));
    std::fs::write(src.join("main.rs"), main).map_err(|e| e.to_string())?;
    let target = repo().join("target/rust-source");
    // One crate name, one shared target directory: parallel tests must not copy each
    // other's binary between the build and the copy.
    static BUILD: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let one_at_a_time = BUILD.lock().unwrap_or_else(|e| e.into_inner());
    let st = std::process::Command::new(env!("CARGO"))
        .current_dir(dir)
        .args(["build", "--release", "--quiet", "--offline"])
        .env("CARGO_TARGET_DIR", &target)
        .env("RUSTFLAGS", "-D warnings")
        .output()
        .map_err(|e| format!("cannot run cargo: {e}"))?;
    if !st.status.success() {
        return Err(format!("cargo build failed:\n{}", String::from_utf8_lossy(&st.stderr)));
    }
    let bin = dir.join("kiln-rust-source-check");
    std::fs::copy(target.join("release/kiln-rust-source-check"), &bin).map_err(|e| e.to_string())?;
    drop(one_at_a_time);
    wanted
        .into_iter()
        .map(|name| {
            let d = dir.join(&name);
            std::fs::create_dir_all(&d).map_err(|e| e.to_string())?;
            let exe = d.join(&name);
            let _ = std::fs::remove_file(&exe);
            std::os::unix::fs::symlink(&bin, &exe).map_err(|e| e.to_string())?;
            Ok(NativeExe {
                exe,
                dir: d,
                runner: None,
                runner_args: &[],
            })
        })
        .collect()
}

// ---- the shipped models ----

/// The folders of `tests/models/` that hold a `model.onnx`, sorted.
pub fn model_dirs() -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(repo().join("tests/models"))
        .expect("tests/models")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("model.onnx").exists())
        .collect();
    dirs.sort();
    dirs
}

/// Pinned input shapes from a model folder's `case.toml` (`input_shape = "x=1,3,48,192"`).
pub fn case_import_options(dir: &std::path::Path) -> kiln::ImportOptions {
    let mut o = kiln::ImportOptions::default();
    if let Ok(t) = std::fs::read_to_string(dir.join("case.toml"))
        && let Some(line) = t.lines().find(|l| l.trim_start().starts_with("input_shape"))
        && let Some((name, dims)) = line.split('"').nth(1).and_then(|s| s.split_once('='))
    {
        o.input_shapes.insert(
            name.to_string(),
            dims.split(',').filter_map(|d| d.trim().parse().ok()).collect(),
        );
    }
    o
}

/// A model folder's reference input sets (`ref/test_data_set_K/input_I.npy`), in order.
pub fn ref_input_sets(dir: &std::path::Path, inputs: usize) -> Vec<Vec<Tensor>> {
    (0..)
        .map(|s| dir.join("ref").join(format!("test_data_set_{s}")))
        .take_while(|d| d.is_dir())
        .map(|d| {
            (0..inputs)
                .map(|i| kiln::npy::read(&d.join(format!("input_{i}.npy"))).expect("reference input"))
                .collect()
        })
        .collect()
}

/// Held-out accuracy of a digits CNN build on `tests/models/digits_cnn/eval` (360 images),
/// counting the first largest output as the answer (as numpy's argmax; int8 probabilities
/// tie often).
pub fn digits_accuracy(g: &kiln_ir::Graph) -> f64 {
    let dir = repo().join("tests/models/digits_cnn");
    let x = kiln::npy::read(&dir.join("eval/input_0.npy")).unwrap().to_f32_vec();
    let labels = kiln::npy::read(&dir.join("eval/labels.npy")).unwrap().to_i64_vec();
    let ok = (labels.iter().enumerate())
        .filter(|&(i, &l)| {
            let t = Tensor::from_vec(vec![1, 1, 8, 8], x[i * 64..(i + 1) * 64].to_vec());
            let y = kiln_ir::eval::run(g, &[t]).unwrap()[0].to_f64_vec();
            (0..y.len()).fold(0, |b, i| if y[i] > y[b] { i } else { b }) as i64 == l
        })
        .count();
    ok as f64 / labels.len() as f64
}

/// A model loaded with default options and the standard pipeline.
pub fn load_model(path: &std::path::Path) -> kiln::Model {
    kiln::load(path, &Default::default(), &kiln::PipelineOptions::default(), |_, _| {})
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Pseudo-random values in [-scale, scale).
pub fn noise(seed: u32, n: usize, scale: f32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(2_654_435_761).wrapping_add(12345);
    (0..n)
        .map(|_| {
            s = s.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            ((s >> 8) as f32 / (1u32 << 24) as f32 * 2.0 - 1.0) * scale
        })
        .collect()
}

/// One recurrent layer (seq 5, batch 2, input 6, hidden 8) with random weights, its initial
/// states as graph inputs, and one set of inputs (`seed` varies them).
pub fn recurrent_layer(
    kind: kiln_ir::op::RnnKind,
    direction: kiln_ir::op::RnnDirection,
    batch_major: bool,
    seed: u32,
) -> (kiln_ir::Graph, Vec<Tensor>) {
    use kiln_ir::op::{Activation, Op, Rnn, RnnKind};
    use kiln_ir::{DType, Graph, Scalar, TensorType};
    let (seq, batch, isz, h) = (5, 2, 6, 8);
    let dirs = direction.count();
    let gates = match kind {
        RnnKind::Lstm { .. } => 4,
        RnnKind::Gru { .. } => 3,
        RnnKind::Rnn => 1,
    };
    let lstm = gates == 4;
    let mut g = Graph::new("rnn");
    let f = |shape: Vec<usize>| TensorType::new(DType::plain(Scalar::F32), shape);
    let xs = if batch_major {
        vec![batch, seq, isz]
    } else {
        vec![seq, batch, isz]
    };
    let ss = if batch_major {
        vec![batch, dirs, h]
    } else {
        vec![dirs, batch, h]
    };
    let x = g.add_input("x", f(xs.clone()));
    let h0 = g.add_input("h0", f(ss.clone()));
    let c = |g: &mut Graph, name: &str, shape: Vec<usize>, s: u32, scale: f32| {
        let n = shape.iter().product();
        g.add_const(name, Tensor::from_vec(shape, noise(s, n, scale)))
    };
    let w = c(&mut g, "w", vec![dirs, gates * h, isz], 1, 0.6);
    let r = c(&mut g, "r", vec![dirs, gates * h, h], 2, 0.6);
    let b = c(&mut g, "b", vec![dirs, 2 * gates * h], 3, 0.3);
    let mut ins = vec![x, w, r, b, h0];
    let numel = |s: &[usize]| s.iter().product::<usize>();
    let mut inputs = vec![
        Tensor::from_vec(xs.clone(), noise(4 + seed, numel(&xs), 1.0)),
        Tensor::from_vec(ss.clone(), noise(5 + seed, numel(&ss), 0.5)),
    ];
    if lstm {
        ins.push(g.add_input("c0", f(ss.clone())));
        inputs.push(Tensor::from_vec(ss.clone(), noise(6 + seed, numel(&ss), 0.5)));
    }
    let per_dir: &[Activation] = match gates {
        4 => &[Activation::Sigmoid, Activation::Tanh, Activation::Tanh],
        3 => &[Activation::Sigmoid, Activation::Tanh],
        _ => &[Activation::Tanh],
    };
    let op = Op::Rnn(Rnn {
        kind,
        hidden: h,
        direction,
        activations: per_dir.repeat(dirs),
        clip: None,
        batch_major,
    });
    let names: &[&str] = if lstm { &["y", "yh", "yc"] } else { &["y", "yh"] };
    let (_, outs) = g.add_node("layer", op, ins, names).unwrap();
    for o in outs {
        g.add_output(o);
    }
    (g, inputs)
}

/// `dir/<which>/test_data_set_K/{input_0,output_0}.npy` pairs (the one-input int8
/// references of the MLPerf Tiny models: `ref_int8/`, `ref_int8_onnx/`).
pub fn int8_sets(dir: &std::path::Path, which: &str) -> Vec<(Tensor, Tensor)> {
    (0..)
        .map(|k| dir.join(which).join(format!("test_data_set_{k}")))
        .take_while(|d| d.is_dir())
        .map(|d| {
            (
                kiln::npy::read(&d.join("input_0.npy")).unwrap(),
                kiln::npy::read(&d.join("output_0.npy")).unwrap(),
            )
        })
        .collect()
}

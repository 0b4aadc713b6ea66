//! The generated API, shared by every backend: a C header and Rust bindings describing
//! `<prefix>_run`, the arena size and alignment, and each input's and output's shape.

use crate::namer::Namer;
use kiln_ir::plan::MemoryPlan;
use kiln_ir::{Graph, NodeId, Op, Scalar, ValueId};
use std::fmt::Write;

/// Everything a header needs to know about one graph input or output.
pub struct Port {
    pub name: String,
    pub ident: String,
    pub scalar: Scalar,
    pub shape: Vec<usize>,
}

/// One side of the integer entry point: the boundary node (a Quantize of a graph input, or
/// a Dequantize producing a graph output), the int8 value it converts, and its parameters.
pub struct QPort {
    pub node: NodeId,
    pub value: ValueId,
    /// The buffer's element type: int8, or int16 at a 16x8 layer.
    pub scalar: Scalar,
    pub scale: f32,
    pub zero_point: i32,
}

/// `<prefix>_run_int`: offered when every graph input is read only by one Quantize and every
/// graph output is written by a Dequantize that nothing else reads.
pub struct IntApi {
    pub inputs: Vec<QPort>,
    pub outputs: Vec<QPort>,
}

/// The integer boundary of a quantized graph, if it has a complete one.
pub fn int_boundary(g: &Graph) -> Option<IntApi> {
    let mut inputs = Vec::new();
    for &v in g.inputs() {
        let cons = g.consumers(v);
        let [n] = cons.as_slice() else { return None };
        let Op::Quantize {
            to: to @ (Scalar::I8 | Scalar::I16),
            scale,
            zero_point,
        } = g.node(*n).op
        else {
            return None;
        };
        if g.is_output(v) {
            return None;
        }
        inputs.push(QPort {
            node: *n,
            value: g.node(*n).outputs[0],
            scalar: to,
            scale,
            zero_point,
        });
    }
    let mut outputs = Vec::new();
    for &v in g.outputs() {
        let n = g.producer(v)?;
        let Op::Dequantize { scale, zero_point } = g.node(n).op else {
            return None;
        };
        let q = g.node(n).inputs[0];
        if !g.consumers(v).is_empty()
            || g.outputs().iter().filter(|&&o| o == v).count() > 1
            || !matches!(g.value(q).ty.dtype.scalar, Scalar::I8 | Scalar::I16)
        {
            return None;
        }
        outputs.push(QPort {
            node: n,
            value: q,
            scalar: g.value(q).ty.dtype.scalar,
            scale,
            zero_point,
        });
    }
    (!inputs.is_empty() || !outputs.is_empty()).then_some(IntApi { inputs, outputs })
}

/// The model's calling interface.
pub struct Api {
    pub prefix: String,
    pub source: String,
    pub arena_size: usize,
    pub arena_align: usize,
    pub inputs: Vec<Port>,
    pub outputs: Vec<Port>,
    /// The integer entry point, for fully quantized models.
    pub int: Option<IntApi>,
    /// For native objects, the CPU features the code assumes (checked by `<prefix>_run`).
    pub cpu_features: Option<Vec<String>>,
    /// Whose integer arithmetic the model reproduces, for models with integer ops.
    pub numerics: Option<kiln_ir::op::Numerics>,
    /// C source: the static-arena entry points (`Some(true)`: switched on in the header).
    pub static_arena: Option<bool>,
}

/// The integer numerics of `g`: `None` without integer rescales, `Tflite` when any op
/// rounds as TFLite does, else `Onnx`.
fn numerics(g: &Graph) -> Option<kiln_ir::op::Numerics> {
    use kiln_ir::op::Numerics;
    let mut found = None;
    for n in g.node_ids() {
        let here = match &g.node(n).op {
            Op::QConv { q, .. } | Op::QMatMul { q } | Op::QBlockMatMul { q, .. } => q.numerics,
            Op::QAdd(a) => a.numerics,
            Op::Pool(p) if p.numerics == Numerics::Tflite => p.numerics,
            Op::QMul(m) => m.numerics,
            Op::QPRelu(p) => p.numerics,
            Op::QSoftmax { .. } | Op::Requant { .. } => Numerics::Onnx,
            _ => continue,
        };
        if found != Some(Numerics::Tflite) {
            found = Some(here);
        }
    }
    found
}

impl Api {
    pub fn new(g: &Graph, plan: &MemoryPlan, prefix: &str, source: &str) -> Api {
        let mut namer = Namer::default();
        let mut port = |v| {
            let val = g.value(v);
            Port {
                name: val.name.clone(),
                ident: namer.name(&val.name),
                scalar: val.ty.dtype.scalar,
                shape: val.ty.shape.clone(),
            }
        };
        let inputs = g.inputs().iter().map(|&v| port(v)).collect();
        let outputs = g.outputs().iter().map(|&v| port(v)).collect();
        Api {
            prefix: prefix.to_string(),
            source: source.to_string(),
            arena_size: plan.arena_size,
            arena_align: plan.align,
            inputs,
            outputs,
            int: int_boundary(g),
            cpu_features: None,
            numerics: numerics(g),
            static_arena: None,
        }
    }
}

pub fn c_type(s: Scalar) -> &'static str {
    match s {
        Scalar::F32 => "float",
        Scalar::F64 => "double",
        Scalar::F16 => "uint16_t",
        Scalar::I8 => "int8_t",
        Scalar::U8 => "uint8_t",
        Scalar::I16 => "int16_t",
        Scalar::U16 => "uint16_t",
        Scalar::I32 => "int32_t",
        Scalar::U32 => "uint32_t",
        Scalar::I64 => "int64_t",
        Scalar::U64 => "uint64_t",
        Scalar::Bool => "uint8_t",
    }
}

pub fn rust_type(s: Scalar) -> &'static str {
    match s {
        Scalar::F32 => "f32",
        Scalar::F64 => "f64",
        Scalar::F16 | Scalar::U16 => "u16",
        Scalar::I8 => "i8",
        Scalar::U8 | Scalar::Bool => "u8",
        Scalar::I16 => "i16",
        Scalar::I32 => "i32",
        Scalar::U32 => "u32",
        Scalar::I64 => "i64",
        Scalar::U64 => "u64",
    }
}

fn dims(shape: &[usize]) -> String {
    let v: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    v.join(", ")
}

/// `<prefix>.h`.
pub fn c_header(api: &Api) -> String {
    let up = api.prefix.to_ascii_uppercase();
    let mut s = String::new();
    let _ = writeln!(
        s,
        "/* {}.h: generated by Kiln {} from {}. Do not edit. */",
        api.prefix,
        env!("CARGO_PKG_VERSION"),
        crate::text::comment(&api.source)
    );
    let _ = writeln!(
        s,
        "#ifndef {up}_H\n#define {up}_H\n\n#include <stddef.h>\n#include <stdint.h>\n\n#ifdef __cplusplus\nextern \"C\" {{\n#endif\n"
    );
    let _ = writeln!(
        s,
        "/* Scratch memory for every intermediate tensor: the caller provides ARENA_SIZE bytes"
    );
    let _ = writeln!(s, "   aligned to ARENA_ALIGN, and may reuse them between calls. */");
    let _ = writeln!(
        s,
        "#define {up}_ARENA_SIZE {}u\n#define {up}_ARENA_ALIGN {}u\n",
        api.arena_size, api.arena_align
    );
    if let Some(n) = api.numerics {
        let _ = writeln!(
            s,
            "/* Integer arithmetic reproduced bit for bit: \"onnx\" (ONNX Runtime) or \"tflite\"\n   (TFLite's reference kernels, TFLite Micro). */\n#define {up}_NUMERICS \"{}\"\n",
            n.name()
        );
    }
    for (kind, ports) in [("INPUT", &api.inputs), ("OUTPUT", &api.outputs)] {
        for (i, p) in ports.iter().enumerate() {
            let _ = writeln!(
                s,
                "/* {} {i} `{}`: {} [{}] */",
                kind.to_ascii_lowercase(),
                crate::text::comment(&p.name),
                c_type(p.scalar),
                dims(&p.shape)
            );
            let _ = writeln!(s, "#define {up}_{kind}{i}_RANK {}", p.shape.len());
            let _ = writeln!(s, "#define {up}_{kind}{i}_SHAPE {{{}}}", dims(&p.shape));
            let _ = writeln!(s, "#define {up}_{kind}{i}_COUNT {}u", p.shape.iter().product::<usize>());
            if let Some(q) = api.int.as_ref().map(|int| {
                if kind == "INPUT" {
                    &int.inputs[i]
                } else {
                    &int.outputs[i]
                }
            }) {
                let _ = writeln!(s, "#define {up}_{kind}{i}_SCALE {:e}f", q.scale);
                let _ = writeln!(s, "#define {up}_{kind}{i}_ZERO_POINT {}", q.zero_point);
            }
            s.push('\n');
        }
    }
    if let Some(f) = &api.cpu_features {
        let _ = writeln!(
            s,
            "/* CPU features the object assumes (checked once, on the first run). */\n#define {up}_CPU_FEATURES \"{}\"\n#define {up}_ERR_CPU ({})\n",
            f.join(","),
            crate::cranelift::cpu::ERR_CPU
        );
    }
    let mut params: Vec<String> = api
        .inputs
        .iter()
        .map(|p| format!("const {} *{}", c_type(p.scalar), p.ident))
        .collect();
    params.extend(api.outputs.iter().map(|p| format!("{} *{}", c_type(p.scalar), p.ident)));
    params.push("void *arena".into());
    let _ = writeln!(
        s,
        "/* Runs the model: reads the inputs, writes the outputs (row-major, COUNT elements each),"
    );
    let _ = writeln!(
        s,
        "   uses `arena` for everything else. Returns 0 on success{}. Buffers must not overlap. */",
        if api.cpu_features.is_some() {
            format!(", {up}_ERR_CPU on a CPU without {up}_CPU_FEATURES")
        } else {
            String::new()
        }
    );
    let _ = writeln!(s, "int {}_run({});\n", api.prefix, params.join(", "));
    if let Some(int) = &api.int {
        let mut ip: Vec<String> = api
            .inputs
            .iter()
            .zip(&int.inputs)
            .map(|(p, q)| format!("const {} *{}", c_type(q.scalar), p.ident))
            .collect();
        ip.extend(
            api.outputs
                .iter()
                .zip(&int.outputs)
                .map(|(p, q)| format!("{} *{}", c_type(q.scalar), p.ident)),
        );
        ip.push("void *arena".into());
        let _ = writeln!(
            s,
            "/* The same model on integer buffers (int8, int16 at a 16x8 layer): input =\n   round(x / SCALE) + ZERO_POINT, output x = (q - ZERO_POINT) * SCALE, with each port's\n   constants above. */"
        );
        let _ = writeln!(s, "int {}_run_int({});\n", api.prefix, ip.join(", "));
    }
    if let Some(on) = api.static_arena {
        s.push_str(&static_arena_decls(api, on));
    }
    let _ = writeln!(s, "#ifdef __cplusplus\n}}\n#endif\n\n#endif /* {up}_H */");
    s
}

/// The buffer parameters of `<prefix>_run` (or with `int`, `_run_int`), without the arena.
fn static_params(api: &Api, int: bool) -> String {
    let q = api.int.as_ref().filter(|_| int);
    let mut v: Vec<String> = Vec::new();
    for (i, p) in api.inputs.iter().enumerate() {
        let t = q.map_or(p.scalar, |q| q.inputs[i].scalar);
        v.push(format!("const {} *{}", c_type(t), p.ident));
    }
    for (i, p) in api.outputs.iter().enumerate() {
        let t = q.map_or(p.scalar, |q| q.outputs[i].scalar);
        v.push(format!("{} *{}", c_type(t), p.ident));
    }
    v.join(", ")
}

/// The C definitions behind [`static_arena_decls`], for the end of `<prefix>.c`: the arena
/// (aligned with the GNU attribute where the compiler has it, else by a union with the
/// widest scalar types) and the wrappers that pass it.
pub fn c_static_arena_defs(api: &Api) -> String {
    let (p, up) = (&api.prefix, api.prefix.to_ascii_uppercase());
    let size = api.arena_size.max(1);
    let mut s = format!(
        "\n/* The static arena (see {p}.h). */\n#if defined({up}_SHARED_ARENA)\n#define {up}_ARENA_PTR_ ((void *){up}_SHARED_ARENA)\n"
    );
    let _ = writeln!(s, "#elif defined({up}_STATIC_ARENA)\n#if defined(__GNUC__)");
    let _ = writeln!(
        s,
        "static unsigned char {p}_arena_[{size}] __attribute__((aligned({})));",
        api.arena_align
    );
    let _ = writeln!(s, "#define {up}_ARENA_PTR_ ((void *){p}_arena_)\n#else");
    let _ = writeln!(
        s,
        "static union {{ unsigned char b[{size}]; long double f; long long i; void *p; }} {p}_arena_;"
    );
    let _ = writeln!(
        s,
        "#define {up}_ARENA_PTR_ ((void *){p}_arena_.b)\n#endif\n#endif\n#ifdef {up}_ARENA_PTR_"
    );
    let names: Vec<&str> = (api.inputs.iter().chain(&api.outputs))
        .map(|q| q.ident.as_str())
        .collect();
    let params = |int| static_params(api, int);
    let args = names.join(", ");
    let _ = writeln!(
        s,
        "int {p}_run_static({}) {{\n    return {p}_run({args}, {up}_ARENA_PTR_);\n}}",
        params(false)
    );
    if api.int.is_some() {
        let _ = writeln!(
            s,
            "int {p}_run_int_static({}) {{\n    return {p}_run_int({args}, {up}_ARENA_PTR_);\n}}",
            params(true)
        );
    }
    s.push_str("#endif\n");
    s
}

/// The entry points without an arena parameter, declared when `<PREFIX>_STATIC_ARENA` or
/// `<PREFIX>_SHARED_ARENA` is defined (the C backend defines them, see `c::static_arena`).
fn static_arena_decls(api: &Api, on: bool) -> String {
    let (p, up) = (&api.prefix, api.prefix.to_ascii_uppercase());
    let mut s = format!(
        "/* A static arena, opt in: with {up}_STATIC_ARENA defined{}, {p}.c\n   owns an arena of {up}_ARENA_SIZE bytes and {p}_run_static() runs on it. Models that\n   never run at the same time can share one arena instead: define {up}_SHARED_ARENA as\n   the name of an unsigned char array the application defines once, at least as large\n   as the largest ARENA_SIZE among them and aligned to the largest ARENA_ALIGN. */\n",
        if on {
            " (kiln compile --static-arena: below)"
        } else {
            ""
        }
    );
    if on {
        let _ = writeln!(s, "#ifndef {up}_STATIC_ARENA\n#define {up}_STATIC_ARENA 1\n#endif");
    }
    let _ = writeln!(s, "#if defined({up}_STATIC_ARENA) || defined({up}_SHARED_ARENA)");
    let _ = writeln!(
        s,
        "#if defined({up}_SHARED_ARENA)\nextern unsigned char {up}_SHARED_ARENA[];\n#endif"
    );
    let ports = |int| static_params(api, int);
    let _ = writeln!(s, "int {p}_run_static({});", ports(false));
    if api.int.is_some() {
        let _ = writeln!(s, "int {p}_run_int_static({});", ports(true));
    }
    let _ = writeln!(s, "#endif\n");
    s
}

/// `<prefix>.rs`: `extern "C"` bindings and a safe wrapper in `pub mod <prefix>`.
pub fn rust_bindings(api: &Api) -> String {
    let p = &api.prefix;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "// {p}.rs: generated by Kiln {} from {}. Do not edit.",
        env!("CARGO_PKG_VERSION"),
        crate::text::comment(&api.source)
    );
    let _ = writeln!(
        s,
        "// Link the `{p}` static library (lib{p}.a) and `include!` this file.\n"
    );
    let _ = writeln!(s, "#[allow(dead_code)]\npub mod {p} {{");
    s.push_str(&rust_api_items(api));
    if let Some(f) = &api.cpu_features {
        let _ = writeln!(
            s,
            "    /// CPU features the object assumes; `run` fails with `ERR_CPU` on a CPU without one.\n    pub const CPU_FEATURES: &str = \"{}\";\n    /// The status `run` fails with on such a CPU.\n    pub const ERR_CPU: i32 = {};\n",
            f.join(","),
            crate::cranelift::cpu::ERR_CPU
        );
    }
    let mut raw: Vec<String> = api
        .inputs
        .iter()
        .map(|q| format!("{}: *const {}", q.ident, rust_type(q.scalar)))
        .collect();
    raw.extend(
        api.outputs
            .iter()
            .map(|q| format!("{}: *mut {}", q.ident, rust_type(q.scalar))),
    );
    raw.push("arena: *mut u8".into());
    let int_decl = if let Some(int) = &api.int {
        let mut r: Vec<String> = (api.inputs.iter().zip(&int.inputs))
            .map(|(p, q)| format!("{}: *const {}", p.ident, rust_type(q.scalar)))
            .collect();
        r.extend(
            (api.outputs.iter().zip(&int.outputs)).map(|(p, q)| format!("{}: *mut {}", p.ident, rust_type(q.scalar))),
        );
        r.push("arena: *mut u8".into());
        format!("\n        fn {p}_run_int({}) -> i32;", r.join(", "))
    } else {
        String::new()
    };
    let _ = writeln!(
        s,
        "    unsafe extern \"C\" {{\n        fn {p}_run({}) -> i32;{int_decl}\n    }}\n",
        raw.join(", ")
    );
    let mut safe: Vec<String> = api
        .inputs
        .iter()
        .enumerate()
        .map(|(i, q)| format!("{}: &[{}; INPUT{i}_COUNT]", q.ident, rust_type(q.scalar)))
        .collect();
    safe.extend(
        api.outputs
            .iter()
            .enumerate()
            .map(|(i, q)| format!("{}: &mut [{}; OUTPUT{i}_COUNT]", q.ident, rust_type(q.scalar))),
    );
    safe.push("arena: &mut Arena".into());
    let mut call: Vec<String> = api.inputs.iter().map(|q| format!("{}.as_ptr()", q.ident)).collect();
    call.extend(api.outputs.iter().map(|q| format!("{}.as_mut_ptr()", q.ident)));
    call.push("arena.0.as_mut_ptr()".into());
    let _ = writeln!(
        s,
        "    /// Runs the model. Errors carry the generated code's non-zero status."
    );
    let _ = writeln!(s, "    pub fn run({}) -> Result<(), i32> {{", safe.join(", "));
    let _ = writeln!(
        s,
        "        // SAFETY: every pointer comes from a live reference whose length is the"
    );
    let _ = writeln!(
        s,
        "        // element count the compiled code reads or writes; the arena is ARENA_SIZE"
    );
    let _ = writeln!(
        s,
        "        // bytes aligned to ARENA_ALIGN; `&mut` guarantees no overlap."
    );
    let _ = writeln!(s, "        let rc = unsafe {{ {p}_run({}) }};", call.join(", "));
    let _ = writeln!(s, "        if rc == 0 {{ Ok(()) }} else {{ Err(rc) }}\n    }}");
    if let Some(int) = &api.int {
        let mut safe: Vec<String> = (api.inputs.iter().zip(&int.inputs))
            .enumerate()
            .map(|(i, (p, q))| format!("{}: &[{}; INPUT{i}_COUNT]", p.ident, rust_type(q.scalar)))
            .collect();
        safe.extend(
            (api.outputs.iter().zip(&int.outputs))
                .enumerate()
                .map(|(i, (p, q))| format!("{}: &mut [{}; OUTPUT{i}_COUNT]", p.ident, rust_type(q.scalar))),
        );
        safe.push("arena: &mut Arena".into());
        let _ = writeln!(
            s,
            "\n    /// Runs the model on integer buffers (see each port's SCALE and ZERO_POINT)."
        );
        let _ = writeln!(s, "    pub fn run_int({}) -> Result<(), i32> {{", safe.join(", "));
        let _ = writeln!(s, "        // SAFETY: as for `run`.");
        let _ = writeln!(s, "        let rc = unsafe {{ {p}_run_int({}) }};", call.join(", "));
        let _ = writeln!(s, "        if rc == 0 {{ Ok(()) }} else {{ Err(rc) }}\n    }}");
    }
    s.push_str("}\n");
    s
}

/// The items every Rust API module starts with: arena size and alignment, each port's shape,
/// count (and scale and zero point when quantized), and the aligned `Arena` type.
pub fn rust_api_items(api: &Api) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "    /// Bytes of scratch memory the model needs.\n    pub const ARENA_SIZE: usize = {};",
        api.arena_size
    );
    let _ = writeln!(
        s,
        "    /// Alignment the arena needs.\n    pub const ARENA_ALIGN: usize = {};\n",
        api.arena_align
    );
    if let Some(n) = api.numerics {
        let _ = writeln!(
            s,
            "    /// Integer arithmetic reproduced bit for bit: \"onnx\" (ONNX Runtime) or \"tflite\"\n    /// (TFLite's reference kernels, TFLite Micro).\n    pub const NUMERICS: &str = \"{}\";\n",
            n.name()
        );
    }
    for (kind, ports) in [("INPUT", &api.inputs), ("OUTPUT", &api.outputs)] {
        for (i, port) in ports.iter().enumerate() {
            let _ = writeln!(
                s,
                "    /// {} {i} `{}`: {}[{}]",
                kind.to_ascii_lowercase(),
                crate::text::comment(&port.name),
                rust_type(port.scalar),
                dims(&port.shape)
            );
            let _ = writeln!(
                s,
                "    pub const {kind}{i}_SHAPE: [usize; {}] = [{}];",
                port.shape.len(),
                dims(&port.shape)
            );
            let _ = writeln!(
                s,
                "    pub const {kind}{i}_COUNT: usize = {};",
                port.shape.iter().product::<usize>()
            );
            if let Some(q) = api.int.as_ref().map(|int| {
                if kind == "INPUT" {
                    &int.inputs[i]
                } else {
                    &int.outputs[i]
                }
            }) {
                let _ = writeln!(s, "    pub const {kind}{i}_SCALE: f32 = {:e};", q.scale);
                let _ = writeln!(s, "    pub const {kind}{i}_ZERO_POINT: i32 = {};", q.zero_point);
            }
            s.push('\n');
        }
    }
    let _ = writeln!(s, "    /// Arena storage with the alignment the model needs.");
    let _ = writeln!(
        s,
        "    #[repr(C, align({}))]\n    pub struct Arena(pub [u8; ARENA_SIZE]);\n",
        api.arena_align
    );
    let _ = writeln!(
        s,
        "    impl Arena {{\n        pub const fn new() -> Self {{\n            Arena([0; ARENA_SIZE])\n        }}\n    }}\n"
    );
    let _ = writeln!(
        s,
        "    impl Default for Arena {{\n        fn default() -> Self {{\n            Self::new()\n        }}\n    }}\n"
    );
    s
}

//! The C backend's static arena: `--static-arena` (or `-D<PREFIX>_STATIC_ARENA`) makes the
//! generated file own its arena behind `<prefix>_run_static`, and `<PREFIX>_SHARED_ARENA`
//! lets several models use one array the application defines. Programs built with strict
//! C99 flags run both and must give the evaluator's integers byte for byte.

use kiln::compile::{CompileOptions, Emit, compile, parse_target, write_files};
use kiln_ir::{Graph, Tensor};
use kiln_tests::repo;
use std::path::Path;
use std::process::Command;

fn int8_model(dir: &str) -> (Graph, Tensor, Tensor) {
    let d = repo().join("tests/models").join(dir);
    let m = kiln::load(
        &d.join("model.onnx"),
        &Default::default(),
        &Default::default(),
        |_, _| {},
    )
    .unwrap();
    let g = kiln::quantize::quantize_int8(&m.graph, &d.join("calib"), &Default::default(), |_, _| {})
        .unwrap()
        .graph;
    let x = kiln::npy::read(&d.join("ref/test_data_set_0/input_0.npy")).unwrap();
    let (ins, outs) = kiln::onchip::int_ports(&g, &[x]).unwrap().expect("an integer boundary");
    (g, ins[0].clone(), outs[0].clone())
}

fn emit(g: &Graph, prefix: &str, static_arena: bool, dir: &Path) -> String {
    let opts = CompileOptions {
        emit: Emit::C,
        target: parse_target("host").unwrap(),
        prefix: prefix.into(),
        static_arena,
    };
    let out = compile(g, &opts, "test").unwrap();
    write_files(dir, &out.files, &[]).unwrap();
    std::fs::read_to_string(dir.join(format!("{prefix}.h"))).unwrap()
}

fn cc(dir: &Path, args: &[&str]) {
    let o = Command::new("cc")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("cc runs");
    assert!(
        o.status.success(),
        "cc {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// A C array literal of `t`'s bytes.
fn bytes(t: &Tensor) -> String {
    let v: Vec<String> = t.data.to_le_bytes().iter().map(|b| (*b as i8).to_string()).collect();
    v.join(",")
}

#[test]
fn static_and_shared_arenas_run_the_models() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (digits, dx, dy) = int8_model("digits_cnn");
    let (kws, kx, ky) = int8_model("mlperf_tiny_kws_dscnn");
    // switched on by the flag: the header defines the macro, the file owns the arena
    let h = emit(&digits, "own", true, d);
    assert!(h.contains("#define OWN_STATIC_ARENA 1"), "{h}");
    // off by default: no macro, and the same entry points once the user defines one
    for (g, p) in [(&digits, "digits"), (&kws, "kws")] {
        let h = emit(g, p, false, d);
        assert!(
            !h.contains(&format!("#define {}_STATIC_ARENA", p.to_uppercase())),
            "{h}"
        );
    }
    let strict = ["-std=c99", "-O1", "-Wall", "-Wextra", "-Werror", "-pedantic", "-c"];
    cc(d, &[&strict[..], &["own.c"]].concat());
    cc(
        d,
        &[&strict[..], &["-DDIGITS_SHARED_ARENA=kiln_arena", "digits.c"]].concat(),
    );
    cc(d, &[&strict[..], &["-DKWS_SHARED_ARENA=kiln_arena", "kws.c"]].concat());
    let main = format!(
        "#include <stdio.h>\n#include <string.h>\n#define DIGITS_SHARED_ARENA kiln_arena\n#define KWS_SHARED_ARENA kiln_arena\n#include \"own.h\"\n#include \"digits.h\"\n#include \"kws.h\"\n#define MAX(a, b) ((a) > (b) ? (a) : (b))\nunsigned char kiln_arena[MAX(DIGITS_ARENA_SIZE, KWS_ARENA_SIZE)] __attribute__((aligned(16)));\nstatic const int8_t dx[] = {{{}}}, dy[] = {{{}}}, kx[] = {{{}}}, ky[] = {{{}}};\nint main(void) {{\n  int8_t a[sizeof dy], b[sizeof ky], c[sizeof dy];\n  int r;\n  for (r = 0; r < 2; ++r) {{\n    if (own_run_int_static(dx, c) || digits_run_int_static(dx, a) || kws_run_int_static(kx, b)) return 2;\n    if (memcmp(a, dy, sizeof dy) || memcmp(b, ky, sizeof ky) || memcmp(c, dy, sizeof dy)) return 3;\n  }}\n  printf(\"ok %u %u\\n\", (unsigned)sizeof kiln_arena, (unsigned)OWN_ARENA_SIZE);\n  return 0;\n}}\n",
        bytes(&dx),
        bytes(&dy),
        bytes(&kx),
        bytes(&ky)
    );
    std::fs::write(d.join("main.c"), main).unwrap();
    cc(
        d,
        &[
            "-std=c99", "-Wall", "-Wextra", "-Werror", "main.c", "own.o", "digits.o", "kws.o", "-lm", "-o", "prog",
        ],
    );
    let o = Command::new(d.join("prog")).output().unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "status {:?}: {out}", o.status);
    // one array for both, the size of the larger arena
    let kws_arena = kiln::compile::compile(
        &kws,
        &CompileOptions {
            emit: Emit::C,
            target: parse_target("host").unwrap(),
            prefix: "k".into(),
            static_arena: false,
        },
        "t",
    )
    .unwrap()
    .report
    .arena_size;
    assert!(out.starts_with(&format!("ok {kws_arena} ")), "{out}");
}

//! Hostile input meets generated code: every string a model controls (port, node and value
//! names, the source file name) must reach C, Rust source and the native header and bindings
//! as inert comment text, and the output must still compile warning-free and run.

use kiln::compile::{CompileOptions, Emit, compile, parse_target};
use kiln_tests::*;

/// Names that would end a comment, splice a line, inject a function or a directive, or hide
/// text from a reader, if written raw.
const HOSTILE: [&str; 6] = [
    "x */ static int f(void) { return 42; } /*",
    "w\n#define kiln_evil 1\n// \\",
    "v ??/\n int evil_trigraph;",
    "n` \"quote' \r\n/// pub fn evil() {}",
    "\u{202e}evil\u{2066} é",
    "y */ int evil_output; /* \\",
];

fn hostile_model() -> kiln_ir::Graph {
    let long = "L".repeat(50_000);
    let m = model(
        vec![
            node("Add", HOSTILE[3], &[HOSTILE[0], HOSTILE[1]], &[HOSTILE[2]], vec![]),
            node("Relu", &long, &[HOSTILE[2]], &[HOSTILE[5]], vec![]),
        ],
        vec![fixed(HOSTILE[0], &[1, 4])],
        vec![fixed(HOSTILE[5], &[1, 4])],
        vec![tensor(HOSTILE[1], &[1, 4], vec![0.5, -1.0, 2.0, -3.0])],
        13,
    );
    load_model(&write_model("hostile", &m)).graph
}

fn emitted(g: &kiln_ir::Graph, emit: Emit) -> Vec<(String, String)> {
    let opts = CompileOptions {
        emit,
        target: parse_target("host").unwrap(),
        prefix: "m".into(),
        static_arena: false,
    };
    let out = compile(g, &opts, HOSTILE[4]).unwrap();
    out.files
        .into_iter()
        .filter(|(n, _)| n.ends_with(".c") || n.ends_with(".h") || n.ends_with(".rs"))
        .map(|(n, b)| (n, String::from_utf8(b).unwrap()))
        .collect()
}

#[test]
fn hostile_names_stay_inert_in_every_backend() {
    let g = hostile_model();
    let files: Vec<(String, String)> = [Emit::C, Emit::RustSource, Emit::Object]
        .into_iter()
        .flat_map(|e| emitted(&g, e))
        .collect();
    assert_eq!(files.len(), 5, "{:?}", files.iter().map(|f| &f.0).collect::<Vec<_>>());
    let dir = std::env::temp_dir().join(format!("kiln-hostile-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for (name, text) in &files {
        assert!(text.is_ascii(), "{name} is not plain ASCII");
        assert!(!text.contains(&"L".repeat(1000)), "{name} holds the whole long name");
        for bad in ["??", "\r", "\\\n"] {
            assert!(!text.contains(bad), "{name} contains {bad:?}");
        }
        let code = without_comments(name, text, &dir);
        assert!(code.len() > 100, "{name}: {code}");
        // Identifiers derived from names are fine; words of the names standing alone are not.
        assert!(!code.contains("return 42"), "{name}:\n{code}");
        let words: Vec<&str> = code.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).collect();
        for bad in ["kiln_evil", "evil_trigraph", "evil", "evil_output", "quote"] {
            assert!(!words.contains(&bad), "{name} has {bad:?} outside comments:\n{code}");
        }
    }
    // The escaped text is still there for a reader.
    let c = &files.iter().find(|f| f.0 == "m.c").unwrap().1;
    assert!(c.contains("x *\\u{2f} static int f(void)"), "{c}");

    // All of it compiles warning-free and computes the evaluator's bytes.
    let x = f32_tensor(&[1, 4], vec![1.0, 2.0, -3.0, 4.0]);
    let failures = bit_exact_on_every_backend(&g, &[vec![x]], "hostile", &dir.join("run"));
    assert!(failures.is_empty(), "{failures:?}");

    // The native backend's Rust bindings compile under -D warnings.
    let bindings = &files
        .iter()
        .find(|f| f.0 == "m.rs" && f.1.contains("extern \"C\""))
        .unwrap()
        .1;
    let p = dir.join("bindings.rs");
    std::fs::write(&p, bindings).unwrap();
    let o = std::process::Command::new(std::env::var("RUSTC").unwrap_or("rustc".into()))
        .args([
            "--edition",
            "2024",
            "--crate-type",
            "lib",
            "--emit",
            "metadata",
            "-D",
            "warnings",
        ])
        .arg("--out-dir")
        .arg(&dir)
        .arg(&p)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let _ = std::fs::remove_dir_all(&dir);
}

/// The code left once comments are gone, as the compiler sees it: C through the C
/// preprocessor's own comment removal (trigraphs and line splices included), Rust by
/// dropping each `//` to the end of its line (Kiln writes no block comments or string
/// literals there).
fn without_comments(name: &str, text: &str, dir: &std::path::Path) -> String {
    if name.ends_with(".rs") {
        return text
            .lines()
            .map(|l| l.split("//").next().unwrap_or(""))
            .collect::<Vec<_>>()
            .join("\n");
    }
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    let o = std::process::Command::new("cc")
        .args(["-std=c99", "-fpreprocessed", "-dD", "-E", "-P", "-x", "c"])
        .arg(&p)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8(o.stdout).unwrap()
}

/// A chain of `n` Neg/Relu nodes on 16 floats.
fn chain(n: usize) -> kiln_ir::Graph {
    let names: Vec<String> = (0..n).map(|i| format!("v{i}")).collect();
    let nodes = (0..n)
        .map(|i| {
            let x = if i == 0 { "x" } else { names[i - 1].as_str() };
            node(
                if i % 2 == 0 { "Neg" } else { "Relu" },
                &names[i],
                &[x],
                &[&names[i]],
                vec![],
            )
        })
        .collect();
    let m = model(
        nodes,
        vec![fixed("x", &[1, 16])],
        vec![fixed(&names[n - 1], &[1, 16])],
        vec![],
        13,
    );
    let p = write_model(&format!("chain{n}"), &m);
    kiln::load(&p, &Default::default(), &Default::default(), |_, _| {})
        .unwrap()
        .graph
}

/// Graphs of 100,000 nodes import, plan and emit C (and 20,000 emit Rust source) in time
/// and memory linear in their size: a quadratic step here took minutes and gigabytes. The
/// values are 64 bytes: C computes each in place over the last (one slot), Rust source
/// keeps input and output apart (two).
#[test]
fn long_chains_compile() {
    for (n, emit, arena) in [(100_000, Emit::C, 64), (20_000, Emit::RustSource, 128)] {
        let g = chain(n);
        let opts = CompileOptions {
            emit,
            target: parse_target("host").unwrap(),
            prefix: "m".into(),
            static_arena: false,
        };
        let out = compile(&g, &opts, "chain").unwrap();
        assert_eq!(out.report.kernels, n);
        assert_eq!(
            (out.report.arena_size, out.report.arena_lower_bound),
            (arena, arena),
            "{emit:?}"
        );
    }
}

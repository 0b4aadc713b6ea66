//! ONNX backend node tests through import, the pass pipeline and the reference evaluator.
//! Cases come from the `onnx` wheel (see `scripts/fetch-onnx-tests.sh`); the manifest
//! `tests/conformance/evaluator.pass` lists those that must pass. A listed case that fails
//! fails the run; unlisted cases are reported (with the reason) but do not fail it.
//! `KILN_BLESS=1` rewrites the manifest with the cases passing now.
//! Every case the evaluator passes is also compiled natively and to C (host `cc`, strict C99)
//! and run; `native.pass` and `c.pass` list the cases each backend must pass. The Rust source
//! backend gets every evaluator-passing case it supports built into one program (one cargo
//! build under `-D warnings`, see `kiln_tests::build_rust`); `rust.pass` lists its cases.
//! Tolerance: the ONNX backend-test default, |got - want| <= 1e-7 + 1e-3 * |want|; integer
//! and bool outputs exactly.

use kiln::{ImportError, ImportOptions, PipelineOptions};
use kiln_tests::{compare, read_pb, repo};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

const RTOL: f64 = 1e-3;
const ATOL: f64 = 1e-7;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Backend {
    Eval,
    Native,
    C,
}

/// One test-data set of a case, imported with that set's shapes and ready to run.
struct Prepared {
    graph: kiln_ir::Graph,
    inputs: Vec<kiln_ir::Tensor>,
    wants: Vec<kiln_ir::Tensor>,
}

fn check(got: &[kiln_ir::Tensor], wants: &[kiln_ir::Tensor]) -> Result<(), String> {
    if got.len() != wants.len() {
        return Err(format!("{} outputs, expected {}", got.len(), wants.len()));
    }
    for (i, (g, w)) in got.iter().zip(wants).enumerate() {
        let (worst, max_abs) = compare(g, w, RTOL, ATOL).map_err(|e| format!("output {i}: {e}"))?;
        if worst > 1.0 {
            return Err(format!("output {i}: off by {max_abs:e} ({worst:.1}x the tolerance)"));
        }
    }
    Ok(())
}

fn run_case(dir: &Path, backend: Backend) -> Result<(), String> {
    for p in prepare(dir)? {
        let got = match backend {
            Backend::Eval => kiln_ir::eval::run(&p.graph, &p.inputs).map_err(|e| e.to_string())?,
            Backend::Native | Backend::C => {
                let build = std::env::temp_dir().join(format!(
                    "kiln-conf-{}-{}",
                    std::process::id(),
                    dir.file_name().unwrap().to_string_lossy()
                ));
                let exe = if backend == Backend::C {
                    kiln_tests::build_c(&p.graph, "model", &build, &[])
                } else {
                    kiln_tests::build_native(&p.graph, "model", &build)
                };
                let exe = match exe {
                    Ok(e) => e,
                    Err(e) => {
                        let _ = std::fs::remove_dir_all(&build);
                        return Err(e);
                    }
                };
                let got = exe.run(&p.graph, &p.inputs);
                let _ = std::fs::remove_dir_all(&build);
                got?
            }
        };
        check(&got, &p.wants)?;
    }
    Ok(())
}

/// Imports a case once per test-data set.
fn prepare(dir: &Path) -> Result<Vec<Prepared>, String> {
    let sets: Vec<PathBuf> = {
        let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(|e| e.to_string())?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.is_dir()
                    && p.file_name()
                        .is_some_and(|n| n.to_string_lossy().starts_with("test_data_set"))
            })
            .collect();
        v.sort();
        v
    };
    if sets.is_empty() {
        return Err("no test data".into());
    }
    let numbered = |d: &Path, prefix: &str| -> Vec<PathBuf> {
        (0..)
            .map(|i| d.join(format!("{prefix}_{i}.pb")))
            .take_while(|p| p.exists())
            .collect()
    };
    let proto = {
        use prost::Message;
        let b = std::fs::read(dir.join("model.onnx")).map_err(|e| e.to_string())?;
        kiln::onnx::proto::ModelProto::decode(b.as_slice()).map_err(|e| e.to_string())?
    };
    let g = proto.graph.as_ref().ok_or("no graph")?;
    let inits: BTreeSet<&str> = g.initializer.iter().map(|t| t.name.as_str()).collect();
    let graph_inputs: Vec<&str> = g
        .input
        .iter()
        .map(|i| i.name.as_str())
        .filter(|n| !inits.contains(n))
        .collect();
    let mut prepared = Vec::new();
    for set in &sets {
        let inputs = numbered(set, "input")
            .iter()
            .map(|p| read_pb(p))
            .collect::<Result<Vec<_>, _>>()?;
        let wants = numbered(set, "output")
            .iter()
            .map(|p| read_pb(p))
            .collect::<Result<Vec<_>, _>>()?;
        if inputs.len() != graph_inputs.len() {
            return Err(format!(
                "{} inputs in data, {} in graph",
                inputs.len(),
                graph_inputs.len()
            ));
        }
        // Shapes come from the data; inputs an op needs as constants (axes, pads, sizes) are
        // bound to this set's values, as a user would with `--bind`.
        let mut opts = ImportOptions::default();
        for (name, t) in graph_inputs.iter().zip(&inputs) {
            opts.input_shapes.insert(name.to_string(), t.shape.clone());
        }
        let mut bound_ints = false;
        let model = loop {
            match kiln::load(&dir.join("model.onnx"), &opts, &PipelineOptions::default(), |_, _| {}) {
                Ok(m) => break m,
                Err(kiln::Error::Import(ImportError::NotConstant {
                    name,
                    graph_input: true,
                    ..
                })) if !opts.constant_inputs.contains_key(&name) => {
                    let i = graph_inputs
                        .iter()
                        .position(|n| *n == name)
                        .ok_or("bound input not found")?;
                    opts.input_shapes.remove(&name);
                    opts.constant_inputs.insert(name, inputs[i].clone());
                }
                // A value computed from inputs must be constant: bind the integer inputs once.
                Err(kiln::Error::Import(ImportError::NotConstant { graph_input: false, .. })) if !bound_ints => {
                    bound_ints = true;
                    for (name, t) in graph_inputs
                        .iter()
                        .zip(&inputs)
                        .filter(|(_, t)| !t.data.scalar().is_float())
                    {
                        opts.input_shapes.remove(*name);
                        opts.constant_inputs.insert(name.to_string(), t.clone());
                    }
                }
                Err(e) => return Err(e.to_string()),
            }
        };
        let free: Vec<_> = graph_inputs
            .iter()
            .zip(&inputs)
            .filter(|(n, _)| !opts.constant_inputs.contains_key(**n))
            .map(|(_, t)| t.clone())
            .collect();
        prepared.push(Prepared {
            graph: model.graph,
            inputs: free,
            wants,
        });
    }
    Ok(prepared)
}

/// The Rust source backend on every case in `cases` (those the evaluator passes): each
/// supported set's graph goes into one program, built once; the rest fail with the reason.
fn rust_cases(cases: &[PathBuf]) -> BTreeMap<String, Result<(), String>> {
    let mut out = BTreeMap::new();
    let mut built: Vec<(String, String, Prepared)> = Vec::new(); // (case, prefix, set)
    for case in cases {
        let name = case.file_name().unwrap().to_string_lossy().into_owned();
        let sets = match std::panic::catch_unwind(|| prepare(case)) {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                out.insert(name, Err(e));
                continue;
            }
            Err(_) => {
                out.insert(name, Err("PANIC while importing".into()));
                continue;
            }
        };
        let why: Vec<String> = sets
            .iter()
            .flat_map(|p| {
                let plan = kiln::compile::plan_rust(&p.graph, &kiln::compile::parse_target("host").unwrap()).ok();
                let g = &p.graph;
                plan.map(|plan| {
                    plan.order
                        .iter()
                        .filter_map(|&n| kiln_backends::rust::unsupported(g, n))
                        .collect::<Vec<_>>()
                })
                .unwrap_or_else(|| vec!["cannot plan".into()])
            })
            .collect();
        if !why.is_empty() {
            out.insert(name, Err(why.join("; ")));
            continue;
        }
        for (k, p) in sets.into_iter().enumerate() {
            built.push((name.clone(), format!("c{}_{k}", built.len()), p));
        }
    }
    let dir = std::env::temp_dir().join(format!("kiln-conf-rust-{}", std::process::id()));
    let list: Vec<(&str, &kiln_ir::Graph)> = built.iter().map(|(_, pre, p)| (pre.as_str(), &p.graph)).collect();
    match kiln_tests::build_rust(&list, &dir, false) {
        Ok(exes) => {
            for ((name, _, p), exe) in built.iter().zip(&exes) {
                let r = exe.run(&p.graph, &p.inputs).and_then(|got| check(&got, &p.wants));
                let e = out.entry(name.clone()).or_insert(Ok(()));
                if e.is_ok() {
                    *e = r;
                }
            }
        }
        Err(e) => {
            let first: String = e.lines().take(40).collect::<Vec<_>>().join("\n");
            for (name, _, _) in &built {
                out.insert(name.clone(), Err(format!("the batch build failed: {first}")));
            }
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    out
}

fn main() {
    let root = repo();
    let dir = std::env::var_os("KILN_ONNX_NODE_TESTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target/onnx-node-tests/onnx/backend/test/data/node"));
    let eval_manifest = root.join("tests/conformance/evaluator.pass");
    let native_manifest = root.join("tests/conformance/native.pass");
    let c_manifest = root.join("tests/conformance/c.pass");
    let rust_manifest = root.join("tests/conformance/rust.pass");
    if !dir.is_dir() {
        if std::env::var_os("KILN_REQUIRE_CONFORMANCE").is_some() {
            eprintln!(
                "conformance data missing at {}; run scripts/fetch-onnx-tests.sh",
                dir.display()
            );
            std::process::exit(1);
        }
        println!(
            "conformance: data not found at {} (run scripts/fetch-onnx-tests.sh); skipped",
            dir.display()
        );
        return;
    }
    let mut cases: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("readable node test dir")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("model.onnx").exists())
        .collect();
    cases.sort();
    let filter = std::env::args().nth(1).filter(|a| !a.starts_with('-'));
    if let Some(f) = &filter {
        cases.retain(|c| c.file_name().unwrap().to_string_lossy().contains(f.as_str()));
    }
    let results: Mutex<BTreeMap<String, Outcome>> = Mutex::new(BTreeMap::new());
    let next = Mutex::new(0usize);
    let workers = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2);
    let guarded = |case: &Path, b: Backend| {
        std::panic::catch_unwind(|| run_case(case, b)).unwrap_or_else(|p| {
            let msg = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()));
            Err(format!("PANIC: {}", msg.unwrap_or_default()))
        })
    };
    std::thread::scope(|s| {
        for _ in 0..workers {
            s.spawn(|| {
                loop {
                    let i = {
                        let mut n = next.lock().unwrap();
                        *n += 1;
                        *n - 1
                    };
                    let Some(case) = cases.get(i) else { break };
                    let name = case.file_name().unwrap().to_string_lossy().into_owned();
                    let eval = guarded(case, Backend::Eval);
                    // The backends are tried on every case the evaluator passes.
                    let native = eval.is_ok().then(|| guarded(case, Backend::Native));
                    let c = eval.is_ok().then(|| guarded(case, Backend::C));
                    results.lock().unwrap().insert(name, (eval, native, c, None));
                }
            });
        }
    });
    let results = results.into_inner().unwrap();
    let eval_ok: Vec<PathBuf> = cases
        .iter()
        .filter(|c| {
            results
                .get(&*c.file_name().unwrap().to_string_lossy())
                .is_some_and(|o| o.0.is_ok())
        })
        .cloned()
        .collect();
    let mut results = results;
    for (name, r) in rust_cases(&eval_ok) {
        if let Some(o) = results.get_mut(&name) {
            o.3 = Some(r);
        }
    }
    let _ = std::fs::create_dir_all(root.join("target"));
    let mut total_failed = 0;
    let mut total_passed = 0;
    for (label, manifest_path, pick) in [
        (
            "evaluator",
            &eval_manifest,
            Box::new(|o: &Outcome| Some(o.0.clone())) as Box<dyn Fn(&Outcome) -> Option<Result<(), String>>>,
        ),
        ("native", &native_manifest, Box::new(|o: &Outcome| o.1.clone())),
        ("c", &c_manifest, Box::new(|o: &Outcome| o.2.clone())),
        ("rust", &rust_manifest, Box::new(|o: &Outcome| o.3.clone())),
    ] {
        let manifest = read_manifest(manifest_path);
        let (mut passed, mut failed, mut new_pass, mut outside) = (0, 0, Vec::new(), 0);
        let mut report = String::new();
        for (name, o) in &results {
            let r = pick(o).unwrap_or_else(|| Err("the evaluator fails this case".into()));
            match (manifest.contains(name), &r) {
                (true, Ok(())) => passed += 1,
                (true, Err(e)) => {
                    failed += 1;
                    println!("FAIL {label} {name}: {e}");
                }
                (false, Ok(())) => new_pass.push(name.clone()),
                (false, Err(e)) => {
                    outside += 1;
                    report.push_str(&format!("{name}: {e}\n"));
                }
            }
        }
        let _ = std::fs::write(
            root.join(format!("target/conformance-{label}-unsupported.txt")),
            &report,
        );
        if std::env::var_os("KILN_BLESS").is_some() && filter.is_none() {
            let pass: Vec<&String> = results
                .iter()
                .filter(|(_, o)| matches!(pick(o), Some(Ok(()))))
                .map(|(n, _)| n)
                .collect();
            let mut text = format!(
                "# ONNX node tests (onnx 1.20.0) that must pass on the {label} backend.\n# Regenerate with KILN_BLESS=1 cargo test -p kiln-tests --test conformance\n"
            );
            for n in &pass {
                text.push_str(n);
                text.push('\n');
            }
            std::fs::write(manifest_path, text).expect("write manifest");
            println!("blessed {} {label} cases into {}", pass.len(), manifest_path.display());
        }
        for n in &new_pass {
            println!("new {label} pass (not in manifest): {n}");
        }
        println!(
            "conformance ({label}): {} cases; {} listed in the manifest, {passed} pass, {failed} fail; {outside} unlisted cases fail (reasons in target/conformance-{label}-unsupported.txt)",
            results.len(),
            manifest.len(),
        );
        total_passed += passed;
        total_failed += failed;
    }
    total_failed += parity(&results, &read_gaps(&root.join("tests/conformance/gaps.txt")));
    println!("{total_passed} passed, {total_failed} failed");
    if total_failed > 0 {
        std::process::exit(1);
    }
}

/// Every case the native backend passes must pass in C and in Rust source too, unless
/// `gaps.txt` lists it for that backend with a reason; a listed case that passes is stale.
/// Returns the number of violations (each printed).
fn parity(results: &BTreeMap<String, Outcome>, gaps: &BTreeMap<(String, String), String>) -> usize {
    let mut bad = 0;
    for (name, o) in results {
        if !matches!(o.1, Some(Ok(()))) {
            continue;
        }
        for (label, r) in [("c", &o.2), ("rust", &o.3)] {
            let listed = gaps.contains_key(&(label.to_string(), name.clone()));
            match (matches!(r, Some(Ok(()))), listed) {
                (false, false) => {
                    bad += 1;
                    println!(
                        "FAIL parity {label} {name}: passes natively but not here; make it pass or list it with a reason in tests/conformance/gaps.txt"
                    );
                }
                (true, true) => {
                    bad += 1;
                    println!("FAIL parity {label} {name}: passes now; remove it from tests/conformance/gaps.txt");
                }
                _ => {}
            }
        }
    }
    bad
}

/// `gaps.txt`: lines `<backend> <case>: <reason>` (`#` comments); a line without a reason
/// is an error.
fn read_gaps(p: &Path) -> BTreeMap<(String, String), String> {
    let text = std::fs::read_to_string(p).unwrap_or_default();
    let mut gaps = BTreeMap::new();
    for line in text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        let (head, reason) = line.split_once(':').unwrap_or((line, ""));
        let (label, case) = head.trim().split_once(' ').unwrap_or((head, ""));
        assert!(
            !reason.trim().is_empty() && !case.trim().is_empty(),
            "{}: `{line}` needs the form `<backend> <case>: <reason>`",
            p.display()
        );
        gaps.insert((label.to_string(), case.trim().to_string()), reason.trim().to_string());
    }
    gaps
}

/// One case's results: evaluator, then native, C and Rust source (tried when it passes).
type Outcome = (
    Result<(), String>,
    Option<Result<(), String>>,
    Option<Result<(), String>>,
    Option<Result<(), String>>,
);

fn read_manifest(p: &Path) -> BTreeSet<String> {
    std::fs::read_to_string(p)
        .unwrap_or_default()
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(String::from)
        .collect()
}

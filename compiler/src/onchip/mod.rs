//! A model measured on a simulated microcontroller: the generated C built with the part's
//! cross compiler into a bare-metal program, run in simavr (AVR, exact cycles) or QEMU
//! (Cortex-M, exact instruction counts through Kiln's TCG plugin), its outputs read back.
//! `kiln bench --target` and the repository's MCU benchmark (`tests/mcu.rs`) both measure
//! through here, so their numbers are the same by construction.
//!
//! The toolchains are Debian's (`scripts/setup-embedded.sh` installs them); the simulator
//! helpers (the simavr driver, the QEMU plugin) are compiled from the sources next to this
//! file on first use.

mod harness;

use crate::compile::{CompileError, CompileOptions, Emit, compile, parse_target, write_files};
use kiln_ir::{Graph, Tensor};
use std::path::{Path, PathBuf};
use std::process::Command;
use thiserror::Error;

pub use harness::read_back;

#[derive(Debug, Error)]
pub enum OnChipError {
    #[error("{what} is missing: run scripts/setup-embedded.sh (from the Kiln repository), which installs {installs}")]
    Missing { what: String, installs: &'static str },
    #[error(transparent)]
    Compile(#[from] CompileError),
    #[error("{0}")]
    Tool(String),
    #[error("`{part}` has no simulator here: give one of {known}", known = Part::names())]
    UnknownPart { part: String },
}

/// A part Kiln can run a model on, in a simulator.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Part {
    Atmega328p,
    Atmega2560,
    /// Armv7-M without the DSP extension, soft float (QEMU's mps2-an385).
    CortexM3,
    /// Armv7E-M with single-precision FPU (mps2-an386).
    CortexM4,
    /// Armv7E-M, FPv5 (mps2-an500).
    CortexM7,
    /// Armv8-M mainline with DSP and FPU, in the Secure state it resets into (mps2-an505).
    CortexM33,
}

impl Part {
    pub const ALL: [Part; 6] = [
        Part::CortexM4,
        Part::CortexM7,
        Part::CortexM33,
        Part::CortexM3,
        Part::Atmega328p,
        Part::Atmega2560,
    ];

    pub fn parse(name: &str) -> Result<Part, OnChipError> {
        let name = if name == "avr" { "atmega328p" } else { name };
        (Part::ALL.into_iter().find(|p| p.name() == name))
            .ok_or_else(|| OnChipError::UnknownPart { part: name.to_string() })
    }

    fn names() -> String {
        Part::ALL.map(Part::name).join(", ")
    }

    /// Kiln's target name (`--target`), also avr-gcc's `-mmcu` for AVR parts.
    pub fn name(self) -> &'static str {
        match self {
            Part::Atmega328p => "atmega328p",
            Part::Atmega2560 => "atmega2560",
            Part::CortexM3 => "cortex-m3",
            Part::CortexM4 => "cortex-m4",
            Part::CortexM7 => "cortex-m7",
            Part::CortexM33 => "cortex-m33",
        }
    }

    pub fn is_avr(self) -> bool {
        matches!(self, Part::Atmega328p | Part::Atmega2560)
    }

    /// The simulator and board it runs on.
    pub fn simulator(self) -> String {
        if self.is_avr() {
            "simavr".into()
        } else {
            format!("QEMU {}", self.board().0)
        }
    }

    /// What the cost counts.
    pub fn unit(self) -> &'static str {
        if self.is_avr() { "cycles" } else { "instructions" }
    }

    fn gcc(self) -> (&'static str, &'static str) {
        if self.is_avr() {
            ("avr-gcc", "avr-size")
        } else {
            ("arm-none-eabi-gcc", "arm-none-eabi-size")
        }
    }

    /// Code generation flags (`-O2` on Cortex-M, `-Os` on AVR, where flash is the limit).
    fn cflags(self) -> Vec<String> {
        let v: &[&str] = match self {
            Part::Atmega328p | Part::Atmega2560 => &["-Os"],
            Part::CortexM3 => &["-mcpu=cortex-m3", "-mthumb", "-mfloat-abi=soft", "-O2"],
            Part::CortexM4 => &[
                "-mcpu=cortex-m4",
                "-mthumb",
                "-mfpu=fpv4-sp-d16",
                "-mfloat-abi=hard",
                "-O2",
            ],
            Part::CortexM7 => &[
                "-mcpu=cortex-m7",
                "-mthumb",
                "-mfpu=fpv5-sp-d16",
                "-mfloat-abi=hard",
                "-O2",
            ],
            Part::CortexM33 => &[
                "-mcpu=cortex-m33",
                "-mthumb",
                "-mfpu=fpv5-sp-d16",
                "-mfloat-abi=hard",
                "-O2",
            ],
        };
        let mut v: Vec<String> = v.iter().map(|s| s.to_string()).collect();
        if self.is_avr() {
            v.push(format!("-mmcu={}", self.name()));
        }
        v
    }

    /// QEMU's board and where its code and data memories start.
    fn board(self) -> (&'static str, u32, u32) {
        match self {
            Part::CortexM3 => ("mps2-an385", 0, 0x2000_0000),
            Part::CortexM7 => ("mps2-an500", 0, 0x2000_0000),
            Part::CortexM33 => ("mps2-an505", 0x1000_0000, 0x3800_0000),
            _ => ("mps2-an386", 0, 0x2000_0000),
        }
    }
}

/// The host helpers a part's runs need, built once into a folder the caller owns.
pub struct Tools {
    avr_sim: Option<PathBuf>,
    qemu_plugin: Option<PathBuf>,
}

fn has(cmd: &str) -> bool {
    Command::new(cmd)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

fn sh(cmd: &mut Command) -> Result<String, OnChipError> {
    let o = cmd
        .output()
        .map_err(|e| OnChipError::Tool(format!("cannot run {:?}: {e}", cmd.get_program())))?;
    if !o.status.success() {
        return Err(OnChipError::Tool(format!(
            "{cmd:?} failed ({}):\n{}{}",
            o.status,
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )));
    }
    Ok(String::from_utf8_lossy(&o.stdout).into_owned())
}

fn write(path: &Path, text: &str) -> Result<(), OnChipError> {
    std::fs::write(path, text).map_err(|e| OnChipError::Tool(format!("cannot write {}: {e}", path.display())))
}

/// Compiles a helper's C source (kept next to this file, compiled into the binary) with the
/// host `cc`.
fn helper(dir: &Path, name: &str, src: &str, flags: &[&str]) -> Result<PathBuf, OnChipError> {
    let c = dir.join(format!("{name}.c"));
    write(&c, src)?;
    let exe = dir.join(name);
    sh(Command::new("cc").args(["-O2", "-o"]).arg(&exe).arg(&c).args(flags))?;
    Ok(exe)
}

impl Tools {
    /// Whether `part`'s cross compiler and simulator are installed, naming what is not.
    pub fn check(part: Part) -> Result<(), OnChipError> {
        let missing = |what: &str, installs| {
            Err(OnChipError::Missing {
                what: what.to_string(),
                installs,
            })
        };
        if part.is_avr() {
            if !has("avr-gcc") {
                return missing("avr-gcc", "avr-gcc, avr-libc and simavr");
            }
            if !Path::new("/usr/include/simavr/sim_avr.h").exists() {
                return missing("simavr's headers (libsimavr-dev)", "avr-gcc, avr-libc and simavr");
            }
        } else {
            if !has("arm-none-eabi-gcc") {
                return missing("arm-none-eabi-gcc", "the Arm GNU toolchain and QEMU");
            }
            if !has("qemu-system-arm") {
                return missing("qemu-system-arm", "the Arm GNU toolchain and QEMU");
            }
        }
        if !has("cc") {
            return missing("a host C compiler (cc)", "build-essential");
        }
        Ok(())
    }

    /// Builds the helpers `parts` need into `dir`.
    pub fn build(parts: &[Part], dir: &Path) -> Result<Tools, OnChipError> {
        std::fs::create_dir_all(dir).map_err(|e| OnChipError::Tool(format!("cannot create {}: {e}", dir.display())))?;
        let mut tools = Tools {
            avr_sim: None,
            qemu_plugin: None,
        };
        for &p in parts {
            Tools::check(p)?;
            if p.is_avr() && tools.avr_sim.is_none() {
                let flags = ["-w", "-I/usr/include/simavr", "-lsimavr"];
                tools.avr_sim = Some(helper(dir, "avr-sim", include_str!("avr_sim.c"), &flags)?);
            }
            if !p.is_avr() && tools.qemu_plugin.is_none() {
                let src = include_str!("qemu_insns.c");
                let so = helper(dir, "qemu_insns.so", src, &["-shared", "-fPIC"])?;
                tools.qemu_plugin = Some(so);
            }
        }
        Ok(tools)
    }
}

/// Where the model's code comes from.
pub enum ModelCode {
    /// Kiln's C backend, compiled here with `-std=c99 -Wall -Wextra -Werror -pedantic`.
    C,
    /// A library the caller built into the work folder, with `model.h` beside it (the Rust
    /// source backend behind a C-ABI `model_run`, say).
    Library(String),
}

/// How to run: which entry point, and whether to measure each kernel.
#[derive(Clone, Copy, Debug, Default)]
pub struct RunOptions {
    /// Call `model_run_int` on integer buffers (the model must have an integer boundary).
    pub int: bool,
    /// Cortex-M: a second build with a marker around each kernel, for per-kernel counts
    /// (AVR builds always carry the markers; the simulator times them at no cost to the
    /// program's flash).
    pub per_layer: bool,
}

/// One kernel's share of an inference.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layer {
    /// The kernel's index in the generated C (`k<index>`).
    pub kernel: usize,
    /// Its node's name (escaped as in the generated comment) and op.
    pub node: String,
    pub op: String,
    pub cost: u64,
}

/// What one program measured.
#[derive(Clone, Debug)]
pub struct Measurement {
    pub outputs: Vec<Tensor>,
    /// Cycles (AVR) or instructions (Cortex-M) per inference.
    pub cost: u64,
    pub layers: Vec<Layer>,
    /// Peak stack depth in bytes, from painting free RAM.
    pub stack: usize,
    /// The whole program's flash (`.text` + `.data`), static RAM (`.data` + `.bss`) and
    /// `.data`.
    pub flash: usize,
    pub ram: usize,
    pub data: usize,
    /// The model's own object: code and constant bytes (zero for a caller's library).
    pub model_code: usize,
    pub model_constants: usize,
    /// The arena the model needs (`MODEL_ARENA_SIZE`).
    pub arena: usize,
}

/// Builds `g` for `part` in `dir` (created; the caller removes it) and runs it once on
/// `inputs`, the entry point's own buffers.
pub fn run(
    part: Part,
    g: &Graph,
    inputs: &[Tensor],
    code: &ModelCode,
    opts: RunOptions,
    tools: &Tools,
    dir: &Path,
) -> Result<Measurement, OnChipError> {
    std::fs::create_dir_all(dir).map_err(|e| OnChipError::Tool(format!("cannot create {}: {e}", dir.display())))?;
    let mut source = String::new();
    if let ModelCode::C = code {
        let copts = CompileOptions {
            emit: Emit::C,
            target: parse_target(part.name())?,
            prefix: "model".into(),
            static_arena: false,
        };
        let out = compile(g, &copts, "model")?;
        write_files(dir, &out.files, &[])?;
        source = std::fs::read_to_string(dir.join("model.c")).unwrap_or_default();
    }
    write(&dir.join("main.c"), &harness::main_c(part, g, inputs, opts.int))?;
    let prog = Program { part, dir, tools };
    let model_obj = match code {
        ModelCode::C => prog.model_object("model.o", part.is_avr())?,
        ModelCode::Library(lib) => lib.clone(),
    };
    let elf1 = prog.link(1, &model_obj)?;
    let (stdout, one) = prog.exec(&elf1)?;
    // simavr times the marked region itself; QEMU counts whole runs, so one inference is
    // the difference between a program that runs the model twice and once.
    let mut layers = if part.is_avr() { parse_layers(&stdout) } else { vec![] };
    let cost = if part.is_avr() {
        one
    } else {
        prog.exec(&prog.link(2, &model_obj)?)?.1 - one
    };
    if opts.per_layer && !part.is_avr() && matches!(code, ModelCode::C) {
        let marked = prog.model_object("model-marked.o", true)?;
        let elf = prog.link(1, &marked)?;
        prog.exec(&elf)?;
        let counts = std::fs::read_to_string(elf.with_extension("insns")).unwrap_or_default();
        // layers open in call order: the k-th marker of the entry point's body
        let order = marker_order(&source, if opts.int { "model_run_int" } else { "model_run" });
        layers = parse_layers(&counts)
            .into_iter()
            .filter_map(|(i, c)| Some((*order.get(i)?, c)))
            .collect();
    }
    let names = kernel_names(&source);
    let layers = layers
        .into_iter()
        .map(|(k, cost)| {
            let (node, op) = names.get(k).cloned().unwrap_or_default();
            Layer {
                kernel: k,
                node,
                op,
                cost,
            }
        })
        .collect();
    let (text, data, bss) = prog.sections(&elf1)?;
    let (model_code, model_constants) = match code {
        ModelCode::C => prog.object_split(&model_obj)?,
        ModelCode::Library(_) => (0, 0),
    };
    let (outputs, stack) = parse_console(g, &stdout, opts.int)?;
    Ok(Measurement {
        outputs,
        cost,
        layers,
        stack,
        flash: text + data,
        ram: data + bss,
        data,
        model_code,
        model_constants,
        arena: header_define(dir, "MODEL_ARENA_SIZE"),
    })
}

/// The building and running of one program in its folder.
struct Program<'a> {
    part: Part,
    dir: &'a Path,
    tools: &'a Tools,
}

impl Program<'_> {
    fn cc(&self, args: &[&str]) -> Result<String, OnChipError> {
        sh(Command::new(self.part.gcc().0)
            .current_dir(self.dir)
            .args(self.part.cflags())
            .args(["-ffunction-sections", "-fdata-sections"])
            .args(args))
    }

    /// `model.c` compiled to `obj`; with `marks`, each kernel call a simulator region
    /// (AVR: GPIOR2, data address 0x4b; Cortex-M: `dbg #1` / `dbg #2`, see qemu_insns.c).
    fn model_object(&self, obj: &str, marks: bool) -> Result<String, OnChipError> {
        let (begin, end) = if self.part.is_avr() {
            (
                "-DKILN_LAYER_BEGIN(k)=(*(volatile unsigned char *)0x4b = (unsigned char)((k) + 1))",
                "-DKILN_LAYER_END(k)=(*(volatile unsigned char *)0x4b = 0)",
            )
        } else {
            (
                "-DKILN_LAYER_BEGIN(k)=__asm__ volatile(\"dbg #1\" ::: \"memory\")",
                "-DKILN_LAYER_END(k)=__asm__ volatile(\"dbg #2\" ::: \"memory\")",
            )
        };
        let marks: &[&str] = if marks { &[begin, end] } else { &[] };
        let strict = ["-std=c99", "-Wall", "-Wextra", "-Werror", "-pedantic"];
        self.cc(&[&strict[..], marks, &["-c", "model.c", "-o", obj]].concat())?;
        Ok(obj.to_string())
    }

    /// Links the harness with `model_obj` into a program that runs the model `runs` times.
    fn link(&self, runs: u32, model_obj: &str) -> Result<PathBuf, OnChipError> {
        let stem = format!("prog{runs}-{}", model_obj.trim_end_matches(".o").trim_end_matches(".a"));
        let (elf, main_o, define) = (
            format!("{stem}.elf"),
            format!("{stem}-main.o"),
            format!("-DKILN_RUNS={runs}"),
        );
        let warn = ["-std=gnu99", "-Wall", "-Wextra", "-Werror"];
        self.cc(&[&warn[..], &[&define, "-c", "main.c", "-o", &main_o]].concat())?;
        if self.part.is_avr() {
            self.cc(&["-Wl,--gc-sections", &main_o, model_obj, "-lm", "-o", &elf])?;
        } else {
            let (_, flash, ram) = self.part.board();
            write(&self.dir.join("startup.c"), include_str!("cm_startup.c"))?;
            write(&self.dir.join("board.ld"), &harness::linker_script(flash, ram))?;
            self.cc(&["-std=gnu99", "-c", "startup.c", "-o", "startup.o"])?;
            self.cc(&[
                "-nostartfiles",
                "--specs=nano.specs",
                "-T",
                "board.ld",
                "-Wl,--gc-sections",
                &main_o,
                model_obj,
                "startup.o",
                "-lm",
                "-o",
                &elf,
            ])?;
        }
        Ok(self.dir.join(elf))
    }

    /// Runs a program; returns its console text and its total cycles or instructions.
    fn exec(&self, elf: &Path) -> Result<(String, u64), OnChipError> {
        let missing = |what: &str| OnChipError::Tool(format!("no {what} was built for {}", self.part.name()));
        let (o, count_file) = if self.part.is_avr() {
            let sim = self.tools.avr_sim.as_ref().ok_or_else(|| missing("simavr driver"))?;
            let o = Command::new(sim)
                .args([self.part.name(), "2000000000"])
                .arg(elf)
                .output();
            (o, None)
        } else {
            let plugin = self.tools.qemu_plugin.as_ref().ok_or_else(|| missing("QEMU plugin"))?;
            let count = elf.with_extension("insns");
            let o = Command::new("timeout")
                .args(["600", "qemu-system-arm", "-M", self.part.board().0])
                .args(["-display", "none", "-monitor", "none", "-serial", "none"])
                .args(["-chardev", "stdio,id=con"])
                .args(["-semihosting-config", "enable=on,target=native,chardev=con", "-kernel"])
                .arg(elf)
                .arg("-plugin")
                .arg(format!("{},out={}", plugin.display(), count.display()))
                .output();
            (o, Some(count))
        };
        let o = o.map_err(|e| OnChipError::Tool(format!("cannot run the simulator: {e}")))?;
        let stdout = String::from_utf8_lossy(&o.stdout).into_owned();
        if !o.status.success() {
            return Err(OnChipError::Tool(format!(
                "{} on {}: {} ({})\n{stdout}",
                elf.display(),
                self.part.name(),
                o.status,
                String::from_utf8_lossy(&o.stderr).trim()
            )));
        }
        let first_number = |s: &str| s.lines().next().and_then(|l| l.trim().parse::<u64>().ok());
        let total = match count_file {
            Some(f) => std::fs::read_to_string(&f).ok().as_deref().and_then(first_number),
            None => (stdout.lines().find_map(|l| l.strip_prefix("region:"))).and_then(first_number),
        };
        let total = total.ok_or_else(|| OnChipError::Tool(format!("{}: no count", elf.display())))?;
        Ok((stdout, total))
    }

    fn size(&self, file: &str) -> Result<Vec<(String, usize)>, OnChipError> {
        let sizes = sh(Command::new(self.part.gcc().1)
            .current_dir(self.dir)
            .arg("-A")
            .arg(file))?;
        Ok(sizes
            .lines()
            .filter_map(|l| {
                let mut w = l.split_whitespace();
                Some((w.next()?.to_string(), w.next()?.parse().ok()?))
            })
            .collect())
    }

    /// `.text`, `.data` and `.bss` bytes of a linked program.
    fn sections(&self, elf: &Path) -> Result<(usize, usize, usize), OnChipError> {
        let s = self.size(&elf.to_string_lossy())?;
        let get = |n: &str| s.iter().find(|(k, _)| k == n).map_or(0, |e| e.1);
        Ok((get(".text"), get(".data"), get(".bss")))
    }

    /// The model object's code (`.text*`) and constant (`.rodata*`, `.progmem*`) bytes.
    fn object_split(&self, obj: &str) -> Result<(usize, usize), OnChipError> {
        let s = self.size(obj)?;
        let sum = |p: &[&str]| -> usize {
            s.iter()
                .filter(|(k, _)| p.iter().any(|p| k.starts_with(p)))
                .map(|e| e.1)
                .sum()
        };
        Ok((sum(&[".text"]), sum(&[".rodata", ".progmem"])))
    }
}

/// A number `model.h` defines.
fn header_define(dir: &Path, name: &str) -> usize {
    let h = std::fs::read_to_string(dir.join("model.h")).unwrap_or_default();
    let key = format!("#define {name} ");
    (h.lines().find_map(|l| l.strip_prefix(&key)))
        .and_then(|v| v.trim().trim_end_matches('u').parse().ok())
        .unwrap_or(0)
}

/// `layer K: N` lines.
fn parse_layers(text: &str) -> Vec<(usize, u64)> {
    text.lines()
        .filter_map(|l| {
            let (k, n) = l.strip_prefix("layer ")?.split_once(": ")?;
            Some((k.parse().ok()?, n.trim().parse().ok()?))
        })
        .collect()
}

/// The kernel indices of `entry`'s body in the order it calls them.
fn marker_order(source: &str, entry: &str) -> Vec<usize> {
    let head = format!("int {entry}(");
    (source.lines())
        .skip_while(|l| !l.starts_with(&head))
        .take_while(|l| *l != "}")
        .filter_map(|l| {
            l.trim()
                .strip_prefix("KILN_LAYER_BEGIN(")?
                .split(')')
                .next()?
                .parse()
                .ok()
        })
        .collect()
}

/// Node name and op of each kernel `k<index>`, from the comment above its definition.
fn kernel_names(source: &str) -> Vec<(String, String)> {
    let mut names = Vec::new();
    let mut last = None;
    for l in source.lines() {
        if let Some(rest) = l.strip_prefix("/* node `") {
            last = rest
                .rsplit_once("` (")
                .map(|(n, r)| (n.to_string(), r.split(')').next().unwrap_or("").to_string()));
        } else if let Some(k) = (l.strip_prefix("static void k"))
            .or_else(|| l.strip_prefix("KILN_KERNEL k"))
            .and_then(|r| r.split('(').next()?.parse::<usize>().ok())
        {
            if names.len() <= k {
                names.resize(k + 1, Default::default());
            }
            names[k] = last.take().unwrap_or_default();
        }
    }
    names
}

/// The outputs and peak stack the harness printed after its `K` marker.
fn parse_console(g: &Graph, stdout: &str, int: bool) -> Result<(Vec<Tensor>, usize), OnChipError> {
    let bad = |why: String| OnChipError::Tool(format!("{why}; the program printed:\n{stdout}"));
    let body = stdout
        .split("K\n")
        .nth(1)
        .ok_or_else(|| bad("no output marker".into()))?;
    let lines: Vec<&str> = body.lines().collect();
    if lines.first() != Some(&"00") {
        return Err(bad(format!("the model returned {:?}", lines.first())));
    }
    let bytes = |s: &str| -> Vec<u8> {
        (0..s.len() / 2)
            .filter_map(|i| u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok())
            .collect()
    };
    let outs = read_back(g, int);
    let mut outputs = Vec::new();
    for (i, &v) in outs.iter().enumerate() {
        let ty = &g.value(v).ty;
        let d = kiln_ir::Data::from_le_bytes(ty.dtype.scalar, &bytes(lines.get(1 + i).unwrap_or(&"")))
            .ok_or_else(|| bad(format!("output {i} has the wrong size")))?;
        outputs.push(Tensor::new(ty.shape.clone(), d));
    }
    let stack = usize::from_str_radix(lines.get(1 + outs.len()).unwrap_or(&"0"), 16).unwrap_or(0);
    Ok((outputs, stack))
}

/// Integer inputs and outputs of `model_run_int`.
pub type IntPorts = (Vec<Tensor>, Vec<Tensor>);

/// The integer buffers of `model_run_int` for float `inputs`, as the evaluator computes
/// them: what the boundary Quantize nodes make of the inputs, and the integers before each
/// output's Dequantize. `None` without an integer boundary.
pub fn int_ports(g: &Graph, inputs: &[Tensor]) -> Result<Option<IntPorts>, kiln_ir::IrError> {
    let Some(api) = kiln_backends::header::int_boundary(g) else {
        return Ok(None);
    };
    let ports: Vec<kiln_ir::ValueId> = api.inputs.iter().chain(&api.outputs).map(|q| q.value).collect();
    let mut got = vec![None; ports.len()];
    kiln_ir::eval::run_observed(g, inputs, |v, t| {
        if let Some(i) = ports.iter().position(|&p| p == v) {
            got[i] = Some(t.clone());
        }
    })?;
    let Some(mut all) = got.into_iter().collect::<Option<Vec<Tensor>>>() else {
        return Ok(None);
    };
    let outs = all.split_off(api.inputs.len());
    Ok(Some((all, outs)))
}

/// How far a float output may be from the evaluator's, relative to the output's range
/// (the largest |value| the evaluator gives): the parts' float arithmetic rounds as IEEE
/// single precision does, but exp, sqrt and the order of sums may differ in the last bits.
pub const FLOAT_TOLERANCE: f64 = 1e-5;

/// How a program's outputs compare with the evaluator's.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Agreement {
    /// Every output equal bit for bit.
    pub exact: bool,
    /// The largest |difference| of a float output, and it as a share of that output's range.
    pub max_abs: f64,
    pub of_range: f64,
}

/// Checks `got` against the evaluator's `want`: integer outputs bit for bit, float ones
/// within [`FLOAT_TOLERANCE`] of their range. The error names the first output that is not.
pub fn agree(got: &[Tensor], want: &[Tensor]) -> Result<Agreement, String> {
    let mut a = Agreement {
        exact: true,
        max_abs: 0.0,
        of_range: 0.0,
    };
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        if g.data.to_le_bytes() == w.data.to_le_bytes() {
            continue;
        }
        a.exact = false;
        if !w.data.scalar().is_float() || g.shape != w.shape {
            let (gv, wv) = (g.to_i64_vec(), w.to_i64_vec());
            let k = gv.iter().zip(&wv).position(|(x, y)| x != y).unwrap_or(0);
            return Err(format!(
                "output {i}: element {k} is {:?}, the evaluator gives {:?}",
                gv.get(k),
                wv.get(k)
            ));
        }
        let (gv, wv) = (g.to_f64_vec(), w.to_f64_vec());
        let range = wv.iter().filter(|v| v.is_finite()).fold(0f64, |m, v| m.max(v.abs()));
        for (k, (x, y)) in gv.iter().zip(&wv).enumerate() {
            let d = if x.is_nan() && y.is_nan() { 0.0 } else { (x - y).abs() };
            let share = if range > 0.0 { d / range } else { d };
            if share.is_nan() || share > FLOAT_TOLERANCE {
                return Err(format!(
                    "output {i}: element {k} is {x}, the evaluator gives {y} (off by {:.2e} of the output's range, {FLOAT_TOLERANCE:e} allowed)",
                    share
                ));
            }
            a.max_abs = a.max_abs.max(d);
            a.of_range = a.of_range.max(share);
        }
    }
    Ok(a)
}

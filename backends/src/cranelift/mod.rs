//! The Cranelift backend: a planned graph becomes one relocatable object with a kernel
//! function per node (each in its own section, so the linker drops what is unused), the
//! weights in read-only data, and one exported `<prefix>_run` that calls the kernels in
//! schedule order on caller buffers and the arena.

pub mod cpu;
mod fx;
mod kernels;
mod x64;

use cranelift_codegen::ir::types::{I32, I64};
use cranelift_codegen::ir::{AbiParam, FuncRef, InstBuilder, Signature, UserFuncName};
use cranelift_codegen::isa::CallConv;
use cranelift_codegen::settings::{self, Configurable};
use cranelift_codegen::{Context, isa};
use cranelift_frontend::{FunctionBuilder, FunctionBuilderContext};
use cranelift_module::{DataDescription, DataId, FuncId, Linkage, Module};
use cranelift_object::{ObjectBuilder, ObjectModule};
pub use kernels::Dot;
use kernels::{Args, Target};
use kiln_ir::plan::{Location, MemoryPlan};
use kiln_ir::{Graph, ValueId};
use std::collections::HashMap;
use target_lexicon::{Architecture, Triple};
use thiserror::Error;

/// Alignment of the arena and of every tensor in it (one 128-bit vector).
pub const ARENA_ALIGN: usize = 16;

#[derive(Debug, Error)]
pub enum Error {
    #[error(
        "target `{triple}` is not supported by the native backend: {reason} (supported: x86_64, aarch64 and riscv64 Linux, e.g. x86_64-unknown-linux-gnu)"
    )]
    UnsupportedTarget { triple: String, reason: String },
    #[error("{count} node(s) the native backend cannot compile yet:{list}", count = .0.len(), list = .0.iter().map(|s| format!("\n  {s}")).collect::<String>())]
    UnsupportedOps(Vec<String>),
    #[error("code generation failed in `{function}`: {msg}")]
    Codegen { function: String, msg: String },
    #[error("--target-cpu `{spec}`: {reason}")]
    BadCpu { spec: String, reason: String },
}

/// What to build for.
#[derive(Clone, Debug)]
pub struct Options {
    pub triple: Triple,
    /// Symbol prefix: `<prefix>_run`.
    pub prefix: String,
    /// CPU features beyond the portable default (`--target-cpu`, see [`cpu::apply`]).
    pub cpu: Option<String>,
}

/// The emitted object file and, for review, the CLIF of every function.
pub struct Output {
    pub object: Vec<u8>,
    pub clif: String,
    /// The CPU features the object assumes (`<prefix>_run` checks them).
    pub features: Vec<&'static str>,
}

/// Checks the target and returns the Cranelift ISA for it, with the features `cpu` names
/// on top of the portable default.
pub fn target_isa(triple: &Triple, cpu: Option<&str>) -> Result<isa::OwnedTargetIsa, Error> {
    let unsupported = |reason: &str| Error::UnsupportedTarget {
        triple: triple.to_string(),
        reason: reason.into(),
    };
    if !matches!(
        triple.architecture,
        Architecture::X86_64 | Architecture::Aarch64(_) | Architecture::Riscv64(_)
    ) {
        return Err(unsupported("architecture"));
    }
    let mut flags = settings::builder();
    flags
        .set("opt_level", "speed")
        .map_err(|e| unsupported(&e.to_string()))?;
    flags.set("is_pic", "true").map_err(|e| unsupported(&e.to_string()))?;
    let mut builder = isa::lookup(triple.clone()).map_err(|e| unsupported(&e.to_string()))?;
    if triple.architecture == Architecture::X86_64 {
        // x86-64-v2 (every x86-64 CPU since about 2009): SSE4.1 gives native float rounding,
        // so objects never call libm's nearbyintf/floorf.
        for f in ["has_sse3", "has_ssse3", "has_sse41", "has_sse42", "has_popcnt"] {
            builder.enable(f).map_err(|e| unsupported(&e.to_string()))?;
        }
    }
    if let Some(spec) = cpu {
        cpu::apply(&mut builder, triple, spec).map_err(|reason| Error::BadCpu {
            spec: spec.to_string(),
            reason,
        })?;
    }
    builder
        .finish(settings::Flags::new(flags))
        .map_err(|e| unsupported(&e.to_string()))
}

/// Scratch bytes each node's kernel needs (give this to the memory planner), for a CPU
/// with dot product `dot` ([`dot_product`]).
pub fn scratch_bytes(g: &Graph, n: kiln_ir::NodeId, dot: Option<kernels::Dot>) -> usize {
    kernels::scratch_bytes(g, n, dot)
}

/// The byte dot product objects for `triple` with `cpu` features use, if any.
pub fn dot_product(triple: &Triple, cpu: Option<&str>) -> Option<kernels::Dot> {
    let isa = target_isa(triple, cpu).ok()?;
    kernels::Dot::of(triple.architecture, &cpu::assumed(&*isa))
}

/// Every node this backend cannot compile, described.
pub fn unsupported(g: &Graph, plan: &MemoryPlan) -> Vec<String> {
    plan.order.iter().filter_map(|&n| kernels::unsupported(g, n)).collect()
}

fn codegen_err(function: &str, e: impl std::fmt::Display) -> Error {
    Error::Codegen {
        function: function.to_string(),
        msg: e.to_string(),
    }
}

pub fn emit(g: &Graph, plan: &MemoryPlan, opts: &Options) -> Result<Output, Error> {
    let isa = target_isa(&opts.triple, opts.cpu.as_deref())?;
    let features = cpu::assumed(&*isa);
    cpu::checkable(&opts.triple, &features).map_err(|reason| Error::BadCpu {
        spec: opts.cpu.clone().unwrap_or_default(),
        reason,
    })?;
    let bad = unsupported(g, plan);
    if !bad.is_empty() {
        return Err(Error::UnsupportedOps(bad));
    }
    let target = Target {
        simd: !matches!(opts.triple.architecture, Architecture::Riscv64(_)),
        dot: kernels::Dot::of(opts.triple.architecture, &features),
        fma: match opts.triple.architecture {
            Architecture::X86_64 => features.contains(&"fma"),
            Architecture::Aarch64(_) => true,
            _ => false,
        },
        wide: opts.triple.architecture == Architecture::X86_64
            && features.contains(&"avx2")
            && features.contains(&"fma"),
    };
    let (ptr, call_conv, fcfg) = (isa.pointer_type(), isa.default_call_conv(), isa.frontend_config());
    let mut builder = ObjectBuilder::new(
        isa,
        opts.prefix.as_bytes().to_vec(),
        cranelift_module::default_libcall_names(),
    )
    .map_err(|e| codegen_err("<object>", e))?;
    builder.per_function_section(true);
    let mut u = Unit {
        module: ObjectModule::new(builder),
        fctx: FunctionBuilderContext::new(),
        clif: String::new(),
        prefix: &opts.prefix,
        target,
        ptr,
        call_conv,
        fcfg,
        const_data: HashMap::new(),
        codes: HashMap::new(),
    };
    let cpu_ok = cpu::define_check(&mut u.module, &mut u.fctx, &opts.prefix, &features)
        .map_err(|e| codegen_err(&format!("{}_cpu_ok", opts.prefix), e))?;
    let kernels: Vec<Kernel> = (plan.order.iter().enumerate())
        .map(|(idx, &n)| u.kernel(g, n, idx))
        .collect::<Result<_, _>>()?;
    // <prefix>_run(inputs..., outputs..., arena) -> i32, and for a fully quantized model
    // <prefix>_run_int on int8 buffers: the boundary Quantize/Dequantize nodes become copies
    // at the same point of the schedule, so the memory plan holds.
    let int_api = crate::header::int_boundary(g);
    for int in std::iter::once(None).chain(int_api.as_ref().map(Some)) {
        u.entry(g, plan, int, &kernels, cpu_ok)?;
    }
    let Unit { module, clif, .. } = u;
    let object = module.finish().emit().map_err(|e| codegen_err("<object>", e))?;
    Ok(Output { object, clif, features })
}

/// A kernel function: its id and per-kernel tables.
struct Kernel {
    id: FuncId,
    aux: Vec<DataId>,
}

/// The object being built: the module, the function builder's state, the CLIF text and
/// the read-only data of the constants kernels read.
struct Unit<'a> {
    module: ObjectModule,
    fctx: FunctionBuilderContext,
    clif: String,
    prefix: &'a str,
    target: Target,
    ptr: cranelift_codegen::ir::Type,
    call_conv: cranelift_codegen::isa::CallConv,
    fcfg: cranelift_codegen::isa::TargetFrontendConfig,
    const_data: HashMap<ValueId, DataId>,
    /// Hand-encoded machine code kernels call, by its bytes ([`Codes`]).
    codes: HashMap<Vec<u8>, FuncId>,
}

/// Defines the machine code kernels ask for (see `x64`), each distinct code once.
struct Codes<'m> {
    module: &'m mut ObjectModule,
    prefix: &'m str,
    defined: &'m mut HashMap<Vec<u8>, FuncId>,
}

impl fx::CodeSink for Codes<'_> {
    fn func(&mut self, code: &[u8], params: usize, func: &mut cranelift_codegen::ir::Function) -> FuncRef {
        let id = match self.defined.get(code) {
            Some(&id) => id,
            None => {
                let mut sig = Signature::new(CallConv::SystemV);
                sig.params.extend((0..params).map(|_| AbiParam::new(I64)));
                let name = format!("{}_code{}", self.prefix, self.defined.len());
                // A failure here is a backend bug; the kernel's caller turns it into an error.
                let id = (self.module.declare_function(&name, Linkage::Local, &sig)).expect("a fresh local name");
                (self.module.define_function_bytes(id, 32, code, &[])).expect("machine code defined once");
                self.defined.insert(code.to_vec(), id);
                id
            }
        };
        self.module.declare_func_in_func(id, func)
    }
}

impl Unit<'_> {
    /// Read-only data `name` holding `bytes`.
    fn data(&mut self, name: &str, bytes: Vec<u8>) -> Result<DataId, Error> {
        data_in(&mut self.module, name, bytes)
    }

    /// Defines the function of node `n` (the `idx`-th of the schedule), with the constants
    /// it reads (once per value) and its tables as read-only data.
    fn kernel(&mut self, g: &Graph, n: kiln_ir::NodeId, idx: usize) -> Result<Kernel, Error> {
        let node = g.node(n);
        for (slot, &v) in node.inputs.iter().enumerate() {
            if let Some(t) = g.const_value(v)
                && kernels::reads_input(g, n, slot, self.target.dot)
                && !self.const_data.contains_key(&v)
            {
                let bytes = match kiln_ir::analysis::packed_weight_bits(g, v) {
                    Some(bits) => kernels::pack_bytes(&t.data.to_le_bytes(), bits),
                    None => t.data.to_le_bytes(),
                };
                let id = self.data(&format!("{}_const{}", self.prefix, v.index()), bytes)?;
                self.const_data.insert(v, id);
            }
        }
        let aux: Vec<DataId> = (kernels::aux_data(g, n, self.target).into_iter().enumerate())
            .map(|(k, bytes)| self.data(&format!("{}_k{idx}_table{k}", self.prefix), bytes))
            .collect::<Result<_, _>>()?;
        let n_args = node.inputs.len() + node.outputs.len() + 1 + aux.len();
        let mut sig = Signature::new(self.call_conv);
        sig.params.extend((0..n_args).map(|_| AbiParam::new(self.ptr)));
        let name = format!("{}_k{idx}_{}", self.prefix, node.op.name().to_ascii_lowercase());
        let fid = (self.module)
            .declare_function(&name, Linkage::Local, &sig)
            .map_err(|e| codegen_err(&name, e))?;
        let mut ctx = Context::new();
        ctx.func.signature = sig;
        ctx.func.name = UserFuncName::user(0, fid.as_u32());
        {
            let mut b = FunctionBuilder::new(&mut ctx.func, &mut self.fctx);
            let entry = b.create_block();
            b.append_block_params_for_function_params(entry);
            b.switch_to_block(entry);
            b.seal_block(entry);
            let p = b.block_params(entry).to_vec();
            let (ni, no) = (node.inputs.len(), node.outputs.len());
            let args = Args {
                ins: p[..ni].to_vec(),
                outs: p[ni..ni + no].to_vec(),
                scratch: p[ni + no],
                aux: p[ni + no + 1..].to_vec(),
            };
            let (target, fcfg) = (self.target, self.fcfg);
            let mut codes = Codes {
                module: &mut self.module,
                prefix: self.prefix,
                defined: &mut self.codes,
            };
            // A kernel bug must surface as an error naming the node, not abort the caller.
            let built = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                let mut f = fx::Fx::new(&mut b, target.simd);
                if target.wide {
                    f.code = Some(&mut codes);
                }
                kernels::emit(&mut f, g, n, &args, target);
                b.ins().return_(&[]);
                b.finalize(fcfg);
            }));
            if built.is_err() {
                return Err(codegen_err(
                    &name,
                    format!("internal error emitting node `{}`", node.name),
                ));
            }
        }
        self.clif.push_str(&format!(
            "; {name}: node `{}`\n{}\n",
            crate::text::comment(&node.name),
            ctx.func.display()
        ));
        let module = &mut self.module;
        let defined = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            module.define_function(fid, &mut ctx).map_err(|e| format!("{e:?}"))
        }))
        .map_err(|_| codegen_err(&name, format!("internal error compiling node `{}`", node.name)))?;
        defined.map_err(|e| codegen_err(&name, e))?;
        Ok(Kernel { id: fid, aux })
    }

    /// Defines `<prefix>_run`, or with `int` `<prefix>_run_int`: the CPU check, one call
    /// per kernel over the planned arena, and copies of outputs no node wrote.
    fn entry(
        &mut self,
        g: &Graph,
        plan: &MemoryPlan,
        int: Option<&crate::header::IntApi>,
        kernels: &[Kernel],
        cpu_ok: Option<FuncId>,
    ) -> Result<(), Error> {
        let (ptr, simd) = (self.ptr, self.target.simd);
        let n_params = g.inputs().len() + g.outputs().len() + 1;
        let mut sig = Signature::new(self.call_conv);
        sig.params.extend((0..n_params).map(|_| AbiParam::new(ptr)));
        sig.returns.push(AbiParam::new(I32));
        let run_name = match int {
            Some(_) => format!("{}_run_int", self.prefix),
            None => format!("{}_run", self.prefix),
        };
        let run_id = (self.module)
            .declare_function(&run_name, Linkage::Export, &sig)
            .map_err(|e| codegen_err(&run_name, e))?;
        let mut ctx = Context::new();
        ctx.func.signature = sig;
        ctx.func.name = UserFuncName::user(0, run_id.as_u32());
        {
            let mut b = FunctionBuilder::new(&mut ctx.func, &mut self.fctx);
            let entry = b.create_block();
            b.append_block_params_for_function_params(entry);
            b.switch_to_block(entry);
            b.seal_block(entry);
            let params = b.block_params(entry).to_vec();
            let arena = params[n_params - 1];
            if let Some(check) = cpu_ok {
                // A CPU without the assumed features gets an error code, not SIGILL.
                let f = self.module.declare_func_in_func(check, b.func);
                let call = b.ins().call(f, &[]);
                let ok = b.inst_results(call)[0];
                let is_ok = b
                    .ins()
                    .icmp_imm_u(cranelift_codegen::ir::condcodes::IntCC::Equal, ok, 1);
                let (go, stop) = (b.create_block(), b.create_block());
                b.ins().brif(is_ok, go, &[], stop, &[]);
                b.switch_to_block(stop);
                b.seal_block(stop);
                let code = b.ins().iconst(I32, cpu::ERR_CPU as i64);
                b.ins().return_(&[code]);
                b.switch_to_block(go);
                b.seal_block(go);
            }
            let mut gv_cache: HashMap<DataId, cranelift_codegen::ir::Value> = HashMap::new();
            let mut data_addr = |b: &mut FunctionBuilder, module: &mut ObjectModule, id: DataId| {
                *gv_cache.entry(id).or_insert_with(|| {
                    let gv = module.declare_data_in_func(id, b.func);
                    b.ins().symbol_value(ptr, gv)
                })
            };
            for (&n, k) in plan.order.iter().zip(kernels) {
                let node = g.node(n);
                if let Some(int) = int {
                    let arena_at = |b: &mut FunctionBuilder, v| match plan.loc(v) {
                        Location::Arena(off) => Some(b.ins().iadd_imm_s(arena, off as i64)),
                        _ => None,
                    };
                    if let Some(i) = int.inputs.iter().position(|q| q.node == n) {
                        let v = node.outputs[0];
                        let dst =
                            arena_at(&mut b, v).ok_or_else(|| codegen_err(&run_name, "int8 input not in the arena"))?;
                        let mut f = fx::Fx::new(&mut b, simd);
                        copy_bytes(&mut f, params[i], dst, g.value(v).ty.bytes() as i64);
                        continue;
                    }
                    if let Some(j) = int.outputs.iter().position(|q| q.node == n) {
                        let v = node.inputs[0];
                        let src = arena_at(&mut b, v)
                            .ok_or_else(|| codegen_err(&run_name, "int8 output not in the arena"))?;
                        let mut f = fx::Fx::new(&mut b, simd);
                        copy_bytes(&mut f, src, params[g.inputs().len() + j], g.value(v).ty.bytes() as i64);
                        continue;
                    }
                }
                let mut args = Vec::new();
                for (slot, &v) in node.inputs.iter().chain(&node.outputs).enumerate() {
                    let a = match plan.loc(v) {
                        Location::Input(i) => params[i],
                        Location::Output(i) => params[g.inputs().len() + i],
                        Location::Arena(off) => b.ins().iadd_imm_s(arena, off as i64),
                        Location::Const(c) => match self.const_data.get(&c) {
                            Some(&id) => data_addr(&mut b, &mut self.module, id),
                            None => {
                                debug_assert!(!kernels::reads_input(g, n, slot, self.target.dot));
                                b.ins().iconst(ptr, 0)
                            }
                        },
                    };
                    args.push(a);
                }
                let scratch = match plan.scratch.get(&n) {
                    Some(&off) => b.ins().iadd_imm_s(arena, off as i64),
                    None => b.ins().iconst(ptr, 0),
                };
                args.push(scratch);
                for &d in &k.aux {
                    args.push(data_addr(&mut b, &mut self.module, d));
                }
                let fref = self.module.declare_func_in_func(k.id, b.func);
                b.ins().call(fref, &args);
            }
            // Outputs not written by a node (constants, or one value listed twice) are copied.
            for (i, &v) in g.outputs().iter().enumerate() {
                if int.is_some() {
                    break; // every output came from a boundary Dequantize, copied above
                }
                let dst = params[g.inputs().len() + i];
                let src = match plan.loc(v) {
                    Location::Output(j) if j == i => continue,
                    Location::Output(j) => params[g.inputs().len() + j],
                    Location::Input(j) => params[j],
                    Location::Arena(off) => b.ins().iadd_imm_s(arena, off as i64),
                    Location::Const(c) => {
                        let t = g.const_value(c).expect("constant");
                        let name = format!("{}_out{i}", self.prefix);
                        let id = data_in(&mut self.module, &name, t.data.to_le_bytes())?;
                        let gv = self.module.declare_data_in_func(id, b.func);
                        b.ins().symbol_value(ptr, gv)
                    }
                };
                let mut f = fx::Fx::new(&mut b, simd);
                copy_bytes(&mut f, src, dst, g.value(v).ty.bytes() as i64);
            }
            let zero = b.ins().iconst(I32, 0);
            b.ins().return_(&[zero]);
            b.finalize(self.fcfg);
        }
        self.clif.push_str(&format!("; {run_name}\n{}\n", ctx.func.display()));
        (self.module)
            .define_function(run_id, &mut ctx)
            .map_err(|e| codegen_err(&run_name, format!("{e:?}")))?;
        Ok(())
    }
}

/// Read-only data `name` holding `bytes` in `module` (`Unit::data`, callable while a
/// function builder borrows the unit's other fields).
fn data_in(module: &mut ObjectModule, name: &str, bytes: Vec<u8>) -> Result<DataId, Error> {
    let id = module
        .declare_data(name, Linkage::Local, false, false)
        .map_err(|e| codegen_err(name, e))?;
    let mut d = DataDescription::new();
    d.define(bytes.into_boxed_slice());
    d.set_align(ARENA_ALIGN as u64);
    module.define_data(id, &d).map_err(|e| codegen_err(name, e))?;
    Ok(id)
}

/// Copies `bytes` bytes from `src` to `dst`.
fn copy_bytes(f: &mut fx::Fx, src: cranelift_codegen::ir::Value, dst: cranelift_codegen::ir::Value, bytes: i64) {
    let flags = cranelift_codegen::ir::MemFlagsData::new().with_notrap();
    f.for_n(bytes, &mut |f, k| {
        let sa = f.b.ins().iadd(src, k);
        let x = f.b.ins().load(cranelift_codegen::ir::types::I8, flags, sa, 0);
        let da = f.b.ins().iadd(dst, k);
        f.b.ins().store(flags, x, da, 0);
    });
}

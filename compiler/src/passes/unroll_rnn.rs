//! Unrolls RNN, GRU and LSTM over their (static) time steps into the ops each step is made
//! of, before int8 calibration: per gate one product with the input and one with the hidden
//! state (each with its own calibrated range), their sum, the gate activation, and the
//! elementwise products of the cell update. Every one of those has an integer form (a
//! product, QAdd, QMul, an int8 table), so a recurrent layer becomes integer code with the
//! arithmetic of the ops it is made of and needs no integer kernel of its own; the price is
//! code per step, so sequences longer than `MAX_STEPS` stay as they are. A zero initial
//! state drops the terms it would multiply.

use kiln_ir::op::{BinaryOp, Rnn, RnnDirection, RnnKind, SliceAxis, UnaryOp};
use kiln_ir::{DType, Graph, IrError, NodeId, Op, Scalar, Tensor, TensorType, ValueId};

/// Longest sequence unrolled.
pub const MAX_STEPS: usize = 64;

pub fn run(g: &mut Graph) -> Result<bool, IrError> {
    run_where(g, |_| true)
}

/// [`run`] on the recurrent nodes `pick` accepts.
pub fn run_where(g: &mut Graph, pick: impl Fn(&kiln_ir::Node) -> bool) -> Result<bool, IrError> {
    let mut changed = false;
    for n in g.topo_order()? {
        let Op::Rnn(r) = &g.node(n).op else { continue };
        if !pick(g.node(n)) {
            continue;
        }
        let r = r.clone();
        if let Ok(u) = Unroller::new(g, n, &r) {
            let outs = u.build(g);
            let old = g.node(n).outputs.clone();
            for (o, new) in old.into_iter().zip(outs) {
                replace(g, o, new);
            }
            changed = true;
        }
    }
    if changed {
        super::eliminate_dead_nodes::run(g)?;
    }
    Ok(changed)
}

/// Why recurrent node `n` is not written out (`None` when it is, or is not recurrent).
pub fn refusal(g: &Graph, n: NodeId) -> Option<&'static str> {
    let Op::Rnn(r) = &g.node(n).op else { return None };
    Unroller::new(g, n, r).err()
}

/// Points every reader of `old` (and the graph outputs) at `new`, which takes its name.
fn replace(g: &mut Graph, old: ValueId, new: ValueId) {
    g.replace_uses(old, new);
    let outputs: Vec<ValueId> = g.outputs().iter().map(|&o| if o == old { new } else { o }).collect();
    g.set_outputs(outputs);
    let name = g.value(old).name.clone();
    g.rename(old, &format!("{name}:rolled"));
    g.rename(new, &name);
}

/// What one recurrent node needs to be written out.
struct Unroller {
    r: Rnn,
    base: String,
    x: ValueId,
    seq: usize,
    batch: usize,
    input: usize,
    w: Vec<f32>,
    rw: Vec<f32>,
    b: Vec<f32>,
    h0: ValueId,
    c0: Option<ValueId>,
    peep: Option<Vec<f32>>,
    acts: Vec<UnaryOp>,
}

impl Unroller {
    fn new(g: &Graph, n: NodeId, r: &Rnn) -> Result<Unroller, &'static str> {
        let node = g.node(n);
        let f32s = (node.inputs.iter().chain(&node.outputs)).all(|&v| g.value(v).ty.dtype.scalar == Scalar::F32);
        let xs = &g.value(node.inputs[0]).ty.shape;
        let (seq, batch) = if r.batch_major { (xs[1], xs[0]) } else { (xs[0], xs[1]) };
        let lstm = matches!(r.kind, RnnKind::Lstm { .. });
        let cst = |i: usize| {
            (node.inputs.get(i).and_then(|&v| g.const_value(v)))
                .map(|t| t.to_f32_vec())
                .ok_or("its weights are not constants")
        };
        let acts = (r.activations.iter().map(|&a| a.unary()))
            .collect::<Option<Vec<_>>>()
            .ok_or("an Affine or ScaledTanh gate activation is not written out")?;
        let peep = match node.inputs.get(6) {
            Some(_) if lstm => Some(cst(6)?).filter(|p| p.iter().any(|&v| v != 0.0)),
            _ => None,
        };
        if !f32s {
            return Err("its values are not f32");
        }
        if seq == 0 || seq > MAX_STEPS {
            return Err("sequences longer than 64 steps are not written out step by step");
        }
        Ok(Unroller {
            r: r.clone(),
            base: node.name.clone(),
            x: node.inputs[0],
            seq,
            batch,
            input: xs[2],
            w: cst(1)?,
            rw: cst(2)?,
            b: cst(3)?,
            h0: node.inputs[4],
            c0: if lstm { Some(node.inputs[5]) } else { None },
            peep,
            acts,
        })
    }

    fn gates(&self) -> usize {
        match self.r.kind {
            RnnKind::Rnn => 1,
            RnnKind::Gru { .. } => 3,
            RnnKind::Lstm { .. } => 4,
        }
    }

    /// `[Y, Y_h]` (+ `Y_c`) of the unrolled layer.
    fn build(&self, g: &mut Graph) -> Vec<ValueId> {
        let (h, dirs) = (self.r.hidden, self.r.direction.count());
        let mut e = Emit { g, base: &self.base };
        let mut ys = Vec::new();
        let (mut hs, mut cs) = (Vec::new(), Vec::new());
        for d in 0..dirs {
            let reverse = self.r.direction == RnnDirection::Reverse || d == 1;
            let bm = self.r.batch_major;
            let mut hv = e.state(self.h0, d, (self.batch, h), bm);
            let mut cv = self.c0.and_then(|c| e.state(c, d, (self.batch, h), bm));
            let proj: Vec<ValueId> = (0..self.gates()).map(|k| self.projection(&mut e, d, k)).collect();
            let mut steps = vec![None; self.seq];
            for s in 0..self.seq {
                let t = if reverse { self.seq - 1 - s } else { s };
                let gx: Vec<ValueId> = proj.iter().map(|&p| e.step_rows(self, p, t)).collect();
                let (nh, nc) = self.cell(&mut e, d, &gx, hv, cv);
                hv = Some(nh);
                cv = nc;
                steps[t] = Some(nh);
            }
            ys.push(steps.into_iter().map(|v| v.expect("every step")).collect::<Vec<_>>());
            hs.push(hv.expect("at least one step"));
            cs.extend(cv);
        }
        let (b, s) = (self.batch, self.seq);
        // Y: [seq, dirs, b, h] or [b, seq, dirs, h]; states [dirs, b, h] or [b, dirs, h]
        let (one, y_axes, st_one, st_axis) = if self.r.batch_major {
            (vec![b, 1, 1, h], (1, 2), vec![b, 1, h], 1)
        } else {
            (vec![1, 1, b, h], (0, 1), vec![1, b, h], 0)
        };
        let per_dir: Vec<ValueId> = (ys.iter())
            .map(|steps| {
                let parts: Vec<ValueId> = steps.iter().map(|&v| e.reshape(v, &one)).collect();
                let mut shape = one.clone();
                shape[y_axes.0] = s;
                e.concat(parts, y_axes.0, shape)
            })
            .collect();
        let mut yshape = one.clone();
        yshape[y_axes.0] = s;
        yshape[y_axes.1] = dirs;
        let y = e.concat(per_dir, y_axes.1, yshape);
        let mut sshape = st_one.clone();
        sshape[st_axis] = dirs;
        let states = |e: &mut Emit, vs: Vec<ValueId>| {
            let parts = vs.iter().map(|&v| e.reshape(v, &st_one)).collect();
            e.concat(parts, st_axis, sshape.clone())
        };
        let mut out = vec![y, states(&mut e, hs)];
        if self.c0.is_some() {
            out.push(states(&mut e, cs));
        }
        out
    }

    /// Gate `k`'s input projection of every step of direction `d` at once,
    /// `x W_k^T + Wb_k` (`+ Rb_k` but for GRU's candidate gate, whose recurrent bias sits
    /// inside the reset product): `[seq * b, hidden]` in the order of X's rows.
    fn projection(&self, e: &mut Emit, d: usize, k: usize) -> ValueId {
        let hid = self.r.hidden;
        let mut bias = self.bias(d, k, false);
        if !(matches!(self.r.kind, RnnKind::Gru { .. }) && k == 2) {
            for (b, r) in bias.iter_mut().zip(self.bias(d, k, true)) {
                *b += r;
            }
        }
        let rows = e.reshape(self.x, &[self.seq * self.batch, self.input]);
        e.gemm(rows, self.rows(&self.w, d, k, self.input), self.input, hid, Some(bias))
    }

    /// One step of direction `d` from the gates' input projections `gx` `[b, hidden]` and
    /// the state `h` (`None`: zero).
    fn cell(
        &self,
        e: &mut Emit,
        d: usize,
        gx: &[ValueId],
        h: Option<ValueId>,
        c: Option<ValueId>,
    ) -> (ValueId, Option<ValueId>) {
        let hid = self.r.hidden;
        let per = self.r.activations.len() / self.r.direction.count();
        let acts = &self.acts[d * per..(d + 1) * per];
        // pre-activation of gate `k`: its input projection + h R_k^T
        let pre = |e: &mut Emit, k: usize, with_h: Option<ValueId>| -> ValueId {
            let gx = gx[k];
            match with_h {
                Some(hv) => {
                    let rk = self.rows(&self.rw, d, k, hid);
                    let gh = e.gemm(hv, rk, hid, hid, None);
                    e.binary(BinaryOp::Add, gx, gh)
                }
                None => gx,
            }
        };
        let act = |e: &mut Emit, a: UnaryOp, v: ValueId| -> ValueId {
            let v = match self.r.clip {
                Some(cl) => e.unary(UnaryOp::Clip { min: -cl, max: cl }, v),
                None => v,
            };
            e.unary(a, v)
        };
        match self.r.kind {
            RnnKind::Rnn => {
                let p = pre(e, 0, h);
                (act(e, acts[0], p), None)
            }
            RnnKind::Lstm { input_forget } => {
                let peep = |e: &mut Emit, v: ValueId, k: usize, state: Option<ValueId>| match (&self.peep, state) {
                    (Some(p), Some(c)) => {
                        let pk = e.constant(&p[(d * 3 + k) * hid..][..hid], vec![hid]);
                        let pc = e.binary(BinaryOp::Mul, c, pk);
                        e.binary(BinaryOp::Add, v, pc)
                    }
                    _ => v,
                };
                let pi = pre(e, 0, h);
                let pi = peep(e, pi, 0, c);
                let i = act(e, acts[0], pi);
                let f = if input_forget {
                    let one = e.constant(&[1.0], vec![]);
                    e.binary(BinaryOp::Sub, one, i)
                } else {
                    let pf = pre(e, 2, h);
                    let pf = peep(e, pf, 2, c);
                    act(e, acts[0], pf)
                };
                let pg = pre(e, 3, h);
                let gg = act(e, acts[1], pg);
                let ig = e.binary(BinaryOp::Mul, i, gg);
                let nc = match c {
                    Some(c) => {
                        let fc = e.binary(BinaryOp::Mul, f, c);
                        e.binary(BinaryOp::Add, fc, ig)
                    }
                    None => ig,
                };
                let po = pre(e, 1, h);
                let po = peep(e, po, 1, Some(nc));
                let o = act(e, acts[0], po);
                let tc = e.unary(acts[2], nc);
                (e.binary(BinaryOp::Mul, o, tc), Some(nc))
            }
            RnnKind::Gru { linear_before_reset } => {
                let pz = pre(e, 0, h);
                let z = act(e, acts[0], pz);
                let pr = pre(e, 1, h);
                let r = act(e, acts[0], pr);
                let gx = gx[2];
                let rh = self.rows(&self.rw, d, 2, hid);
                let rb = self.bias(d, 2, true);
                let inner = match (h, linear_before_reset) {
                    (Some(hv), true) => {
                        let gh = e.gemm(hv, rh, hid, hid, Some(rb));
                        e.binary(BinaryOp::Mul, r, gh)
                    }
                    (Some(hv), false) => {
                        let rhv = e.binary(BinaryOp::Mul, r, hv);
                        e.gemm(rhv, rh, hid, hid, Some(rb))
                    }
                    // a zero state leaves only the recurrent bias of that term
                    (None, true) => {
                        let c = e.constant(&rb, vec![hid]);
                        e.binary(BinaryOp::Mul, r, c)
                    }
                    (None, false) => e.constant(&rb, vec![hid]),
                };
                let pn = e.binary(BinaryOp::Add, gx, inner);
                let hn = act(e, acts[1], pn);
                let one = e.constant(&[1.0], vec![]);
                let keep = e.binary(BinaryOp::Sub, one, z);
                let a = e.binary(BinaryOp::Mul, keep, hn);
                let nh = match h {
                    Some(hv) => {
                        let b = e.binary(BinaryOp::Mul, z, hv);
                        e.binary(BinaryOp::Add, a, b)
                    }
                    None => a,
                };
                (nh, None)
            }
        }
    }

    /// Gate `k`'s rows `[hidden, cols]` of the weights `m` of direction `d`.
    fn rows(&self, m: &[f32], d: usize, k: usize, cols: usize) -> Vec<f32> {
        let hid = self.r.hidden;
        m[((d * self.gates() + k) * hid) * cols..][..hid * cols].to_vec()
    }

    /// Gate `k`'s input (`recurrent = false`) or recurrent bias of direction `d`.
    fn bias(&self, d: usize, k: usize, recurrent: bool) -> Vec<f32> {
        let (hid, gates) = (self.r.hidden, self.gates());
        let at = d * 2 * gates * hid + if recurrent { gates * hid } else { 0 } + k * hid;
        self.b[at..][..hid].to_vec()
    }
}

/// Adds the nodes of one unrolled layer, named after it.
struct Emit<'a> {
    g: &'a mut Graph,
    base: &'a str,
}

impl Emit<'_> {
    fn shape(&self, v: ValueId) -> Vec<usize> {
        self.g.value(v).ty.shape.clone()
    }

    fn node(&mut self, what: &str, op: Op, inputs: Vec<ValueId>, shape: Vec<usize>) -> ValueId {
        let ty = TensorType::new(DType::plain(Scalar::F32), shape);
        let name = self.g.fresh_name(&format!("{}:{what}", self.base));
        self.g.add_node_typed(&name, op, inputs, vec![(name.clone(), ty)]).1[0]
    }

    fn constant(&mut self, v: &[f32], shape: Vec<usize>) -> ValueId {
        let name = self.g.fresh_name(&format!("{}:const", self.base));
        self.g.add_const(&name, Tensor::from_vec(shape, v.to_vec()))
    }

    fn unary(&mut self, u: UnaryOp, x: ValueId) -> ValueId {
        let s = self.shape(x);
        self.node(&u.name().to_lowercase(), Op::Unary(u), vec![x], s)
    }

    /// `a op b`, `b` broadcast to `a`'s shape.
    fn binary(&mut self, b: BinaryOp, x: ValueId, y: ValueId) -> ValueId {
        let (sx, sy) = (self.shape(x), self.shape(y));
        let s = if sx.len() >= sy.len() { sx } else { sy };
        self.node(&b.name().to_lowercase(), Op::Binary(b), vec![x, y], s)
    }

    /// `x [b, k] @ w^T` for `w` `[n, k]`, plus `bias` `[n]`.
    fn gemm(&mut self, x: ValueId, w: Vec<f32>, k: usize, n: usize, bias: Option<Vec<f32>>) -> ValueId {
        let rows = self.shape(x)[0];
        let mut ins = vec![x, self.constant(&w, vec![n, k])];
        if let Some(b) = bias {
            ins.push(self.constant(&b, vec![n]));
        }
        let op = Op::Gemm {
            alpha: 1.0,
            beta: 1.0,
            trans_a: false,
            trans_b: true,
            fused: None,
        };
        self.node("gemm", op, ins, vec![rows, n])
    }

    fn reshape(&mut self, x: ValueId, shape: &[usize]) -> ValueId {
        self.node(
            "reshape",
            Op::Reshape { shape: shape.to_vec() },
            vec![x],
            shape.to_vec(),
        )
    }

    fn concat(&mut self, parts: Vec<ValueId>, axis: usize, shape: Vec<usize>) -> ValueId {
        if parts.len() == 1 {
            return self.reshape(parts[0], &shape);
        }
        self.node("concat", Op::Concat { axis }, parts, shape)
    }

    /// Slice `[at, at + len)` of axis `axis` of `x`.
    fn slice(&mut self, x: ValueId, axis: usize, at: usize, len: usize) -> ValueId {
        let s = self.shape(x);
        let axes = (0..s.len())
            .map(|a| SliceAxis {
                start: if a == axis { at as i64 } else { 0 },
                step: 1,
                len: if a == axis { len } else { s[a] },
            })
            .collect();
        let mut shape = s;
        shape[axis] = len;
        self.node("slice", Op::Slice { axes }, vec![x], shape)
    }

    /// Direction `d`'s initial state `[b, h]` of `v` (`[dirs, b, h]`, or `[b, dirs, h]`
    /// batch-major), `None` when it is a constant zero.
    fn state(&mut self, v: ValueId, d: usize, (b, h): (usize, usize), batch_major: bool) -> Option<ValueId> {
        let dirs = self.shape(v)[if batch_major { 1 } else { 0 }];
        if let Some(t) = self.g.const_value(v) {
            let all = t.to_f32_vec();
            let at = |bi: usize| {
                if batch_major {
                    (bi * dirs + d) * h
                } else {
                    (d * b + bi) * h
                }
            };
            let part: Vec<f32> = (0..b).flat_map(|bi| all[at(bi)..][..h].to_vec()).collect();
            if part.iter().all(|&x| x == 0.0) {
                return None;
            }
            return Some(self.constant(&part, vec![b, h]));
        }
        let s = if dirs == 1 {
            v
        } else {
            self.slice(v, usize::from(batch_major), d, 1)
        };
        Some(self.reshape(s, &[b, h]))
    }

    /// Step `t`'s rows `[b, hidden]` of a projection of every step (`projection`).
    fn step_rows(&mut self, u: &Unroller, p: ValueId, t: usize) -> ValueId {
        let (b, hid) = (u.batch, u.r.hidden);
        if u.seq == 1 {
            return p;
        }
        if u.r.batch_major {
            let bsh = self.reshape(p, &[b, u.seq, hid]);
            let s = self.slice(bsh, 1, t, 1);
            self.reshape(s, &[b, hid])
        } else {
            self.slice(p, 0, t * b, b)
        }
    }
}

//! The memory plan: a schedule of the nodes and one arena for every intermediate tensor and
//! kernel scratch buffer, with offsets fixed at compile time from value lifetimes.
//!
//! Values that share storage form a *group*: a Reshape's output aliases its input (same
//! bytes, new shape), and an elementwise op may write over its input when that input dies at
//! the op. Groups are placed greedily, largest first, each in the best-fitting gap among the
//! groups whose lifetimes overlap it (the "greedy by size" scheme of TFLite's planner).
//! Graph inputs and outputs live in caller buffers and constants in read-only data, so they
//! take no arena space; a Reshape of either aliases it (the caller's input is never written).

use crate::Result;
use crate::graph::{Graph, NodeId, ValueDef, ValueId};
use crate::op::Op;
use std::collections::HashMap;

/// Where a value's bytes live at run time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Location {
    /// The caller's buffer for graph input `i`.
    Input(usize),
    /// The caller's buffer for graph output `i`.
    Output(usize),
    /// The read-only data of a constant value.
    Const(ValueId),
    /// `offset` bytes into the arena.
    Arena(usize),
}

#[derive(Clone, Debug)]
pub struct MemoryPlan {
    /// Nodes in execution order.
    pub order: Vec<NodeId>,
    /// Location of every value a node reads or writes (indexed by `ValueId::index`).
    pub location: Vec<Option<Location>>,
    /// Arena offset of each node's scratch buffer (nodes that asked for one).
    pub scratch: HashMap<NodeId, usize>,
    /// Bytes of arena needed, a multiple of `align`.
    pub arena_size: usize,
    /// The largest sum of bytes live at any one step of this schedule: no placement of these
    /// groups can use less.
    pub lower_bound: usize,
    pub align: usize,
}

impl MemoryPlan {
    pub fn loc(&self, v: ValueId) -> Location {
        self.location[v.index()].expect("planned value")
    }
}

struct Group {
    size: usize,
    first: usize,
    last: usize,
    offset: usize,
}

/// Ops whose output may reuse the bytes of input 0 when that input dies at the op: they read
/// each element before writing the element at the same position.
fn in_place_ok(g: &Graph, n: NodeId) -> bool {
    let node = g.node(n);
    let same = |v: ValueId| {
        g.value(v).ty.bytes() == g.value(node.outputs[0]).ty.bytes()
            && g.value(v).ty.shape == g.value(node.outputs[0]).ty.shape
    };
    match &node.op {
        Op::Unary(_) => same(node.inputs[0]),
        Op::Binary(b) => !b.yields_bool() && same(node.inputs[0]),
        _ => false,
    }
}

/// Whether an op may write its output over its dying input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reuse {
    InPlace,
    /// Every node's outputs apart from its inputs (Rust source, where a kernel's `&mut`
    /// output may not alias what it reads). Reshapes still alias.
    Disjoint,
}

/// Plans `g`; `scratch_bytes` tells how much temporary memory a node's kernel needs.
pub fn plan(g: &Graph, align: usize, scratch_bytes: impl Fn(&Graph, NodeId) -> usize) -> Result<MemoryPlan> {
    plan_with(g, align, scratch_bytes, Reuse::InPlace)
}

/// [`plan`] with a choice of in-place reuse.
pub fn plan_with(
    g: &Graph,
    align: usize,
    scratch_bytes: impl Fn(&Graph, NodeId) -> usize,
    reuse_mode: Reuse,
) -> Result<MemoryPlan> {
    let order = g.topo_order()?;
    let mut location: Vec<Option<Location>> = vec![None; g.num_values()];
    for (i, &v) in g.inputs().iter().enumerate() {
        location[v.index()] = Some(Location::Input(i));
    }
    for (i, &v) in g.outputs().iter().enumerate() {
        if location[v.index()].is_none() {
            location[v.index()] = Some(match g.value(v).def {
                ValueDef::Const(_) => Location::Const(v),
                _ => Location::Output(i),
            });
        }
    }
    let mut last_use = vec![0usize; g.num_values()];
    for (s, &n) in order.iter().enumerate() {
        for &v in &g.node(n).inputs {
            last_use[v.index()] = last_use[v.index()].max(s);
            if let ValueDef::Const(_) = g.value(v).def {
                location[v.index()] = Some(Location::Const(v));
            }
        }
    }
    let mut group_of: HashMap<ValueId, usize> = HashMap::new();
    let mut groups: Vec<Group> = Vec::new();
    let round = |b: usize| b.div_ceil(align) * align;
    let mut scratch_group: HashMap<NodeId, usize> = HashMap::new();
    for (s, &n) in order.iter().enumerate() {
        let node = g.node(n);
        for (k, &v) in node.outputs.iter().enumerate() {
            if location[v.index()].is_some() {
                continue; // graph output
            }
            let src = node.inputs.first().copied().filter(|_| k == 0);
            let alias = src.is_some() && matches!(node.op, Op::Reshape { .. });
            let src_group = src.and_then(|x| group_of.get(&x).copied());
            // In place only when no value sharing the input's bytes is read after this step.
            let reuse =
                src_group.is_some_and(|gi| groups[gi].last <= s) && reuse_mode == Reuse::InPlace && in_place_ok(g, n);
            let end = last_use[v.index()].max(s);
            match (src_group, src.and_then(|x| location[x.index()])) {
                (Some(gi), _) if alias || reuse => {
                    groups[gi].last = groups[gi].last.max(end);
                    group_of.insert(v, gi);
                    location[v.index()] = Some(Location::Arena(0));
                }
                (None, Some(l @ (Location::Input(_) | Location::Const(_)))) if alias => {
                    location[v.index()] = Some(l);
                }
                _ => {
                    group_of.insert(v, groups.len());
                    groups.push(Group {
                        size: round(g.value(v).ty.bytes()),
                        first: s,
                        last: end,
                        offset: 0,
                    });
                    location[v.index()] = Some(Location::Arena(0));
                }
            }
        }
        let sb = scratch_bytes(g, n);
        if sb > 0 {
            scratch_group.insert(n, groups.len());
            groups.push(Group {
                size: round(sb),
                first: s,
                last: s,
                offset: 0,
            });
        }
    }
    // Place largest first, each at the best-fitting gap between overlapping placed groups.
    let mut by_size: Vec<usize> = (0..groups.len()).collect();
    by_size.sort_by_key(|&i| (std::cmp::Reverse(groups[i].size), groups[i].first, i));
    // placed groups by the steps they live through, so finding the ones that overlap a
    // group costs its lifetime, not the number placed (a 100,000-node chain was quadratic)
    let steps = groups.iter().map(|gr| gr.last + 1).max().unwrap_or(0);
    let mut live_at: Vec<Vec<usize>> = vec![Vec::new(); steps];
    let mut seen = vec![usize::MAX; groups.len()];
    for &i in &by_size {
        let mut busy: Vec<(usize, usize)> = Vec::new();
        for at in &live_at[groups[i].first..=groups[i].last] {
            for &j in at {
                if seen[j] != i {
                    seen[j] = i;
                    busy.push((groups[j].offset, groups[j].offset + groups[j].size));
                }
            }
        }
        busy.sort();
        let mut best: Option<(usize, usize)> = None; // (gap size, offset)
        let mut cursor = 0;
        for &(lo, hi) in &busy {
            if lo >= cursor + groups[i].size {
                let gap = lo - cursor;
                if best.is_none_or(|(b, _)| gap < b) {
                    best = Some((gap, cursor));
                }
            }
            cursor = cursor.max(hi);
        }
        groups[i].offset = best.map(|(_, o)| o).unwrap_or(cursor);
        let (first, last) = (groups[i].first, groups[i].last);
        for at in &mut live_at[first..=last] {
            at.push(i);
        }
    }
    for (&v, &gi) in &group_of {
        location[v.index()] = Some(Location::Arena(groups[gi].offset));
    }
    let scratch = scratch_group.iter().map(|(&n, &gi)| (n, groups[gi].offset)).collect();
    let arena_size = groups.iter().map(|gr| gr.offset + gr.size).max().unwrap_or(0);
    // the most bytes live at one step: a sweep over lifetimes' starts and ends
    let mut delta = vec![0isize; order.len().max(steps) + 1];
    for gr in &groups {
        delta[gr.first] += gr.size as isize;
        delta[gr.last + 1] -= gr.size as isize;
    }
    let lower_bound = (delta.iter())
        .scan(0isize, |live, d| {
            *live += d;
            Some(*live)
        })
        .take(order.len())
        .max()
        .unwrap_or(0)
        .max(0) as usize;
    Ok(MemoryPlan {
        order,
        location,
        scratch,
        arena_size,
        lower_bound,
        align,
    })
}

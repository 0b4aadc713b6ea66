//! The graph: values (graph inputs, constants, node outputs) and nodes kept in a petgraph
//! `StableDiGraph` whose edges run from producer to consumer. Ids are typed newtypes so a
//! node index can never be used as a value index; petgraph stays an implementation detail.

use crate::dtype::TensorType;
use crate::error::{IrError, Result};
use crate::op::Op;
use crate::shape;
use crate::tensor::Tensor;
use petgraph::Direction;
use petgraph::stable_graph::{NodeIndex, StableDiGraph};
use petgraph::visit::EdgeRef;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::Arc;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId(NodeIndex<u32>);

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ValueId(u32);

impl ValueId {
    pub fn index(self) -> usize {
        self.0 as usize
    }

    pub fn from_index(i: usize) -> ValueId {
        ValueId(i as u32)
    }
}

impl NodeId {
    pub fn index(self) -> usize {
        self.0.index()
    }
}

/// Where a value comes from.
#[derive(Clone, Debug, PartialEq)]
pub enum ValueDef {
    /// The `n`-th graph input.
    Input(usize),
    /// A compile-time constant (weights, folded subgraphs).
    Const(Arc<Tensor>),
    /// Output `k` of a node.
    Node(NodeId, usize),
}

#[derive(Clone, Debug)]
pub struct Value {
    pub name: String,
    pub ty: TensorType,
    pub def: ValueDef,
}

#[derive(Clone, Debug)]
pub struct Node {
    pub name: String,
    pub op: Op,
    pub inputs: Vec<ValueId>,
    pub outputs: Vec<ValueId>,
}

#[derive(Clone, Debug, Default)]
pub struct Graph {
    pub name: String,
    values: Vec<Value>,
    names: HashMap<String, ValueId>,
    nodes: StableDiGraph<Node, ValueId>,
    inputs: Vec<ValueId>,
    outputs: Vec<ValueId>,
}

impl Graph {
    pub fn new(name: impl Into<String>) -> Graph {
        Graph {
            name: name.into(),
            ..Graph::default()
        }
    }

    /// A name not used by any value yet, derived from `base`.
    pub fn fresh_name(&self, base: &str) -> String {
        if !self.names.contains_key(base) && !base.is_empty() {
            return base.to_string();
        }
        (1..)
            .map(|i| format!("{base}_{i}"))
            .find(|n| !self.names.contains_key(n))
            .expect("unbounded")
    }

    fn push_value(&mut self, name: &str, ty: TensorType, def: ValueDef) -> ValueId {
        let name = self.fresh_name(name);
        let id = ValueId(self.values.len() as u32);
        self.names.insert(name.clone(), id);
        self.values.push(Value { name, ty, def });
        id
    }

    pub fn add_input(&mut self, name: &str, ty: TensorType) -> ValueId {
        let v = self.push_value(name, ty, ValueDef::Input(self.inputs.len()));
        self.inputs.push(v);
        v
    }

    pub fn add_const(&mut self, name: &str, t: Tensor) -> ValueId {
        let ty = t.ty();
        self.push_value(name, ty, ValueDef::Const(Arc::new(t)))
    }

    /// Adds a node, inferring its output types from its inputs.
    pub fn add_node(
        &mut self,
        name: &str,
        op: Op,
        inputs: Vec<ValueId>,
        output_names: &[&str],
    ) -> Result<(NodeId, Vec<ValueId>)> {
        let types: Vec<&TensorType> = inputs.iter().map(|&v| &self.value(v).ty).collect();
        let out_types = shape::infer(&op, &types).map_err(|e| e.at(name))?;
        if output_names.len() > out_types.len() {
            return Err(IrError::shape(
                op.name(),
                format!(
                    "{} outputs requested, the op has {}",
                    output_names.len(),
                    out_types.len()
                ),
            )
            .at(name));
        }
        let outs: Vec<(String, TensorType)> = out_types
            .into_iter()
            .enumerate()
            .map(|(i, t)| {
                let n = output_names
                    .get(i)
                    .filter(|s| !s.is_empty())
                    .map(|s| s.to_string())
                    .unwrap_or_else(|| format!("{name}:{i}"));
                (n, t)
            })
            .collect();
        Ok(self.add_node_typed(name, op, inputs, outs))
    }

    /// Adds a node whose output types are already known (parser, passes that keep types).
    pub fn add_node_typed(
        &mut self,
        name: &str,
        op: Op,
        inputs: Vec<ValueId>,
        outputs: Vec<(String, TensorType)>,
    ) -> (NodeId, Vec<ValueId>) {
        let idx = self.nodes.add_node(Node {
            name: name.to_string(),
            op,
            inputs: inputs.clone(),
            outputs: vec![],
        });
        let id = NodeId(idx);
        let outs: Vec<ValueId> = outputs
            .into_iter()
            .enumerate()
            .map(|(i, (n, t))| self.push_value(&n, t, ValueDef::Node(id, i)))
            .collect();
        self.nodes[idx].outputs = outs.clone();
        for v in inputs {
            self.link(v, id);
        }
        (id, outs)
    }

    fn link(&mut self, v: ValueId, consumer: NodeId) {
        if let ValueDef::Node(p, _) = self.values[v.index()].def {
            self.nodes.add_edge(p.0, consumer.0, v);
        }
    }

    pub fn remove_node(&mut self, n: NodeId) -> Node {
        self.nodes.remove_node(n.0).expect("node exists")
    }

    pub fn node(&self, n: NodeId) -> &Node {
        &self.nodes[n.0]
    }

    /// Mutable access to a node's op. Inputs and outputs change only through graph methods,
    /// which keep the edges right.
    pub fn op_mut(&mut self, n: NodeId) -> &mut Op {
        &mut self.nodes[n.0].op
    }

    pub fn contains_node(&self, n: NodeId) -> bool {
        self.nodes.contains_node(n.0)
    }

    /// Replaces input `slot` of node `n` with `v`.
    pub fn set_input(&mut self, n: NodeId, slot: usize, v: ValueId) {
        let old = self.nodes[n.0].inputs[slot];
        self.nodes[n.0].inputs[slot] = v;
        if let ValueDef::Node(p, _) = self.values[old.index()].def {
            let still_used = self.nodes[n.0].inputs.contains(&old);
            if !still_used {
                let edges: Vec<_> = self
                    .nodes
                    .edges_connecting(p.0, n.0)
                    .filter(|e| *e.weight() == old)
                    .map(|e| e.id())
                    .collect();
                for e in edges {
                    self.nodes.remove_edge(e);
                }
            }
        }
        self.link(v, n);
    }

    /// Appends an input to node `n` (e.g. a bias a fusion creates).
    pub fn push_input(&mut self, n: NodeId, v: ValueId) {
        self.nodes[n.0].inputs.push(v);
        self.link(v, n);
    }

    /// Renames a value; the old holder of `name`, if any, gets a fresh derived name.
    pub fn rename(&mut self, v: ValueId, name: &str) {
        if let Some(other) = self.names.get(name).copied() {
            if other == v {
                return;
            }
            let fresh = self.fresh_name(&format!("{name}_old"));
            self.values[other.index()].name = fresh.clone();
            self.names.insert(fresh, other);
        }
        let old = std::mem::replace(&mut self.values[v.index()].name, name.to_string());
        self.names.remove(&old);
        self.names.insert(name.to_string(), v);
    }

    /// Replaces every use of `old` (node inputs and graph outputs) with `new`.
    pub fn replace_uses(&mut self, old: ValueId, new: ValueId) {
        for n in self.consumers(old) {
            let slots: Vec<usize> = (self.nodes[n.0].inputs.iter().enumerate())
                .filter(|(_, v)| **v == old)
                .map(|(i, _)| i)
                .collect();
            for s in slots {
                self.set_input(n, s, new);
            }
        }
        for o in self.outputs.iter_mut() {
            if *o == old {
                *o = new;
            }
        }
    }

    /// Nodes that read `v`, in id order.
    pub fn consumers(&self, v: ValueId) -> Vec<NodeId> {
        match self.values[v.index()].def {
            ValueDef::Node(p, _) if self.nodes.contains_node(p.0) => {
                let mut c: Vec<NodeId> = self
                    .nodes
                    .edges_directed(p.0, Direction::Outgoing)
                    .filter(|e| *e.weight() == v)
                    .map(|e| NodeId(e.target()))
                    .collect();
                c.sort();
                c.dedup();
                c
            }
            _ => self
                .node_ids()
                .filter(|&n| self.nodes[n.0].inputs.contains(&v))
                .collect(),
        }
    }

    pub fn is_output(&self, v: ValueId) -> bool {
        self.outputs.contains(&v)
    }

    pub fn value(&self, v: ValueId) -> &Value {
        &self.values[v.index()]
    }

    pub fn value_mut(&mut self, v: ValueId) -> &mut Value {
        &mut self.values[v.index()]
    }

    pub fn value_by_name(&self, name: &str) -> Option<ValueId> {
        self.names.get(name).copied()
    }

    pub fn num_values(&self) -> usize {
        self.values.len()
    }

    pub fn const_value(&self, v: ValueId) -> Option<&Arc<Tensor>> {
        match &self.values[v.index()].def {
            ValueDef::Const(t) => Some(t),
            _ => None,
        }
    }

    /// Turns a node output into a constant (used by constant folding); the node must be
    /// removed by the caller once all its outputs are replaced.
    pub fn make_const(&mut self, v: ValueId, t: Tensor) {
        self.values[v.index()].ty = t.ty();
        self.values[v.index()].def = ValueDef::Const(Arc::new(t));
    }

    pub fn producer(&self, v: ValueId) -> Option<NodeId> {
        match self.values[v.index()].def {
            ValueDef::Node(n, _) => Some(n),
            _ => None,
        }
    }

    pub fn inputs(&self) -> &[ValueId] {
        &self.inputs
    }

    pub fn outputs(&self) -> &[ValueId] {
        &self.outputs
    }

    pub fn add_output(&mut self, v: ValueId) {
        self.outputs.push(v);
    }

    pub fn set_outputs(&mut self, outs: Vec<ValueId>) {
        self.outputs = outs;
    }

    pub fn node_ids(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.nodes.node_indices().map(NodeId)
    }

    pub fn node_count(&self) -> usize {
        self.nodes.node_count()
    }

    /// Nodes in dependency order; among ready nodes the oldest goes first, so a graph built
    /// in order keeps its order (stable schedules, stable dumps). Errors on a cycle.
    pub fn topo_order(&self) -> Result<Vec<NodeId>> {
        let mut indeg: HashMap<NodeIndex<u32>, usize> = HashMap::new();
        let mut ready = BinaryHeap::new();
        for n in self.nodes.node_indices() {
            let preds: std::collections::HashSet<_> = self.nodes.neighbors_directed(n, Direction::Incoming).collect();
            if preds.is_empty() {
                ready.push(Reverse(n));
            } else {
                indeg.insert(n, preds.len());
            }
        }
        let mut order = Vec::with_capacity(self.nodes.node_count());
        while let Some(Reverse(n)) = ready.pop() {
            order.push(NodeId(n));
            let succ: std::collections::HashSet<_> = self.nodes.neighbors_directed(n, Direction::Outgoing).collect();
            for s in succ {
                let d = indeg.get_mut(&s).expect("successor has in-degree");
                *d -= 1;
                if *d == 0 {
                    indeg.remove(&s);
                    ready.push(Reverse(s));
                }
            }
        }
        if let Some((&n, _)) = indeg.iter().min_by_key(|(n, _)| **n) {
            return Err(IrError::Cycle(self.nodes[n].name.clone()));
        }
        Ok(order)
    }
}

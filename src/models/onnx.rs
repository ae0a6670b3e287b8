//! A minimal ONNX (protobuf) writer: enough to build test and benchmark models in code, with no
//! Python and no protobuf compiler. Field numbers follow `onnx.proto3`.

/// ONNX `TensorProto.DataType` values used here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataType {
    /// 32-bit float.
    Float = 1,
    /// 32-bit integer.
    Int32 = 6,
    /// 64-bit integer.
    Int64 = 7,
    /// 16-bit float.
    Float16 = 10,
}

/// A dimension of a graph input or output.
#[derive(Debug, Clone)]
pub enum Dim {
    /// A fixed size.
    Fixed(i64),
    /// A named dynamic size (`batch`).
    Symbolic(String),
}

/// A graph input or output.
#[derive(Debug, Clone)]
pub struct ValueInfo {
    /// The value's name.
    pub name: String,
    /// Its element type.
    pub dtype: DataType,
    /// Its shape.
    pub dims: Vec<Dim>,
}

impl ValueInfo {
    /// A float tensor of fixed shape.
    pub fn f32(name: &str, dims: &[i64]) -> ValueInfo {
        ValueInfo {
            name: name.into(),
            dtype: DataType::Float,
            dims: dims.iter().map(|&d| Dim::Fixed(d)).collect(),
        }
    }
}

/// Tensor payload.
#[derive(Debug, Clone)]
pub enum TensorData {
    /// 32-bit floats.
    F32(Vec<f32>),
    /// IEEE half floats as raw bits.
    F16(Vec<u16>),
    /// 64-bit integers.
    I64(Vec<i64>),
    /// 32-bit integers.
    I32(Vec<i32>),
}

/// An initializer or tensor attribute.
#[derive(Debug, Clone)]
pub struct Tensor {
    /// The initializer's name.
    pub name: String,
    /// Its shape.
    pub dims: Vec<i64>,
    /// Its values.
    pub data: TensorData,
}

impl Tensor {
    /// A float tensor.
    pub fn f32(name: &str, dims: &[i64], data: Vec<f32>) -> Tensor {
        Tensor {
            name: name.into(),
            dims: dims.to_vec(),
            data: TensorData::F32(data),
        }
    }
    /// An int64 tensor.
    pub fn i64(name: &str, dims: &[i64], data: Vec<i64>) -> Tensor {
        Tensor {
            name: name.into(),
            dims: dims.to_vec(),
            data: TensorData::I64(data),
        }
    }
}

/// A node attribute value.
#[derive(Debug, Clone)]
pub enum Attr {
    /// An integer.
    Int(i64),
    /// A float.
    Float(f32),
    /// A list of integers.
    Ints(Vec<i64>),
    /// A string.
    Str(String),
    /// A tensor.
    Tensor(Tensor),
}

/// A graph node.
#[derive(Debug, Clone)]
pub struct Node {
    /// The operator (`Conv`, `MatMul`).
    pub op_type: String,
    /// Input value names.
    pub inputs: Vec<String>,
    /// Output value names.
    pub outputs: Vec<String>,
    /// Attributes by name.
    pub attrs: Vec<(String, Attr)>,
}

impl Node {
    /// A node of `op_type` from `inputs` to `outputs`.
    pub fn new(op_type: &str, inputs: &[&str], outputs: &[&str]) -> Node {
        Node {
            op_type: op_type.into(),
            inputs: inputs.iter().map(|s| s.to_string()).collect(),
            outputs: outputs.iter().map(|s| s.to_string()).collect(),
            attrs: Vec::new(),
        }
    }
    /// The node with one more attribute.
    pub fn attr(mut self, name: &str, value: Attr) -> Node {
        self.attrs.push((name.into(), value));
        self
    }
}

/// A whole model: one graph plus the opset and metadata.
#[derive(Debug, Clone, Default)]
pub struct Model {
    /// The graph's name.
    pub name: String,
    /// Nodes in topological order.
    pub nodes: Vec<Node>,
    /// Graph inputs.
    pub inputs: Vec<ValueInfo>,
    /// Graph outputs.
    pub outputs: Vec<ValueInfo>,
    /// Weights.
    pub initializers: Vec<Tensor>,
    /// Custom metadata (key, value).
    pub metadata: Vec<(String, String)>,
    /// The ONNX opset version.
    pub opset: i64,
}

impl Model {
    /// Serialise to ONNX protobuf bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut graph = Vec::new();
        for node in &self.nodes {
            put_msg(&mut graph, 1, &encode_node(node));
        }
        put_str(&mut graph, 2, &self.name);
        for t in &self.initializers {
            put_msg(&mut graph, 5, &encode_tensor(t));
        }
        for v in &self.inputs {
            put_msg(&mut graph, 11, &encode_value_info(v));
        }
        for v in &self.outputs {
            put_msg(&mut graph, 12, &encode_value_info(v));
        }

        let mut model = Vec::new();
        put_varint_field(&mut model, 1, 9); // ir_version 9 (ONNX 1.14+)
        put_str(&mut model, 2, "arvis");
        put_msg(&mut model, 7, &graph);
        let mut opset = Vec::new();
        put_str(&mut opset, 1, "");
        put_varint_field(
            &mut opset,
            2,
            if self.opset > 0 {
                self.opset as u64
            } else {
                17
            },
        );
        put_msg(&mut model, 8, &opset);
        for (k, v) in &self.metadata {
            let mut entry = Vec::new();
            put_str(&mut entry, 1, k);
            put_str(&mut entry, 2, v);
            put_msg(&mut model, 14, &entry);
        }
        model
    }
}

fn encode_node(node: &Node) -> Vec<u8> {
    let mut b = Vec::new();
    for i in &node.inputs {
        put_str(&mut b, 1, i);
    }
    for o in &node.outputs {
        put_str(&mut b, 2, o);
    }
    put_str(&mut b, 4, &node.op_type);
    for (name, value) in &node.attrs {
        let mut a = Vec::new();
        put_str(&mut a, 1, name);
        let kind = match value {
            Attr::Float(f) => {
                put_key(&mut a, 2, 5);
                a.extend_from_slice(&f.to_le_bytes());
                1
            }
            Attr::Int(i) => {
                put_varint_field(&mut a, 3, *i as u64);
                2
            }
            Attr::Str(s) => {
                put_str(&mut a, 4, s);
                3
            }
            Attr::Tensor(t) => {
                put_msg(&mut a, 5, &encode_tensor(t));
                4
            }
            Attr::Ints(v) => {
                for i in v {
                    put_varint_field(&mut a, 8, *i as u64);
                }
                7
            }
        };
        put_varint_field(&mut a, 20, kind);
        put_msg(&mut b, 5, &a);
    }
    b
}

fn encode_tensor(t: &Tensor) -> Vec<u8> {
    let mut b = Vec::new();
    for d in &t.dims {
        put_varint_field(&mut b, 1, *d as u64);
    }
    let (dtype, raw): (DataType, Vec<u8>) = match &t.data {
        TensorData::F32(v) => (
            DataType::Float,
            v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        ),
        TensorData::F16(v) => (
            DataType::Float16,
            v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        ),
        TensorData::I64(v) => (
            DataType::Int64,
            v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        ),
        TensorData::I32(v) => (
            DataType::Int32,
            v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        ),
    };
    put_varint_field(&mut b, 2, dtype as u64);
    put_str(&mut b, 8, &t.name);
    put_bytes(&mut b, 9, &raw);
    b
}

fn encode_value_info(v: &ValueInfo) -> Vec<u8> {
    let mut shape = Vec::new();
    for d in &v.dims {
        let mut dim = Vec::new();
        match d {
            Dim::Fixed(n) => put_varint_field(&mut dim, 1, *n as u64),
            Dim::Symbolic(s) => put_str(&mut dim, 2, s),
        }
        put_msg(&mut shape, 1, &dim);
    }
    let mut tensor_type = Vec::new();
    put_varint_field(&mut tensor_type, 1, v.dtype as u64);
    put_msg(&mut tensor_type, 2, &shape);
    let mut type_proto = Vec::new();
    put_msg(&mut type_proto, 1, &tensor_type);
    let mut b = Vec::new();
    put_str(&mut b, 1, &v.name);
    put_msg(&mut b, 2, &type_proto);
    b
}

fn put_varint(buf: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        buf.push((v as u8) | 0x80);
        v >>= 7;
    }
    buf.push(v as u8);
}

fn put_key(buf: &mut Vec<u8>, field: u32, wire: u8) {
    put_varint(buf, (u64::from(field) << 3) | u64::from(wire));
}

fn put_varint_field(buf: &mut Vec<u8>, field: u32, v: u64) {
    put_key(buf, field, 0);
    put_varint(buf, v);
}

fn put_bytes(buf: &mut Vec<u8>, field: u32, bytes: &[u8]) {
    put_key(buf, field, 2);
    put_varint(buf, bytes.len() as u64);
    buf.extend_from_slice(bytes);
}

fn put_str(buf: &mut Vec<u8>, field: u32, s: &str) {
    put_bytes(buf, field, s.as_bytes());
}

fn put_msg(buf: &mut Vec<u8>, field: u32, msg: &[u8]) {
    put_bytes(buf, field, msg);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_encode_like_protobuf() {
        let mut b = Vec::new();
        put_varint(&mut b, 300);
        assert_eq!(b, [0xac, 0x02]);
        let mut b = Vec::new();
        put_varint(&mut b, (-1i64) as u64);
        assert_eq!(b.len(), 10, "negative int64 takes ten bytes");
    }
}

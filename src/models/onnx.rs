//! Building ONNX models in code (test and benchmark models, with no Python): a small builder
//! whose [`Model::to_proto`] yields ONNX's own protobuf messages ([`super::proto::onnx`]).

use prost::Message as _;

use super::proto::onnx as pb;

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
        self.to_proto().encode_to_vec()
    }

    /// The model as ONNX's own protobuf message.
    pub fn to_proto(&self) -> pb::ModelProto {
        let graph = pb::GraphProto {
            node: self.nodes.iter().map(node_proto).collect(),
            name: Some(self.name.clone()),
            initializer: self.initializers.iter().map(tensor_proto).collect(),
            input: self.inputs.iter().map(value_info_proto).collect(),
            output: self.outputs.iter().map(value_info_proto).collect(),
            ..Default::default()
        };
        pb::ModelProto {
            ir_version: Some(9), // ONNX 1.14+
            producer_name: Some("arvis".into()),
            graph: Some(graph),
            opset_import: vec![pb::OperatorSetIdProto {
                domain: Some(String::new()),
                version: Some(if self.opset > 0 { self.opset } else { 17 }),
            }],
            metadata_props: self
                .metadata
                .iter()
                .map(|(k, v)| pb::StringStringEntryProto {
                    key: Some(k.clone()),
                    value: Some(v.clone()),
                })
                .collect(),
            ..Default::default()
        }
    }
}

fn node_proto(node: &Node) -> pb::NodeProto {
    use pb::attribute_proto::AttributeType;
    let attribute = node
        .attrs
        .iter()
        .map(|(name, value)| {
            let mut a = pb::AttributeProto {
                name: Some(name.clone()),
                ..Default::default()
            };
            let kind = match value {
                Attr::Float(f) => {
                    a.f = Some(*f);
                    AttributeType::Float
                }
                Attr::Int(i) => {
                    a.i = Some(*i);
                    AttributeType::Int
                }
                Attr::Str(s) => {
                    a.s = Some(s.as_bytes().to_vec());
                    AttributeType::String
                }
                Attr::Tensor(t) => {
                    a.t = Some(tensor_proto(t));
                    AttributeType::Tensor
                }
                Attr::Ints(v) => {
                    a.ints = v.clone();
                    AttributeType::Ints
                }
            };
            a.set_type(kind);
            a
        })
        .collect();
    pb::NodeProto {
        input: node.inputs.clone(),
        output: node.outputs.clone(),
        op_type: Some(node.op_type.clone()),
        attribute,
        ..Default::default()
    }
}

/// Little-endian bytes of each value, as `TensorProto.raw_data` stores them.
fn raw<T, const N: usize>(values: &[T], to_le: impl Fn(&T) -> [u8; N]) -> Vec<u8> {
    values.iter().flat_map(to_le).collect()
}

fn tensor_proto(t: &Tensor) -> pb::TensorProto {
    let (dtype, raw_data) = match &t.data {
        TensorData::F32(v) => (DataType::Float, raw(v, |x| x.to_le_bytes())),
        TensorData::F16(v) => (DataType::Float16, raw(v, |x| x.to_le_bytes())),
        TensorData::I64(v) => (DataType::Int64, raw(v, |x| x.to_le_bytes())),
        TensorData::I32(v) => (DataType::Int32, raw(v, |x| x.to_le_bytes())),
    };
    pb::TensorProto {
        dims: t.dims.clone(),
        data_type: Some(dtype as i32),
        name: Some(t.name.clone()),
        raw_data: Some(raw_data),
        ..Default::default()
    }
}

fn value_info_proto(v: &ValueInfo) -> pb::ValueInfoProto {
    use pb::tensor_shape_proto::{Dimension, dimension::Value};
    let dim = v
        .dims
        .iter()
        .map(|d| Dimension {
            value: Some(match d {
                Dim::Fixed(n) => Value::DimValue(*n),
                Dim::Symbolic(s) => Value::DimParam(s.clone()),
            }),
            ..Default::default()
        })
        .collect();
    pb::ValueInfoProto {
        name: Some(v.name.clone()),
        r#type: Some(pb::TypeProto {
            value: Some(pb::type_proto::Value::TensorType(pb::type_proto::Tensor {
                elem_type: Some(v.dtype as i32),
                shape: Some(pb::TensorShapeProto { dim }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_built_model_decodes_with_onnx_schema() {
        let m = Model {
            name: "g".into(),
            nodes: vec![Node::new("Relu", &["x"], &["y"]).attr("alpha", Attr::Float(0.5))],
            inputs: vec![ValueInfo::f32("x", &[1, 3])],
            outputs: vec![ValueInfo {
                name: "y".into(),
                dtype: DataType::Float,
                dims: vec![Dim::Symbolic("batch".into()), Dim::Fixed(3)],
            }],
            initializers: vec![Tensor::i64("k", &[2], vec![-1, 7])],
            metadata: vec![("a".into(), "b".into())],
            opset: 0,
        };
        let back = pb::ModelProto::decode(m.to_bytes().as_slice()).unwrap();
        assert_eq!(back.opset_import[0].version, Some(17));
        let g = back.graph.unwrap();
        assert_eq!(g.node[0].attribute[0].f, Some(0.5));
        assert_eq!(g.initializer[0].raw_data.as_deref().unwrap().len(), 16);
        assert_eq!(g.initializer[0].data_type, Some(DataType::Int64 as i32));
        assert!(pb::ModelProto::decode(&b"\x0a\x05ab"[..]).is_err());
    }
}

//! FP32 → FP16 conversion of ONNX models, done by arvis itself: weights and intermediate values
//! become FP16 while the graph's inputs and outputs stay FP32 (Cast nodes at both ends), so
//! callers feed and read the same tensors as before. Inputs that ONNX requires in FP32 (Resize's
//! roi and scales) keep their FP32 producers.
//!
//! The model is decoded and re-encoded with ONNX's own schema ([`super::proto::onnx`]); every
//! field arvis does not touch is carried over.

use std::collections::{HashMap, HashSet};

use anyhow::Context as _;
use prost::Message as _;

use super::proto::onnx as pb;

/// ONNX TensorProto data types.
const FLOAT: i32 = pb::tensor_proto::DataType::Float as i32;
const FLOAT16: i32 = pb::tensor_proto::DataType::Float16 as i32;

/// Why a model could not be converted to FP16.
#[derive(Debug, thiserror::Error)]
pub enum Fp16Error {
    /// The protobuf could not be parsed.
    #[error("not a valid ONNX model: {0}")]
    Malformed(#[from] prost::DecodeError),
    /// The model has no graph.
    #[error("the model has no graph")]
    NoGraph,
    /// The model has control-flow subgraphs, which the converter does not handle.
    #[error("models with subgraphs (If/Loop/Scan) are not supported")]
    Subgraph,
    /// The weights live in external data files.
    #[error("tensor `{0}` stores its data outside the model file")]
    External(String),
}

/// What a conversion did.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct Fp16Report {
    /// Weights and constants stored as FP16 now.
    pub tensors_converted: usize,
    /// Those left FP32 because an operator needs them so.
    pub tensors_kept_fp32: Vec<String>,
    /// FP32 graph inputs/outputs given a Cast.
    pub io_casts: usize,
    /// Model size before conversion.
    pub bytes_before: usize,
    /// Model size after conversion.
    pub bytes_after: usize,
}

/// Decode ONNX bytes with ONNX's schema.
pub(crate) fn decode(model: &[u8]) -> Result<pb::ModelProto, Fp16Error> {
    Ok(pb::ModelProto::decode(model)?)
}

/// The f32 values of a FLOAT TensorProto (raw_data or float_data).
fn tensor_floats(t: &pb::TensorProto) -> Result<Vec<f32>, Fp16Error> {
    if t.data_location == Some(pb::tensor_proto::DataLocation::External as i32) {
        return Err(Fp16Error::External(t.name().to_string()));
    }
    if let Some(raw) = &t.raw_data {
        return Ok(raw
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect());
    }
    Ok(t.float_data.clone())
}

/// Convert a FLOAT TensorProto to FLOAT16 in place (values beyond FP16's range saturate).
fn tensor_to_fp16(t: &mut pb::TensorProto) -> Result<bool, Fp16Error> {
    if t.data_type != Some(FLOAT) {
        return Ok(false);
    }
    let values = tensor_floats(t)?;
    let mut raw = Vec::with_capacity(values.len() * 2);
    for v in values {
        let h = half::f16::from_f32(v.clamp(-65504.0, 65504.0));
        raw.extend_from_slice(&h.to_le_bytes());
    }
    t.float_data.clear();
    t.data_type = Some(FLOAT16);
    t.raw_data = Some(raw);
    Ok(true)
}

/// Inputs that ONNX operators require in FP32 whatever the data type: (op, input index).
const FP32_INPUTS: &[(&str, usize)] = &[("Resize", 1), ("Resize", 2), ("Upsample", 1)];

/// Convert `model` (ONNX bytes) to FP16 with FP32 inputs and outputs.
pub fn convert(model: &[u8]) -> Result<(Vec<u8>, Fp16Report), Fp16Error> {
    let mut report = Fp16Report {
        bytes_before: model.len(),
        ..Fp16Report::default()
    };
    let mut m = decode(model)?;
    let g = m.graph.as_mut().ok_or(Fp16Error::NoGraph)?;
    let mut nodes = std::mem::take(&mut g.node);
    let initializer_names: HashSet<String> =
        g.initializer.iter().map(|t| t.name().to_string()).collect();

    // Tensors that must stay FP32, and who produces them.
    let mut keep: HashSet<String> = HashSet::new();
    for n in &nodes {
        for &(kop, idx) in FP32_INPUTS {
            if n.op_type() == kop {
                if let Some(name) = n.input.get(idx).filter(|s| !s.is_empty()) {
                    keep.insert(name.clone());
                }
            }
        }
        if n.attribute
            .iter()
            .any(|a| a.g.is_some() || !a.graphs.is_empty())
        {
            return Err(Fp16Error::Subgraph);
        }
    }
    let producers: HashMap<String, usize> = nodes
        .iter()
        .enumerate()
        .flat_map(|(i, n)| n.output.iter().map(move |o| (o.clone(), i)))
        .collect();
    // A kept tensor computed at run time (not a weight or a Constant) gets a Cast back to FP32.
    let mut casts_to_fp32: Vec<(String, String)> = Vec::new();
    for name in &keep {
        let from_constant = producers
            .get(name)
            .is_some_and(|&i| nodes[i].op_type() == "Constant");
        if !initializer_names.contains(name) && !from_constant {
            casts_to_fp32.push((format!("{name}__fp16"), name.clone()));
        }
    }
    for (fp16_name, name) in &casts_to_fp32 {
        if let Some(&i) = producers.get(name) {
            rename_outputs(&mut nodes[i], name, fp16_name);
        }
    }

    // Graph inputs and outputs that are FP32 tensors get a Cast at the boundary.
    // Every one's type is read, so a malformed one is refused, not copied through.
    let float_io = |vis: &[pb::ValueInfoProto]| -> Vec<String> {
        vis.iter()
            .filter(|vi| !initializer_names.contains(vi.name()) && elem_type(vi) == Some(FLOAT))
            .map(|vi| vi.name().to_string())
            .collect()
    };
    let inputs = float_io(&g.input);
    let outputs = float_io(&g.output);
    let mut rename: HashMap<String, String> = HashMap::new();
    for name in inputs.iter().chain(&outputs) {
        rename.insert(name.clone(), format!("{name}__fp16"));
    }
    for n in &mut nodes {
        // Consumers of graph inputs/outputs read the FP16 copies.
        for input in &mut n.input {
            if let Some(r) = rename.get(input.as_str()) {
                *input = r.clone();
            }
        }
        for name in &outputs {
            rename_outputs(n, name, &format!("{name}__fp16"));
        }
        // Weights in Constant nodes, and Casts to FLOAT inside the graph, become FP16.
        let op = n.op_type().to_string();
        let kept = n
            .output
            .iter()
            .any(|o| keep.contains(o) && !casts_to_fp32.iter().any(|(_, k)| k == o));
        for attr in &mut n.attribute {
            if matches!(op.as_str(), "Constant" | "ConstantOfShape")
                && attr.name() == "value"
                && !kept
            {
                if let Some(t) = attr.t.as_mut() {
                    if tensor_to_fp16(t)? {
                        report.tensors_converted += 1;
                    }
                }
            }
            if op == "Cast" && attr.name() == "to" && attr.i == Some(i64::from(FLOAT)) && !kept {
                attr.i = Some(i64::from(FLOAT16));
            }
        }
        if kept && op == "Constant" {
            report.tensors_kept_fp32.extend(n.output.iter().cloned());
        }
    }

    // Initializers.
    for t in &mut g.initializer {
        if keep.contains(t.name()) {
            if t.data_type == Some(FLOAT) {
                report.tensors_kept_fp32.push(t.name().to_string());
            }
            continue;
        }
        if tensor_to_fp16(t)? {
            report.tensors_converted += 1;
        }
    }
    // Intermediate value types.
    for vi in &mut g.value_info {
        if !keep.contains(vi.name()) && elem_type(vi) == Some(FLOAT) {
            set_elem_type(vi, FLOAT16);
        }
    }

    // Boundary casts: inputs first (before every node), outputs and FP32 restores after.
    let cast = |from: &str, to: &str, to_type: i32| -> pb::NodeProto {
        let mut attr = pb::AttributeProto {
            name: Some("to".into()),
            i: Some(i64::from(to_type)),
            ..Default::default()
        };
        attr.set_type(pb::attribute_proto::AttributeType::Int);
        pb::NodeProto {
            input: vec![from.into()],
            output: vec![to.into()],
            name: Some(format!("arvis_cast_{to}")),
            op_type: Some("Cast".into()),
            attribute: vec![attr],
            ..Default::default()
        }
    };
    let mut new_nodes: Vec<pb::NodeProto> = inputs
        .iter()
        .map(|n| cast(n, &format!("{n}__fp16"), FLOAT16))
        .collect();
    // Restoring casts go right after their producers to keep the order topological.
    for n in nodes {
        let restores: Vec<pb::NodeProto> = casts_to_fp32
            .iter()
            .filter(|(fp16_name, _)| n.output.contains(fp16_name))
            .map(|(fp16_name, name)| cast(fp16_name, name, FLOAT))
            .collect();
        new_nodes.push(n);
        new_nodes.extend(restores);
    }
    for name in &outputs {
        new_nodes.push(cast(&format!("{name}__fp16"), name, FLOAT));
    }
    g.node = new_nodes;
    report.io_casts = inputs.len() + outputs.len();
    report.tensors_kept_fp32.sort();
    report.tensors_kept_fp32.dedup();

    m.metadata_props.push(pb::StringStringEntryProto {
        key: Some("arvis.fp16".into()),
        value: Some("converted from FP32 by arvis; inputs and outputs stay FP32".into()),
    });
    let out = m.encode_to_vec();
    report.bytes_after = out.len();
    Ok((out, report))
}

fn rename_outputs(n: &mut pb::NodeProto, from: &str, to: &str) {
    for o in &mut n.output {
        if o == from {
            *o = to.to_string();
        }
    }
}

/// The tensor type of a value, when it is a tensor.
fn tensor_type(vi: &pb::ValueInfoProto) -> Option<&pb::type_proto::Tensor> {
    match vi.r#type.as_ref()?.value.as_ref()? {
        pb::type_proto::Value::TensorType(t) => Some(t),
        _ => None,
    }
}

/// ValueInfoProto.type.tensor_type.elem_type.
fn elem_type(vi: &pb::ValueInfoProto) -> Option<i32> {
    tensor_type(vi)?.elem_type
}

fn set_elem_type(vi: &mut pb::ValueInfoProto, to: i32) {
    if let Some(pb::type_proto::Value::TensorType(t)) =
        vi.r#type.as_mut().and_then(|t| t.value.as_mut())
    {
        t.elem_type = Some(to);
    }
}

/// One graph input or output: its name and element type (`1` FP32, `10` FP16; None when the
/// model does not say).
pub type GraphIo = (String, Option<i32>);

/// The graph's inputs and outputs, in order, as [`convert`] reads them: what a converted model
/// must keep unchanged.
pub fn graph_io(model: &[u8]) -> Result<(Vec<GraphIo>, Vec<GraphIo>), Fp16Error> {
    let m = decode(model)?;
    let g = m.graph.as_ref().ok_or(Fp16Error::NoGraph)?;
    let io = |vis: &[pb::ValueInfoProto]| {
        vis.iter()
            .map(|vi| (vi.name().to_string(), elem_type(vi)))
            .collect()
    };
    Ok((io(&g.input), io(&g.output)))
}

/// Convert the model at `src` and write its FP16 twin to `out` atomically, creating its folder.
pub fn write_twin(src: &std::path::Path, out: &std::path::Path) -> anyhow::Result<Fp16Report> {
    let bytes = std::fs::read(src).with_context(|| format!("reading {}", src.display()))?;
    let (fp16, report) =
        convert(&bytes).with_context(|| format!("converting {}", src.display()))?;
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    crate::util::write_atomic(out, &fp16).with_context(|| format!("writing {}", out.display()))?;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_halve_and_the_interface_stays_fp32() {
        let model =
            crate::models::generate::clip_vision(&crate::models::generate::ClipConfig::TINY, 1)
                .to_bytes();
        let (out, report) = convert(&model).unwrap();
        assert!(report.tensors_converted > 10, "{report:?}");
        assert_eq!(report.io_casts, 2, "{report:?}");
        assert!(
            out.len() < model.len() * 6 / 10,
            "{} vs {}",
            out.len(),
            model.len()
        );
        let (inputs, outputs) = graph_io(&out).unwrap();
        for (name, ty) in inputs.iter().chain(&outputs) {
            assert_eq!(*ty, Some(FLOAT), "{name}");
        }
        assert!(matches!(
            convert(b"\x3a\x05ab"),
            Err(Fp16Error::Malformed(_))
        ));
        assert!(matches!(convert(b""), Err(Fp16Error::NoGraph)));
    }
}

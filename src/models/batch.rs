//! Batch-capable twins of models exported at batch 1, derived by arvis itself.
//!
//! The shared YOLOv8n files fix every graph input and output to batch 1, and their heads
//! `Reshape` activations to constant shapes such as `[1, 64, -1]`. The twin makes dimension 0 of
//! the graph's inputs and outputs symbolic (`batch`), rewrites those leading `1`s to `0` (ONNX:
//! "copy this dimension from the input", with `allowzero` off) in copies of the shape constants,
//! and drops the recorded intermediate shapes (ONNX Runtime infers them again). What it cannot
//! prove safe it refuses with the reason, and the caller runs frames one after another instead.
//!
//! Refused: dynamic quantisation (`DynamicQuantizeLinear` computes one scale over the whole
//! tensor, so a frame's detections would depend on the other frames in its batch), control flow,
//! constant target shapes for `Expand`/`Tile`/`ConstantOfShape`/`Resize` on the activation path,
//! and reshapes whose constant shape does not start with 1.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use prost::Message as _;

use super::proto::onnx as pb;

/// Why a model has no batch twin.
#[derive(Debug, thiserror::Error)]
pub enum BatchError {
    /// The protobuf could not be parsed.
    #[error("not a valid ONNX model: {0}")]
    Malformed(#[from] prost::DecodeError),
    /// The model has no graph.
    #[error("the model has no graph")]
    NoGraph,
    /// Something in the graph ties it to one frame per run.
    #[error("cannot make a batch twin: {0}")]
    Unsupported(String),
}

/// What a twin derivation changed.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct BatchReport {
    /// Reshapes whose leading 1 became "copy the batch dimension".
    pub reshapes_rewritten: usize,
    /// Recorded intermediate shapes dropped.
    pub value_infos_dropped: usize,
    /// Graph inputs and outputs given a symbolic batch dimension.
    pub io_made_dynamic: usize,
}

/// The int64 values of a tensor (raw_data or int64_data); None for other types.
fn int64s(t: &pb::TensorProto) -> Option<Vec<i64>> {
    if t.data_type != Some(pb::tensor_proto::DataType::Int64 as i32) {
        return None;
    }
    match &t.raw_data {
        Some(raw) => Some(
            raw.chunks_exact(8)
                .map(|c| i64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
                .collect(),
        ),
        None => Some(t.int64_data.clone()),
    }
}

/// Dimension 0 of a value's tensor shape.
fn first_dim(vi: &mut pb::ValueInfoProto) -> Option<&mut pb::tensor_shape_proto::Dimension> {
    match vi.r#type.as_mut()?.value.as_mut()? {
        pb::type_proto::Value::TensorType(t) => t.shape.as_mut()?.dim.first_mut(),
        _ => None,
    }
}

/// Derive the batch twin of `model` (ONNX bytes).
pub fn derive(model: &[u8]) -> Result<(Vec<u8>, BatchReport), BatchError> {
    let unsupported = |why: String| BatchError::Unsupported(why);
    let mut m = pb::ModelProto::decode(model)?;
    let g = m.graph.as_mut().ok_or(BatchError::NoGraph)?;
    let mut report = BatchReport::default();

    // Constant values by name: initializers and Constant nodes' tensors.
    let mut constants: HashMap<String, pb::TensorProto> = g
        .initializer
        .iter()
        .map(|t| (t.name().to_string(), t.clone()))
        .collect();
    for n in &g.node {
        if n.op_type() == "Constant" {
            if let (Some(out), Some(t)) = (
                n.output.first(),
                n.attribute
                    .iter()
                    .find(|a| a.name() == "value")
                    .and_then(|a| a.t.as_ref()),
            ) {
                constants.insert(out.clone(), t.clone());
            }
        }
    }
    // Values computed from constants alone carry no batch dimension (e.g. a bias reshaped to
    // [1, C, 1, 1]): those reshapes must stay as they are.
    let mut constant_derived: HashSet<String> = constants.keys().cloned().collect();
    for n in &g.node {
        if n.attribute
            .iter()
            .any(|a| a.g.is_some() || !a.graphs.is_empty())
        {
            return Err(unsupported(format!(
                "{} `{}` has a subgraph (control flow)",
                n.op_type(),
                n.name()
            )));
        }
        if n.op_type() == "DynamicQuantizeLinear" {
            return Err(unsupported(
                "the model is dynamically quantised (DynamicQuantizeLinear computes one scale over the whole batch, so each frame's detections would depend on the others in its batch); an FP32 or FP16 model batches".into(),
            ));
        }
        let from_constants = n
            .input
            .iter()
            .filter(|i| !i.is_empty())
            .all(|i| constant_derived.contains(i));
        if from_constants && n.op_type() != "Shape" {
            constant_derived.extend(n.output.iter().cloned());
        }
    }

    let mut new_shapes: Vec<pb::TensorProto> = Vec::new();
    for n in &mut g.node {
        let activation = n
            .input
            .first()
            .is_some_and(|i| !constant_derived.contains(i));
        if !activation {
            continue;
        }
        let op = n.op_type().to_string();
        let constant_input = |idx: usize| {
            n.input
                .get(idx)
                .filter(|s| !s.is_empty())
                .and_then(|s| constants.get(s))
        };
        match op.as_str() {
            "Reshape" => {
                let Some(shape) = constant_input(1).and_then(int64s) else {
                    continue; // computed at run time from the input's own shape
                };
                if n.attribute
                    .iter()
                    .any(|a| a.name() == "allowzero" && a.i == Some(1))
                {
                    return Err(unsupported(format!(
                        "Reshape `{}` sets allowzero",
                        n.name()
                    )));
                }
                match shape.first() {
                    Some(0) => {}
                    Some(1) => {
                        let mut copy = shape.clone();
                        copy[0] = 0;
                        let name = format!("{}__arvis_batch", n.input[1]);
                        if !new_shapes.iter().any(|t| t.name() == name) {
                            new_shapes.push(pb::TensorProto {
                                dims: vec![copy.len() as i64],
                                data_type: Some(pb::tensor_proto::DataType::Int64 as i32),
                                name: Some(name.clone()),
                                raw_data: Some(copy.iter().flat_map(|v| v.to_le_bytes()).collect()),
                                ..Default::default()
                            });
                        }
                        n.input[1] = name;
                        report.reshapes_rewritten += 1;
                    }
                    _ => {
                        return Err(unsupported(format!(
                            "Reshape `{}` reshapes to {shape:?}, which folds the batch into other dimensions",
                            n.name()
                        )));
                    }
                }
            }
            "Expand" | "Tile" if constant_input(1).is_some() => {
                return Err(unsupported(format!(
                    "{op} `{}` has a constant target shape",
                    n.name()
                )));
            }
            "Resize" if constant_input(3).is_some() => {
                return Err(unsupported(format!(
                    "Resize `{}` resizes to constant sizes",
                    n.name()
                )));
            }
            "Flatten"
                if n.attribute
                    .iter()
                    .any(|a| a.name() == "axis" && a.i == Some(0)) =>
            {
                return Err(unsupported(format!(
                    "Flatten `{}` folds the batch",
                    n.name()
                )));
            }
            _ => {}
        }
    }
    if let Some(n) = g.node.iter().find(|n| {
        n.op_type() == "ConstantOfShape" && n.input.iter().all(|i| constants.contains_key(i))
    }) {
        return Err(unsupported(format!(
            "ConstantOfShape `{}` has a constant shape",
            n.name()
        )));
    }
    g.initializer.extend(new_shapes);

    let initializers: HashSet<String> =
        g.initializer.iter().map(|t| t.name().to_string()).collect();
    for vi in g.input.iter_mut().chain(g.output.iter_mut()) {
        if initializers.contains(vi.name()) {
            continue;
        }
        let name = vi.name().to_string();
        let Some(dim) = first_dim(vi) else {
            return Err(unsupported(format!("`{name}` has no tensor shape")));
        };
        use pb::tensor_shape_proto::dimension::Value;
        match &dim.value {
            Some(Value::DimValue(1)) | Some(Value::DimParam(_)) | None => {}
            Some(Value::DimValue(n)) => {
                return Err(unsupported(format!("`{name}` has a fixed batch of {n}")));
            }
        }
        dim.value = Some(Value::DimParam("batch".into()));
        report.io_made_dynamic += 1;
    }
    report.value_infos_dropped = g.value_info.len();
    g.value_info.clear();

    m.metadata_props.push(pb::StringStringEntryProto {
        key: Some("arvis.batch".into()),
        value: Some("batch dimension made dynamic by arvis".into()),
    });
    Ok((m.encode_to_vec(), report))
}

/// Where the batch twin of `src` lives in `dir` (keyed by the source's hash, so a changed model
/// gets a new twin).
pub fn twin_path(src: &Path, dir: &Path) -> anyhow::Result<PathBuf> {
    Ok(super::converted_path(src, dir, "batch")?)
}

/// The batch twin of `src` in `dir`, derived on first use and written atomically.
pub fn ensure_twin(src: &Path, dir: &Path) -> anyhow::Result<PathBuf> {
    let out = twin_path(src, dir)?;
    if out.is_file() {
        return Ok(out);
    }
    let bytes = std::fs::read(src).with_context(|| format!("reading {}", src.display()))?;
    let (twin, report) = derive(&bytes)?;
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    crate::util::write_atomic(&out, &twin).with_context(|| format!("writing {}", out.display()))?;
    tracing::info!(src = %src.display(), twin = %out.display(), ?report, "derived a batch twin");
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::onnx::{Attr, DataType, Dim, Model, Node, Tensor, ValueInfo};

    fn model(shape: Vec<i64>, extra: Vec<Node>) -> Model {
        let mut nodes = vec![
            Node::new("Relu", &["x"], &["r"]),
            Node::new("Reshape", &["r", "shape"], &["y"]),
            // A weight reshaped to [1, C, 1, 1] carries no batch and must stay.
            Node::new("Reshape", &["bias", "bshape"], &["b4"]),
        ];
        nodes.extend(extra);
        Model {
            name: "t".into(),
            nodes,
            inputs: vec![ValueInfo::f32("x", &[1, 2, 3])],
            outputs: vec![ValueInfo {
                name: "y".into(),
                dtype: DataType::Float,
                dims: vec![Dim::Fixed(1), Dim::Fixed(6)],
            }],
            initializers: vec![
                Tensor::i64("shape", &[2], shape),
                Tensor::i64("bshape", &[4], vec![1, -1, 1, 1]),
                Tensor::f32("bias", &[2], vec![0.5, 1.0]),
            ],
            metadata: vec![],
            opset: 17,
        }
    }

    #[test]
    fn leading_ones_of_activation_reshapes_copy_the_batch() {
        let (bytes, report) = derive(&model(vec![1, -1], vec![]).to_bytes()).unwrap();
        assert_eq!(report.reshapes_rewritten, 1, "{report:?}");
        assert_eq!(report.io_made_dynamic, 2);
        let m = pb::ModelProto::decode(bytes.as_slice()).unwrap();
        let g = m.graph.unwrap();
        let reshape = &g.node[1];
        let shape = g
            .initializer
            .iter()
            .find(|t| t.name() == reshape.input[1])
            .unwrap();
        assert_eq!(int64s(shape).unwrap(), vec![0, -1]);
        assert_eq!(
            g.node[2].input[1], "bshape",
            "the weight's reshape is untouched"
        );
        let mut input = g.input[0].clone();
        assert_eq!(
            first_dim(&mut input).unwrap().value,
            Some(pb::tensor_shape_proto::dimension::Value::DimParam(
                "batch".into()
            ))
        );
    }

    #[test]
    fn what_ties_a_graph_to_one_frame_is_refused() {
        let folds = derive(&model(vec![-1, 6], vec![]).to_bytes()).unwrap_err();
        assert!(folds.to_string().contains("folds the batch"), "{folds}");
        let dq = Node::new("DynamicQuantizeLinear", &["y"], &["q", "s", "z"]);
        let quant = derive(&model(vec![1, -1], vec![dq]).to_bytes()).unwrap_err();
        assert!(
            quant.to_string().contains("dynamically quantised"),
            "{quant}"
        );
        let expand = Node::new("Expand", &["r", "shape"], &["e"]);
        assert!(derive(&model(vec![1, -1], vec![expand]).to_bytes()).is_err());
        let zero = Node::new("Reshape", &["r", "shape"], &["z"]).attr("allowzero", Attr::Int(1));
        assert!(derive(&model(vec![1, -1], vec![zero]).to_bytes()).is_err());
        assert!(matches!(
            derive(b"\x3a\x05ab"),
            Err(BatchError::Malformed(_))
        ));
        assert!(matches!(derive(b""), Err(BatchError::NoGraph)));
    }
}

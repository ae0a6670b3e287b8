//! FP32 → FP16 conversion of ONNX models, done by arvis itself: weights and intermediate values
//! become FP16 while the graph's inputs and outputs stay FP32 (Cast nodes at both ends), so
//! callers feed and read the same tensors as before. Inputs that ONNX requires in FP32 (Resize's
//! roi and scales) keep their FP32 producers.
//!
//! The model is rewritten at the protobuf level: every field arvis does not touch is copied
//! byte for byte.

use std::collections::{HashMap, HashSet};

use anyhow::Context as _;

/// ONNX TensorProto data types.
const FLOAT: u64 = 1;
const FLOAT16: u64 = 10;

/// Why a model could not be converted to FP16.
#[derive(Debug, thiserror::Error)]
pub enum Fp16Error {
    /// The protobuf could not be parsed (what was being read).
    #[error("not a valid ONNX model: {0}")]
    Malformed(&'static str),
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

#[derive(Debug, Clone, PartialEq)]
enum Value {
    Varint(u64),
    Fixed64([u8; 8]),
    Bytes(Vec<u8>),
    Fixed32([u8; 4]),
}

type Message = Vec<(u32, Value)>;

fn read_varint(buf: &[u8], pos: &mut usize) -> Result<u64, Fp16Error> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let b = *buf
            .get(*pos)
            .ok_or(Fp16Error::Malformed("truncated varint"))?;
        *pos += 1;
        v |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Ok(v);
        }
    }
    Err(Fp16Error::Malformed("varint too long"))
}

fn take<'a>(buf: &'a [u8], pos: &mut usize, n: usize) -> Result<&'a [u8], Fp16Error> {
    let end = pos
        .checked_add(n)
        .filter(|&e| e <= buf.len())
        .ok_or(Fp16Error::Malformed("field runs past the end"))?;
    let s = &buf[*pos..end];
    *pos = end;
    Ok(s)
}

fn parse(buf: &[u8]) -> Result<Message, Fp16Error> {
    let mut pos = 0;
    let mut out = Vec::new();
    while pos < buf.len() {
        let key = read_varint(buf, &mut pos)?;
        let field = u32::try_from(key >> 3).map_err(|_| Fp16Error::Malformed("bad field"))?;
        let value = match key & 7 {
            0 => Value::Varint(read_varint(buf, &mut pos)?),
            1 => Value::Fixed64(
                take(buf, &mut pos, 8)?
                    .try_into()
                    .map_err(|_| Fp16Error::Malformed("fixed64"))?,
            ),
            2 => {
                let n = read_varint(buf, &mut pos)? as usize;
                Value::Bytes(take(buf, &mut pos, n)?.to_vec())
            }
            5 => Value::Fixed32(
                take(buf, &mut pos, 4)?
                    .try_into()
                    .map_err(|_| Fp16Error::Malformed("fixed32"))?,
            ),
            _ => return Err(Fp16Error::Malformed("unsupported wire type")),
        };
        out.push((field, value));
    }
    Ok(out)
}

fn put_varint(buf: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        buf.push((v as u8) | 0x80);
        v >>= 7;
    }
    buf.push(v as u8);
}

fn encode(msg: &Message) -> Vec<u8> {
    let mut buf = Vec::new();
    for (field, value) in msg {
        let wire = match value {
            Value::Varint(_) => 0,
            Value::Fixed64(_) => 1,
            Value::Bytes(_) => 2,
            Value::Fixed32(_) => 5,
        };
        put_varint(&mut buf, (u64::from(*field) << 3) | wire);
        match value {
            Value::Varint(v) => put_varint(&mut buf, *v),
            Value::Fixed64(b) => buf.extend_from_slice(b),
            Value::Fixed32(b) => buf.extend_from_slice(b),
            Value::Bytes(b) => {
                put_varint(&mut buf, b.len() as u64);
                buf.extend_from_slice(b);
            }
        }
    }
    buf
}

fn bytes(msg: &Message, field: u32) -> impl Iterator<Item = &Vec<u8>> {
    msg.iter().filter_map(move |(f, v)| match v {
        Value::Bytes(b) if *f == field => Some(b),
        _ => None,
    })
}

fn string(msg: &Message, field: u32) -> Option<String> {
    bytes(msg, field)
        .next()
        .map(|b| String::from_utf8_lossy(b).into_owned())
}

fn strings(msg: &Message, field: u32) -> Vec<String> {
    bytes(msg, field)
        .map(|b| String::from_utf8_lossy(b).into_owned())
        .collect()
}

fn varint(msg: &Message, field: u32) -> Option<u64> {
    msg.iter().find_map(|(f, v)| match v {
        Value::Varint(x) if *f == field => Some(*x),
        _ => None,
    })
}

fn set_varint(msg: &mut Message, field: u32, value: u64) {
    msg.retain(|(f, _)| *f != field);
    msg.push((field, Value::Varint(value)));
}

fn str_field(field: u32, s: &str) -> (u32, Value) {
    (field, Value::Bytes(s.as_bytes().to_vec()))
}

/// The f32 values of a FLOAT TensorProto (raw_data or float_data).
fn tensor_floats(t: &Message, name: &str) -> Result<Vec<f32>, Fp16Error> {
    if varint(t, 14) == Some(1) {
        return Err(Fp16Error::External(name.to_string()));
    }
    if let Some(raw) = bytes(t, 9).next() {
        return Ok(raw
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect());
    }
    let mut out = Vec::new();
    for (f, v) in t {
        match (f, v) {
            (4, Value::Bytes(packed)) => out.extend(
                packed
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])),
            ),
            (4, Value::Fixed32(b)) => out.push(f32::from_le_bytes(*b)),
            _ => {}
        }
    }
    Ok(out)
}

/// Convert a FLOAT TensorProto to FLOAT16 in place (values beyond FP16's range saturate).
fn tensor_to_fp16(t: &mut Message) -> Result<bool, Fp16Error> {
    if varint(t, 2) != Some(FLOAT) {
        return Ok(false);
    }
    let name = string(t, 8).unwrap_or_default();
    let values = tensor_floats(t, &name)?;
    let mut raw = Vec::with_capacity(values.len() * 2);
    for v in values {
        let h = half::f16::from_f32(v.clamp(-65504.0, 65504.0));
        raw.extend_from_slice(&h.to_le_bytes());
    }
    t.retain(|(f, _)| *f != 4 && *f != 9 && *f != 2);
    t.push((2, Value::Varint(FLOAT16)));
    t.push((9, Value::Bytes(raw)));
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
    let mut m = parse(model)?;
    let gi = m
        .iter()
        .position(|(f, v)| *f == 7 && matches!(v, Value::Bytes(_)))
        .ok_or(Fp16Error::NoGraph)?;
    let Value::Bytes(graph_bytes) = &m[gi].1 else {
        return Err(Fp16Error::NoGraph);
    };
    let mut g = parse(graph_bytes)?;

    // Nodes, decoded once.
    let mut nodes: Vec<Message> = bytes(&g, 1).map(|b| parse(b)).collect::<Result<_, _>>()?;
    let initializer_names: HashSet<String> = bytes(&g, 5)
        .map(|b| parse(b).map(|t| string(&t, 8).unwrap_or_default()))
        .collect::<Result<_, _>>()?;

    // Tensors that must stay FP32, and who produces them.
    let mut keep: HashSet<String> = HashSet::new();
    for n in &nodes {
        let op = string(n, 4).unwrap_or_default();
        let inputs = strings(n, 1);
        for &(kop, idx) in FP32_INPUTS {
            if op == kop {
                if let Some(name) = inputs.get(idx).filter(|s| !s.is_empty()) {
                    keep.insert(name.clone());
                }
            }
        }
        for (f, v) in n.iter() {
            if let (5, Value::Bytes(a)) = (f, v) {
                if parse(a)?.iter().any(|(f, _)| *f == 6 || *f == 11) {
                    return Err(Fp16Error::Subgraph);
                }
            }
        }
    }
    let producers: HashMap<String, usize> = nodes
        .iter()
        .enumerate()
        .flat_map(|(i, n)| strings(n, 2).into_iter().map(move |o| (o, i)))
        .collect();
    // A kept tensor computed at run time (not a weight or a Constant) gets a Cast back to FP32.
    let mut casts_to_fp32: Vec<(String, String)> = Vec::new();
    for name in &keep {
        let from_constant = producers
            .get(name)
            .is_some_and(|&i| string(&nodes[i], 4).as_deref() == Some("Constant"));
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
    // Every one's type is read (value_infos), so a malformed one is refused, not copied through.
    let float_io = |field: u32| -> Result<Vec<String>, Fp16Error> {
        Ok(value_infos(&g, field)?
            .into_iter()
            .filter(|(name, ty)| !initializer_names.contains(name) && *ty == Some(FLOAT))
            .map(|(name, _)| name)
            .collect())
    };
    let inputs = float_io(11)?;
    let outputs = float_io(12)?;
    let mut rename: HashMap<String, String> = HashMap::new();
    for name in inputs.iter().chain(&outputs) {
        rename.insert(name.clone(), format!("{name}__fp16"));
    }
    for n in &mut nodes {
        // Consumers of graph inputs/outputs read the FP16 copies.
        for (f, v) in n.iter_mut() {
            if let (1, Value::Bytes(b)) = (*f, &mut *v) {
                let s = String::from_utf8_lossy(b).into_owned();
                if let Some(r) = rename.get(&s) {
                    *b = r.as_bytes().to_vec();
                }
            }
        }
        for name in &outputs {
            rename_outputs(n, name, &format!("{name}__fp16"));
        }
        // Weights in Constant nodes, and Casts to FLOAT inside the graph, become FP16.
        let op = string(n, 4).unwrap_or_default();
        let outs = strings(n, 2);
        let kept = outs
            .iter()
            .any(|o| keep.contains(o) && !casts_to_fp32.iter().any(|(_, k)| k == o));
        for (f, v) in n.iter_mut() {
            let (5, Value::Bytes(a)) = (*f, &mut *v) else {
                continue;
            };
            let mut attr = parse(a)?;
            let attr_name = string(&attr, 1).unwrap_or_default();
            let mut changed = false;
            if matches!(op.as_str(), "Constant" | "ConstantOfShape")
                && attr_name == "value"
                && !kept
            {
                for (af, av) in attr.iter_mut() {
                    if let (5, Value::Bytes(tb)) = (*af, &mut *av) {
                        let mut t = parse(tb)?;
                        if tensor_to_fp16(&mut t)? {
                            report.tensors_converted += 1;
                            *tb = encode(&t);
                            changed = true;
                        }
                    }
                }
            }
            if op == "Cast" && attr_name == "to" && varint(&attr, 3) == Some(FLOAT) && !kept {
                set_varint(&mut attr, 3, FLOAT16);
                changed = true;
            }
            if changed {
                *a = encode(&attr);
            }
        }
        if kept && op == "Constant" {
            report.tensors_kept_fp32.extend(outs.iter().cloned());
        }
    }

    // Initializers.
    for (f, v) in g.iter_mut() {
        if let (5, Value::Bytes(b)) = (*f, &mut *v) {
            let mut t = parse(b)?;
            let name = string(&t, 8).unwrap_or_default();
            if keep.contains(&name) {
                if varint(&t, 2) == Some(FLOAT) {
                    report.tensors_kept_fp32.push(name);
                }
                continue;
            }
            if tensor_to_fp16(&mut t)? {
                report.tensors_converted += 1;
                *b = encode(&t);
            }
        }
    }
    // Intermediate value types.
    for (f, v) in g.iter_mut() {
        if let (13, Value::Bytes(b)) = (*f, &mut *v) {
            let mut vi = parse(b)?;
            let name = string(&vi, 1).unwrap_or_default();
            if !keep.contains(&name) && set_elem_type(&mut vi, FLOAT, FLOAT16)? {
                *b = encode(&vi);
            }
        }
    }

    // Boundary casts: inputs first (before every node), outputs and FP32 restores after.
    let cast = |from: &str, to: &str, to_type: u64| -> Message {
        let attr: Message = vec![
            str_field(1, "to"),
            (3, Value::Varint(to_type)),
            (20, Value::Varint(2)), // AttributeProto.INT
        ];
        vec![
            str_field(1, from),
            str_field(2, to),
            str_field(3, &format!("arvis_cast_{to}")),
            str_field(4, "Cast"),
            (5, Value::Bytes(encode(&attr))),
        ]
    };
    let mut new_nodes: Vec<Message> = inputs
        .iter()
        .map(|n| cast(n, &format!("{n}__fp16"), FLOAT16))
        .collect();
    // Restoring casts go right after their producers to keep the order topological.
    for (i, n) in nodes.into_iter().enumerate() {
        let outs = strings(&n, 2);
        new_nodes.push(n);
        for (fp16_name, name) in &casts_to_fp32 {
            if outs.contains(fp16_name) {
                new_nodes.push(cast(fp16_name, name, FLOAT));
            }
        }
        let _ = i;
    }
    for name in &outputs {
        new_nodes.push(cast(&format!("{name}__fp16"), name, FLOAT));
    }
    report.io_casts = inputs.len() + outputs.len();
    report.tensors_kept_fp32.sort();
    report.tensors_kept_fp32.dedup();

    // Reassemble: nodes replace the old ones where the first node was.
    let first_node = g.iter().position(|(f, _)| *f == 1).unwrap_or(0);
    g.retain(|(f, _)| *f != 1);
    let at = first_node.min(g.len());
    for (k, n) in new_nodes.iter().enumerate() {
        g.insert(at + k, (1, Value::Bytes(encode(n))));
    }
    m[gi].1 = Value::Bytes(encode(&g));
    m.push((
        14,
        Value::Bytes(encode(&vec![
            str_field(1, "arvis.fp16"),
            str_field(
                2,
                "converted from FP32 by arvis; inputs and outputs stay FP32",
            ),
        ])),
    ));
    let out = encode(&m);
    report.bytes_after = out.len();
    Ok((out, report))
}

fn rename_outputs(n: &mut Message, from: &str, to: &str) {
    for (f, v) in n.iter_mut() {
        if let (2, Value::Bytes(b)) = (*f, &mut *v) {
            if b.as_slice() == from.as_bytes() {
                *b = to.as_bytes().to_vec();
            }
        }
    }
}

/// ValueInfoProto.type.tensor_type.elem_type.
fn elem_type(vi: &Message) -> Result<Option<u64>, Fp16Error> {
    let Some(ty) = bytes(vi, 2).next() else {
        return Ok(None);
    };
    let ty = parse(ty)?;
    let Some(tensor) = bytes(&ty, 1).next() else {
        return Ok(None);
    };
    Ok(varint(&parse(tensor)?, 1))
}

fn set_elem_type(vi: &mut Message, from: u64, to: u64) -> Result<bool, Fp16Error> {
    if elem_type(vi)? != Some(from) {
        return Ok(false);
    }
    for (f, v) in vi.iter_mut() {
        let (2, Value::Bytes(tb)) = (*f, &mut *v) else {
            continue;
        };
        let mut ty = parse(tb)?;
        for (tf, tv) in ty.iter_mut() {
            let (1, Value::Bytes(tt)) = (*tf, &mut *tv) else {
                continue;
            };
            let mut tensor = parse(tt)?;
            set_varint(&mut tensor, 1, to);
            *tt = encode(&tensor);
        }
        *tb = encode(&ty);
    }
    Ok(true)
}

/// One graph input or output: its name and element type (`1` FP32, `10` FP16; None when the
/// model does not say).
pub type GraphIo = (String, Option<u64>);

/// The graph's inputs and outputs, in order, as [`convert`] reads them: what a converted model
/// must keep unchanged.
pub fn graph_io(model: &[u8]) -> Result<(Vec<GraphIo>, Vec<GraphIo>), Fp16Error> {
    let m = parse(model)?;
    let graph = bytes(&m, 7).next().ok_or(Fp16Error::NoGraph)?;
    let g = parse(graph)?;
    Ok((value_infos(&g, 11)?, value_infos(&g, 12)?))
}

/// The name and element type of each ValueInfoProto in `field` of graph `g` (11 inputs, 12
/// outputs).
fn value_infos(g: &Message, field: u32) -> Result<Vec<GraphIo>, Fp16Error> {
    bytes(g, field)
        .map(|b| {
            let vi = parse(b)?;
            Ok((string(&vi, 1).unwrap_or_default(), elem_type(&vi)?))
        })
        .collect()
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
    fn protobuf_round_trips_byte_for_byte() {
        let model =
            crate::models::generate::clip_vision(&crate::models::generate::ClipConfig::TINY, 1)
                .to_bytes();
        assert_eq!(encode(&parse(&model).unwrap()), model);
    }

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
        let m = parse(&out).unwrap();
        let g = parse(bytes(&m, 7).next().unwrap()).unwrap();
        for field in [11, 12] {
            for b in bytes(&g, field) {
                assert_eq!(elem_type(&parse(b).unwrap()).unwrap(), Some(FLOAT));
            }
        }
        assert!(matches!(parse(b"\x0a\x05ab"), Err(Fp16Error::Malformed(_))));
    }
}

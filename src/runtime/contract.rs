//! Reading a model's interface: tensor shapes, a readable summary of inputs or outputs, and
//! custom metadata — what the detector and the CLIP towers check a model against.

use ort::session::Session;
use ort::value::{Outlet, ValueType};

/// A tensor's dimensions (-1 for a dynamic one); empty for a non-tensor.
pub fn dims(vt: &ValueType) -> Vec<i64> {
    vt.tensor_shape()
        .map(|s| s.iter().copied().collect())
        .unwrap_or_default()
}

/// `name [dims], …` for error messages.
pub fn describe(outlets: &[Outlet]) -> String {
    outlets
        .iter()
        .map(|o| format!("{} {:?}", o.name(), dims(o.dtype())))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A custom metadata value of the model, if it has one.
pub fn custom_metadata(session: &Session, key: &str) -> Option<String> {
    session.metadata().ok().and_then(|m| m.custom(key))
}

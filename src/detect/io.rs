//! How a frame's tensor reaches the detector session and how the output comes back.
//!
//! | `ARVIS_DETECTOR_IO` | what happens per frame |
//! |---|---|
//! | `plain` (default on the CPU) | `session.run` on a borrowed input; ONNX Runtime allocates the output every run |
//! | `bound` (default on CUDA) | IoBinding with the input and output tensors allocated once and reused; on CUDA they are pinned (page-locked) host memory, so uploads and downloads are direct DMA instead of a staged copy |
//! | `graph` (CUDA only) | device tensors at fixed addresses bound once and the CUDA EP's graph capture on: after warm-up each run replays one captured CUDA graph instead of launching every kernel; the frame is copied pinned host → device before the run |
//!
//! On the CPU binding buys nothing (`plain` reads the frame in place; `bound` copies it into the
//! bound buffer): `arvis bench detect` measured them within 1% of each other.

use ort::memory::{AllocationDevice, Allocator, AllocatorType, MemoryInfo, MemoryType};
use ort::session::{IoBinding, Session};
use ort::value::Tensor;

use crate::runtime::Device;

pub use crate::settings::IoMode;

impl IoMode {
    /// What runs when nothing is asked for: binding only pays off when there is an upload.
    pub fn default_for(device: Device) -> IoMode {
        match device {
            Device::Cpu => IoMode::Plain,
            Device::Cuda(_) => IoMode::Bound,
        }
    }

    /// `ARVIS_DETECTOR_IO` from the settings, or the default for `device`.
    pub fn from_settings(device: Device) -> Result<IoMode, String> {
        let settings = crate::settings::current().map_err(|e| e.to_string())?;
        Ok(settings
            .detector_io
            .unwrap_or_else(|| IoMode::default_for(device)))
    }

    /// Whether this mode can run on `device`.
    pub fn check(self, device: Device) -> Result<(), String> {
        match (self, device) {
            (IoMode::Graph, Device::Cpu) => Err(
                "CUDA graphs (ARVIS_DETECTOR_IO=graph) need --device cuda; use plain or bound on the CPU"
                    .into(),
            ),
            _ => Ok(()),
        }
    }
}

/// Buffers bound to the session once and reused for every frame.
pub(super) struct BoundIo {
    binding: IoBinding,
    input_name: String,
    output_name: String,
    /// The letterboxed frame is written here: pinned host memory on CUDA.
    host_input: Tensor<f32>,
    /// Where the output lands for the CPU to read; `None` when the model's output shape is not
    /// fixed, in which case ONNX Runtime allocates it in CPU memory each run.
    host_output: Option<Tensor<f32>>,
    /// `graph` only: the device tensors the captured graph reads and writes.
    device: Option<(Tensor<f32>, Tensor<f32>)>,
}

fn memory(
    device: Device,
    kind: AllocationDevice,
    memory_type: MemoryType,
) -> ort::Result<MemoryInfo> {
    let id = match device {
        Device::Cpu => 0,
        Device::Cuda(id) => id,
    };
    MemoryInfo::new(kind, id, AllocatorType::Device, memory_type)
}

impl BoundIo {
    /// Allocate and bind. `output_shape` is `None` when the model leaves any output dimension open.
    pub(super) fn new(
        session: &Session,
        mode: IoMode,
        device: Device,
        (input_name, input_shape): (&str, [usize; 4]),
        (output_name, output_shape): (&str, Option<[usize; 3]>),
    ) -> ort::Result<BoundIo> {
        // Host buffers: page-locked when a GPU reads them, so the copy engine can DMA directly.
        let host_allocator = match device {
            Device::Cpu => Allocator::default(),
            Device::Cuda(_) => Allocator::new(
                session,
                memory(device, AllocationDevice::CUDA_PINNED, MemoryType::CPUInput)?,
            )?,
        };
        let host_input = Tensor::<f32>::new(&host_allocator, input_shape)?;
        let mut host_output = output_shape
            .map(|shape| Tensor::<f32>::new(&host_allocator, shape))
            .transpose()?;
        let mut binding = session.create_binding()?;
        let device_tensors = match mode {
            IoMode::Graph => {
                let shape = output_shape.ok_or_else(|| {
                    ort::Error::new(
                        "CUDA graphs need a detector whose output shape is fixed; this model leaves it open (use ARVIS_DETECTOR_IO=bound)",
                    )
                })?;
                let on_device = Allocator::new(
                    session,
                    memory(device, AllocationDevice::CUDA, MemoryType::Default)?,
                )?;
                let input = Tensor::<f32>::new(&on_device, input_shape)?;
                let mut output = Tensor::<f32>::new(&on_device, shape)?;
                // Bound once: a captured graph replays against these exact addresses.
                binding.bind_input(input_name, &input)?;
                binding.bind_output(output_name, &mut output)?;
                Some((input, output))
            }
            IoMode::Bound | IoMode::Plain => {
                match host_output.as_mut() {
                    Some(out) => binding.bind_output(output_name, out)?,
                    // Output shape open: ONNX Runtime allocates it in CPU memory each run.
                    None => binding.bind_output_to_device(
                        output_name,
                        &memory(Device::Cpu, AllocationDevice::CPU, MemoryType::Default)?,
                    )?,
                }
                None
            }
        };
        Ok(BoundIo {
            binding,
            input_name: input_name.to_string(),
            output_name: output_name.to_string(),
            host_input,
            host_output,
            device: device_tensors,
        })
    }

    /// `Graph` when the device tensors are bound, else `Bound`.
    pub(super) fn mode(&self) -> IoMode {
        if self.device.is_some() {
            IoMode::Graph
        } else {
            IoMode::Bound
        }
    }

    /// Upload `tensor` (NCHW, the input's exact size), run, and hand the output's shape and data
    /// to `read`.
    pub(super) fn run<R>(
        &mut self,
        session: &mut Session,
        tensor: &[f32],
        read: impl FnOnce(&[i64], &[f32]) -> R,
    ) -> ort::Result<(R, Copies)> {
        self.run_with(session, |host| copy_input(host, tensor), read)
    }

    /// `fill` writes the frame straight into the bound (pinned) input buffer — letterboxing into
    /// it saves a 4.9 MB copy per frame — then upload, run, and `read` the output. The copies
    /// to and from the device are timed on their own ([`Copies`]).
    pub(super) fn run_with<R>(
        &mut self,
        session: &mut Session,
        fill: impl FnOnce(&mut [f32]) -> ort::Result<()>,
        read: impl FnOnce(&[i64], &[f32]) -> R,
    ) -> ort::Result<(R, Copies)> {
        let (_, host) = self.host_input.try_extract_tensor_mut()?;
        fill(host)?;
        let mut copies = Copies::default();
        let t = std::time::Instant::now();
        match self.device.as_mut() {
            // Rebinding is what uploads: on the CPU it only records the pointer (no copy); on
            // CUDA ONNX Runtime copies the pinned buffer to the device here.
            None => self
                .binding
                .bind_input(self.input_name.as_str(), &self.host_input)?,
            // Graph mode: an explicit copy to the bound device tensor (ort runs it as its own
            // small copy session, not on the detector's stream: timed apart for that reason).
            Some((device_input, _)) => {
                self.host_input.copy_into(device_input)?;
                copies.upload_ms = t.elapsed().as_secs_f64() * 1e3;
            }
        }
        let outputs = session.run_binding(&self.binding)?;
        match (self.device.as_ref(), self.host_output.as_mut()) {
            (Some((_, device_output)), Some(host_output)) => {
                drop(outputs);
                let t = std::time::Instant::now();
                device_output.copy_into(&mut *host_output)?;
                copies.download_ms = t.elapsed().as_secs_f64() * 1e3;
                let (shape, data) = host_output.try_extract_tensor()?;
                Ok((read(shape, data), copies))
            }
            _ => {
                let (shape, data) =
                    outputs[self.output_name.as_str()].try_extract_tensor::<f32>()?;
                Ok((read(shape, data), copies))
            }
        }
    }
}

/// Copy a prepared tensor into the bound input buffer, which must be exactly its size.
pub(super) fn copy_input(host: &mut [f32], tensor: &[f32]) -> ort::Result<()> {
    if host.len() != tensor.len() {
        return Err(ort::Error::new(format!(
            "input has {} values, the bound buffer {}",
            tensor.len(),
            host.len()
        )));
    }
    host.copy_from_slice(tensor);
    Ok(())
}

/// The explicit host ↔ device copies of one graph-mode run, ms (zero in the other modes, where
/// ONNX Runtime moves the data inside the run itself).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Copies {
    pub upload_ms: f64,
    pub download_ms: f64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_parse_print_and_check_their_device() {
        for mode in [IoMode::Plain, IoMode::Bound, IoMode::Graph] {
            assert_eq!(mode.to_string().parse::<IoMode>(), Ok(mode));
        }
        assert_eq!(" Bound ".parse::<IoMode>(), Ok(IoMode::Bound));
        let err = "fast".parse::<IoMode>().unwrap_err();
        assert!(
            err.contains("fast") && err.contains("plain, bound or graph"),
            "{err}"
        );
        assert_eq!(IoMode::default_for(Device::Cpu), IoMode::Plain);
        assert_eq!(IoMode::default_for(Device::Cuda(0)), IoMode::Bound);
        assert!(IoMode::Graph.check(Device::Cpu).is_err());
        assert!(IoMode::Graph.check(Device::Cuda(1)).is_ok());
        assert!(IoMode::Bound.check(Device::Cpu).is_ok());
    }
}

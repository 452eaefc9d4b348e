//! Device selection: `auto`, `cpu`, `cuda` or `cuda:N`.

use candle_core::Device;

/// Why the requested device cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error("unknown device `{0}` (use auto, cpu, cuda or cuda:N)")]
    Unknown(String),
    #[error("device `{0}` needs a binary built with `--features cuda`")]
    NoCudaSupport(String),
    /// A setting that the device, dtype or build cannot honour (e.g. `--flash-attention on`).
    #[error("{0}")]
    Unsupported(String),
    #[error("cannot open CUDA device {ordinal}: {reason}")]
    CudaOpen { ordinal: usize, reason: String },
}

/// A device as the command line names it: `auto`, `cpu`, `cuda` (= `cuda:0`) or `cuda:N`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceSpec {
    /// CUDA device 0 when the binary has CUDA and the device opens, else the CPU.
    Auto,
    Cpu,
    Cuda(usize),
}

impl std::str::FromStr for DeviceSpec {
    type Err = DeviceError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let spec = s.trim().to_ascii_lowercase();
        match spec.as_str() {
            "auto" => Ok(DeviceSpec::Auto),
            "cpu" => Ok(DeviceSpec::Cpu),
            "cuda" => Ok(DeviceSpec::Cuda(0)),
            other => match other.strip_prefix("cuda:").map(str::parse::<usize>) {
                Some(Ok(n)) => Ok(DeviceSpec::Cuda(n)),
                _ => Err(DeviceError::Unknown(crate::api::echo(s))),
            },
        }
    }
}

impl std::fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DeviceSpec::Auto => f.write_str("auto"),
            DeviceSpec::Cpu => f.write_str("cpu"),
            DeviceSpec::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

/// Opens the device; `auto` falls back to the CPU when no CUDA device opens.
pub fn select(spec: DeviceSpec) -> Result<Device, DeviceError> {
    match spec {
        DeviceSpec::Cpu => Ok(Device::Cpu),
        DeviceSpec::Auto => {
            if cfg!(feature = "cuda") {
                match open_cuda(0) {
                    Ok(d) => {
                        tracing::info!("device auto: using cuda:0");
                        return Ok(d);
                    }
                    Err(e) => {
                        tracing::info!(reason = %e, "device auto: no CUDA device, using the CPU")
                    }
                }
            } else {
                tracing::info!("device auto: built without CUDA, using the CPU");
            }
            Ok(Device::Cpu)
        }
        DeviceSpec::Cuda(n) => open_cuda(n),
    }
}

fn open_cuda(ordinal: usize) -> Result<Device, DeviceError> {
    if !cfg!(feature = "cuda") {
        return Err(DeviceError::NoCudaSupport(format!("cuda:{ordinal}")));
    }
    std::panic::catch_unwind(|| Device::new_cuda(ordinal))
        .map_err(|_| DeviceError::CudaOpen {
            ordinal,
            reason: "the CUDA driver could not be loaded".into(),
        })?
        .map_err(|e| DeviceError::CudaOpen {
            ordinal,
            reason: e.to_string(),
        })
}

/// Whether CUDA f32 matrix products may use TF32 (process-wide, as in candle).
pub fn set_tf32(allow: bool) {
    candle_core::cuda::set_gemm_reduced_precision_f32(allow);
}

/// A short name for logs, headers and metrics: `cpu` or `cuda:N`.
pub fn name(device: &Device) -> String {
    match device.location() {
        candle_core::DeviceLocation::Cpu => "cpu".to_string(),
        candle_core::DeviceLocation::Cuda { gpu_id } => format!("cuda:{gpu_id}"),
        candle_core::DeviceLocation::Metal { gpu_id } => format!("metal:{gpu_id}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<DeviceSpec, DeviceError> {
        s.parse()
    }

    #[test]
    fn cpu_and_auto_open_here() {
        assert!(matches!(select(DeviceSpec::Cpu), Ok(Device::Cpu)));
        assert!(select(DeviceSpec::Auto).is_ok());
        assert!(matches!(parse("tpu"), Err(DeviceError::Unknown(_))));
        assert!(matches!(parse("cuda:x"), Err(DeviceError::Unknown(_))));
        assert_eq!(parse(" CUDA:2").expect("parses"), DeviceSpec::Cuda(2));
        assert_eq!(parse("cuda").expect("parses").to_string(), "cuda:0");
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn cuda_without_the_feature_is_a_clear_error() {
        let e = select(DeviceSpec::Cuda(1)).expect_err("no CUDA here");
        assert!(e.to_string().contains("--features cuda"), "{e}");
    }
}

//! GPU gauges from NVML, in CUDA builds. NVML is loaded at run time: where it is missing the
//! gauges are simply absent, after one warning.

use crate::metrics::Metrics;

/// Starts polling NVML for the device in use (`cuda:N`); does nothing on the CPU.
pub fn start_monitor(metrics: &Metrics, device_name: &str) {
    let Some(ordinal) = device_name
        .strip_prefix("cuda:")
        .and_then(|n| n.parse::<u32>().ok())
    else {
        return;
    };
    imp::start(metrics.clone(), ordinal);
}

#[cfg(feature = "cuda")]
mod imp {
    use std::time::Duration;

    use nvml_wrapper::enum_wrappers::device::TemperatureSensor;
    use nvml_wrapper::Nvml;

    use crate::metrics::Metrics;

    /// How often the gauges are refreshed.
    const POLL: Duration = Duration::from_secs(5);

    pub fn start(metrics: Metrics, ordinal: u32) {
        let spawned = std::thread::Builder::new()
            .name("virtualfit-nvml".into())
            .spawn(move || {
                let nvml = match Nvml::init() {
                    Ok(n) => n,
                    Err(e) => {
                        tracing::warn!(error = %e, "NVML unavailable: no GPU gauges");
                        return;
                    }
                };
                let device = match nvml.device_by_index(ordinal) {
                    Ok(d) => d,
                    Err(e) => {
                        tracing::warn!(error = %e, ordinal, "NVML cannot open the GPU: no GPU gauges");
                        return;
                    }
                };
                metrics.register_gpu_gauges();
                let label = ordinal.to_string();
                let g = &metrics.gpu;
                loop {
                    if let Ok(u) = device.utilization_rates() {
                        g.utilization.with_label_values(&[&label]).set(f64::from(u.gpu) / 100.0);
                    }
                    if let Ok(m) = device.memory_info() {
                        g.memory_used.with_label_values(&[&label]).set(m.used as f64);
                        g.memory_total.with_label_values(&[&label]).set(m.total as f64);
                    }
                    if let Ok(t) = device.temperature(TemperatureSensor::Gpu) {
                        g.temperature.with_label_values(&[&label]).set(f64::from(t));
                    }
                    if let Ok(p) = device.power_usage() {
                        g.power.with_label_values(&[&label]).set(f64::from(p) / 1000.0);
                    }
                    std::thread::sleep(POLL);
                }
            });
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "cannot start the NVML thread: no GPU gauges");
        }
    }
}

#[cfg(not(feature = "cuda"))]
mod imp {
    use crate::metrics::Metrics;

    pub fn start(_metrics: Metrics, _ordinal: u32) {}
}

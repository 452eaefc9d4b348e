//! Where a forward pass spends its device time: per stage of a model and per kind of op, for
//! `virtualfit gpu-check` and `bench model --profile`. Off unless the calling thread is taking a
//! profile; then each instrumented op and stage it runs records a span (other threads, such as
//! a server's other work or tests running beside, are not counted).
//!
//! On a CUDA device a span is a pair of CUDA events recorded on candle's stream, read only when
//! the profile is finished, so that measuring does not serialise the kernels. On the CPU it is
//! the wall-clock time of the call. Stages contain ops, so stage times include their ops' times;
//! ops are not nested in each other.

use std::cell::RefCell;
use std::time::Instant;

use candle_core::Device;
use serde::Serialize;

thread_local! {
    /// The spans of the profile this thread is taking, if it is taking one.
    static RECORDS: RefCell<Option<Vec<Record>>> = const { RefCell::new(None) };
    /// Spans opened so far on this thread, to order the report by first opening.
    static OPENED: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// What a span measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Level {
    /// A part of a model's forward pass.
    Stage,
    /// One kind of op (a convolution shape class, a kernel).
    Op,
}

/// The time of one kind of span over a profile.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct KindTime {
    pub level: Level,
    pub kind: &'static str,
    pub calls: usize,
    pub seconds: f64,
}

struct Record {
    level: Level,
    kind: &'static str,
    opened: u64,
    time: Measured,
}

enum Measured {
    Seconds(f64),
    #[cfg(feature = "cuda")]
    Events(cuda::Event, cuda::Event),
}

/// An open span; it records its time when dropped.
#[must_use = "a span measures until it is dropped"]
pub struct Span {
    level: Level,
    kind: &'static str,
    opened: u64,
    start: Start,
}

enum Start {
    Cpu(Instant),
    #[cfg(feature = "cuda")]
    Cuda(std::sync::Arc<cuda::Stream>, cuda::Event),
}

/// A span of op `kind` on `device`, or `None` when no profile is being taken.
pub fn op(kind: &'static str, device: &Device) -> Option<Span> {
    span(Level::Op, kind, device)
}

/// A span of stage `name` on `device`, or `None` when no profile is being taken.
pub fn stage(name: &'static str, device: &Device) -> Option<Span> {
    span(Level::Stage, name, device)
}

fn span(level: Level, kind: &'static str, device: &Device) -> Option<Span> {
    if !RECORDS.with(|r| r.borrow().is_some()) {
        return None;
    }
    let start = match device {
        Device::Cpu => Start::Cpu(Instant::now()),
        #[cfg(feature = "cuda")]
        Device::Cuda(d) => {
            let stream = d.cuda_stream();
            // A failure to record only loses this span.
            let event = cuda::timed_event(&stream).ok()?;
            Start::Cuda(stream, event)
        }
        #[allow(unreachable_patterns)]
        _ => return None,
    };
    let opened = OPENED.with(|n| {
        n.set(n.get() + 1);
        n.get()
    });
    Some(Span {
        level,
        kind,
        opened,
        start,
    })
}

impl Drop for Span {
    fn drop(&mut self) {
        let now = Instant::now();
        let time = match std::mem::replace(&mut self.start, Start::Cpu(now)) {
            Start::Cpu(start) => Measured::Seconds(now.duration_since(start).as_secs_f64()),
            #[cfg(feature = "cuda")]
            Start::Cuda(stream, start) => match cuda::timed_event(&stream) {
                Ok(end) => Measured::Events(start, end),
                Err(_) => return,
            },
        };
        let record = Record {
            level: self.level,
            kind: self.kind,
            opened: self.opened,
            time,
        };
        RECORDS.with(|r| {
            if let Some(records) = r.borrow_mut().as_mut() {
                records.push(record);
            }
        });
    }
}

/// Starts a profile on this thread: forgets earlier spans and turns recording on.
pub fn start() {
    RECORDS.with(|r| *r.borrow_mut() = Some(Vec::new()));
}

/// Ends the profile and answers the time per stage and per op kind, stages first, each in the
/// order first opened. On CUDA it waits for the recorded work to finish.
pub fn finish() -> Vec<KindTime> {
    let records = RECORDS.with(|r| r.borrow_mut().take()).unwrap_or_default();
    let mut times: Vec<(KindTime, u64)> = Vec::new();
    for record in records {
        let seconds = match &record.time {
            Measured::Seconds(s) => *s,
            #[cfg(feature = "cuda")]
            Measured::Events(start, end) => match cuda::seconds_between(start, end) {
                Ok(s) => s,
                Err(_) => continue,
            },
        };
        match times
            .iter_mut()
            .find(|(t, _)| t.level == record.level && t.kind == record.kind)
        {
            Some((t, first)) => {
                t.calls += 1;
                t.seconds += seconds;
                *first = (*first).min(record.opened);
            }
            None => times.push((
                KindTime {
                    level: record.level,
                    kind: record.kind,
                    calls: 1,
                    seconds,
                },
                record.opened,
            )),
        }
    }
    times.sort_by_key(|(t, first)| (t.level == Level::Op, *first));
    times.into_iter().map(|(t, _)| t).collect()
}

/// A convolution's shape class, for its op kind.
pub fn conv_kind(kernel: usize, stride: usize, winograd: bool) -> &'static str {
    match (kernel, stride, winograd) {
        (3, 1, true) => "conv 3x3 (Winograd)",
        (1, 1, _) => "conv 1x1",
        (3, 1, _) => "conv 3x3",
        (3, _, _) => "conv 3x3 strided",
        (_, 1, _) => "conv kxk",
        _ => "conv kxk strided",
    }
}

/// One line of a profile's report: a kind's share of a pass.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct Row {
    /// `stage` (a part of the model; includes its ops) or `op` (a kind of op).
    pub level: String,
    pub kind: String,
    pub calls_per_pass: f64,
    pub ms_per_pass: f64,
    /// Of the profiled passes' wall-clock time.
    pub share: f64,
}

/// The report of a profile taken over `passes` passes that took `total_s` in all.
pub fn rows(times: &[KindTime], passes: usize, total_s: f64) -> Vec<Row> {
    let passes = passes.max(1) as f64;
    times
        .iter()
        .map(|t| Row {
            level: match t.level {
                Level::Stage => "stage",
                Level::Op => "op",
            }
            .to_string(),
            kind: t.kind.to_string(),
            calls_per_pass: t.calls as f64 / passes,
            ms_per_pass: t.seconds / passes * 1e3,
            share: if total_s > 0.0 {
                t.seconds / total_s
            } else {
                0.0
            },
        })
        .collect()
}

/// Prints a report as a table.
pub fn print(rows: &[Row]) {
    println!(
        "{:<6} {:<28} {:>8} {:>10} {:>7}",
        "level", "kind", "calls", "ms/pass", "share"
    );
    for row in rows {
        println!(
            "{:<6} {:<28} {:>8.1} {:>10.3} {:>6.1}%",
            row.level,
            row.kind,
            row.calls_per_pass,
            row.ms_per_pass,
            100.0 * row.share
        );
    }
}

#[cfg(feature = "cuda")]
mod cuda {
    use candle_core::cuda_backend::cudarc::driver::sys::CUevent_flags;
    pub use candle_core::cuda_backend::cudarc::driver::{
        CudaEvent as Event, CudaStream as Stream, DriverError,
    };

    /// An event with timing on, recorded on `stream` now.
    pub fn timed_event(stream: &Stream) -> Result<Event, DriverError> {
        stream.record_event(Some(CUevent_flags::CU_EVENT_DEFAULT))
    }

    /// The seconds between two recorded events (waits for the second).
    pub fn seconds_between(start: &Event, end: &Event) -> Result<f64, DriverError> {
        Ok(start.elapsed_ms(end)? as f64 / 1e3)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_are_summed_per_kind_stages_first_and_only_while_profiling() {
        let cpu = Device::Cpu;
        drop(op("conv 1x1", &cpu));
        start();
        {
            let _pass = stage("forward", &cpu);
            for _ in 0..3 {
                let _conv = op("conv 1x1", &cpu);
                std::thread::sleep(std::time::Duration::from_millis(2));
            }
            let _corr = op("correlation", &cpu);
            // Another thread's ops are not this profile's.
            std::thread::spawn(|| drop(op("resize", &Device::Cpu)))
                .join()
                .expect("thread");
        }
        let times = finish();
        drop(op("conv 1x1", &cpu));
        let kinds: Vec<(Level, &str, usize)> =
            times.iter().map(|t| (t.level, t.kind, t.calls)).collect();
        assert_eq!(
            kinds,
            vec![
                (Level::Stage, "forward", 1),
                (Level::Op, "conv 1x1", 3),
                (Level::Op, "correlation", 1),
            ]
        );
        assert!(times[1].seconds >= 0.006, "{times:?}");
        assert!(times[0].seconds >= times[1].seconds + times[2].seconds);
        assert!(finish().is_empty(), "nothing is recorded outside a profile");
    }

    #[test]
    fn convolutions_are_classed_by_kernel_and_stride() {
        assert_eq!(conv_kind(1, 1, false), "conv 1x1");
        assert_eq!(conv_kind(3, 1, true), "conv 3x3 (Winograd)");
        assert_eq!(conv_kind(3, 2, false), "conv 3x3 strided");
        assert_eq!(conv_kind(7, 1, false), "conv kxk");
    }
}

//! Download progress: a bar per file for `virtualfit download` (indicatif), log lines every few
//! seconds for `serve`, whose output is a log.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

/// How often `serve` logs a download's progress.
const LOG_EVERY: Duration = Duration::from_secs(5);

/// How downloads show their progress.
#[derive(Clone)]
pub enum Reporter {
    /// A bar per file on the terminal.
    Bars(MultiProgress),
    /// Log lines.
    Log,
}

impl Reporter {
    pub fn bars() -> Self {
        Reporter::Bars(MultiProgress::new())
    }

    /// The progress of one file, `label` naming it.
    pub fn file(&self, label: &str) -> FileProgress {
        match self {
            Reporter::Bars(multi) => {
                let bar = multi.add(ProgressBar::new(0));
                bar.set_style(
                    ProgressStyle::with_template(
                        "{msg:60!} {bytes:>10}/{total_bytes:10} {wide_bar} {bytes_per_sec:>12} {eta:>4}",
                    )
                    .unwrap_or_else(|_| ProgressStyle::default_bar()),
                );
                bar.set_message(label.to_string());
                FileProgress::Bar(bar)
            }
            Reporter::Log => FileProgress::Log(Arc::new(LogProgress {
                label: label.to_string(),
                total: AtomicU64::new(0),
                done: AtomicU64::new(0),
                last: Mutex::new(Instant::now()),
            })),
        }
    }
}

pub struct LogProgress {
    label: String,
    total: AtomicU64,
    done: AtomicU64,
    last: Mutex<Instant>,
}

impl LogProgress {
    fn log(&self) {
        let (done, total) = (
            self.done.load(Ordering::Relaxed),
            self.total.load(Ordering::Relaxed),
        );
        let percent = (done * 100).checked_div(total).unwrap_or(0);
        tracing::info!(
            file = %self.label,
            done_bytes = done,
            total_bytes = total,
            "downloading {}: {:.1} of {:.1} MB ({percent} %)",
            self.label,
            done as f64 / 1e6,
            total as f64 / 1e6
        );
    }
}

/// One file's progress, as hf-hub reports it (from its chunk tasks, hence cheap clones).
#[derive(Clone)]
pub enum FileProgress {
    Bar(ProgressBar),
    Log(Arc<LogProgress>),
}

impl hf_hub::api::tokio::Progress for FileProgress {
    async fn init(&mut self, size: usize, _filename: &str) {
        match self {
            FileProgress::Bar(bar) => bar.set_length(size as u64),
            FileProgress::Log(p) => {
                p.total.store(size as u64, Ordering::Relaxed);
                p.log();
            }
        }
    }

    async fn update(&mut self, size: usize) {
        match self {
            FileProgress::Bar(bar) => bar.inc(size as u64),
            FileProgress::Log(p) => {
                p.done.fetch_add(size as u64, Ordering::Relaxed);
                let due = {
                    let mut last = p.last.lock().unwrap_or_else(|e| e.into_inner());
                    let due = last.elapsed() >= LOG_EVERY;
                    if due {
                        *last = Instant::now();
                    }
                    due
                };
                if due {
                    p.log();
                }
            }
        }
    }

    async fn finish(&mut self) {
        match self {
            FileProgress::Bar(bar) => ProgressBar::finish(bar),
            FileProgress::Log(p) => {
                p.done
                    .store(p.total.load(Ordering::Relaxed), Ordering::Relaxed);
                p.log();
            }
        }
    }
}

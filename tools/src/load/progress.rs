//! The progress bar of a load on a terminal (indicatif): bytes of the source read, rows/s,
//! MB/s and the time left when the source's size is known.

use indicatif::{ProgressBar, ProgressStyle};

use super::job::Checkpoint;
use super::run::Progress;

pub fn bar(total_bytes: Option<u64>, at_bytes: u64) -> ProgressBar {
    let b = match total_bytes {
        Some(t) => {
            let b = ProgressBar::new(t);
            b.set_style(
                ProgressStyle::with_template("{bar:30} {percent:>3}% {binary_bytes}/{binary_total_bytes} ETA {eta} {msg}")
                    .expect("a valid template"),
            );
            b
        }
        None => {
            let b = ProgressBar::new_spinner();
            b.set_style(ProgressStyle::with_template("{spinner} {binary_bytes} read, {elapsed} {msg}").expect("a valid template"));
            b
        }
    };
    b.set_position(at_bytes);
    b
}

pub fn update(b: &ProgressBar, p: &Progress, at: &Checkpoint) {
    let (rows_s, mb_s) = p.rates(at);
    b.set_position(at.bytes_read);
    b.set_message(format!("{} rows loaded, {} rejected, {:.0} rows/s, {:.1} MB/s", at.rows_loaded, at.rows_rejected, rows_s, mb_s));
}

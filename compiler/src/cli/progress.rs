//! Progress on stderr for steps that can take seconds (calibration, the method and
//! precision searches, a report's evaluation): one line redrawn in place, shown only when
//! stderr is a terminal, `--quiet` is not given, and the step has run for a second.

use std::io::{IsTerminal, Write};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

static QUIET: AtomicBool = AtomicBool::new(false);

/// The step on screen.
struct Step {
    name: String,
    began: Instant,
    drawn: Option<Instant>,
}

static STATE: Mutex<Option<Step>> = Mutex::new(None);

pub(crate) fn set_quiet(q: bool) {
    QUIET.store(q, Ordering::Relaxed);
}

fn enabled() -> bool {
    !QUIET.load(Ordering::Relaxed) && std::io::stderr().is_terminal()
}

/// How long a step runs before its line appears: a second, or `KILN_PROGRESS_DELAY_MS`
/// (the tests set 0 to see the line on fast steps).
fn delay() -> Duration {
    let ms = std::env::var("KILN_PROGRESS_DELAY_MS")
        .ok()
        .and_then(|v| v.parse().ok());
    Duration::from_millis(ms.unwrap_or(1000))
}

/// Reports `done` of `total` (0: unknown) for `step`.
pub(crate) fn report(step: &str, done: usize, total: usize) {
    if !enabled() {
        return;
    }
    let mut st = STATE.lock().unwrap_or_else(|e| e.into_inner());
    let now = Instant::now();
    if st.as_ref().is_none_or(|s| s.name != step) {
        if st.as_ref().is_some_and(|s| s.drawn.is_some()) {
            eprintln!();
        }
        *st = Some(Step {
            name: step.to_string(),
            began: now,
            drawn: None,
        });
    }
    let Some(s) = st.as_mut() else { return };
    let finished = total > 0 && done >= total;
    let due = now - s.began >= delay() && (s.drawn.is_none_or(|t| now - t >= Duration::from_millis(100)) || finished);
    if !due {
        return;
    }
    s.drawn = Some(now);
    let secs = (now - s.began).as_secs_f64();
    let width = 24;
    let line = if let Some(fill) = (done.min(total) * width).checked_div(total) {
        format!(
            "{step}: [{}{}] {done}/{total} {secs:.0} s",
            "#".repeat(fill),
            " ".repeat(width - fill)
        )
    } else {
        format!("{step}: {done} {secs:.0} s")
    };
    let mut e = std::io::stderr().lock();
    let _ = write!(e, "\r\x1b[2K{line}");
    let _ = e.flush();
}

/// Ends the current line, if one was drawn.
pub(crate) fn done() {
    let mut st = STATE.lock().unwrap_or_else(|e| e.into_inner());
    if st.take().is_some_and(|s| s.drawn.is_some()) {
        eprintln!();
    }
}

/// The library's progress hook, drawing here.
pub(crate) fn hook() -> kiln::quantize::Progress {
    kiln::quantize::Progress::new(report)
}

//! The demo's output: section headings and events stamped with the time
//! since the demo started.

use std::fmt::Display;
use std::time::Instant;

/// Prints stamped events to stdout.
#[derive(Debug)]
pub struct Timeline {
    start: Instant,
}

impl Default for Timeline {
    fn default() -> Self {
        Self::new()
    }
}

impl Timeline {
    pub fn new() -> Self {
        Self {
            start: Instant::now(),
        }
    }

    /// `[  1.234s] message`
    pub fn event(&self, message: impl Display) {
        println!("{}", self.line(message));
    }

    /// A heading between steps.
    pub fn section(&self, title: &str) {
        println!("\n== {title}");
    }

    fn line(&self, message: impl Display) -> String {
        format!("[{:>8.3}s] {message}", self.start.elapsed().as_secs_f64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_stamped() {
        let t = Timeline::new();
        let line = t.line("hello");
        assert!(
            line.starts_with('[') && line.ends_with("s] hello"),
            "{line}"
        );
    }
}

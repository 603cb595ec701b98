//! Progress bars for long work (the replay at start, benchmark loads), by
//! indicatif. Drawn on stderr only when it is a terminal: under a service
//! manager, in CI or piped, nothing is drawn and the log lines say the same
//! in one line at the end.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// A bar for `total` items of `what` (hidden when stderr is not a terminal).
pub fn bar(total: u64, what: &str) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr_with_hz(4));
    let style = ProgressStyle::with_template("{msg:>10} [{bar:32}] {pos}/{len} ({per_sec}, {eta} left)").expect("the template is valid").progress_chars("=> ");
    bar.set_style(style);
    bar.set_message(what.to_string());
    bar
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_bar_off_a_terminal_draws_nothing_and_still_counts() {
        use std::io::IsTerminal;
        let bar = super::bar(10, "replay");
        bar.inc(4);
        assert_eq!(bar.position(), 4);
        assert_eq!(bar.is_hidden(), !std::io::stderr().is_terminal());
        bar.finish_and_clear();
    }
}

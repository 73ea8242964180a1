//! Progress on a terminal: a spinner per cargo build and per booting node.
//! Off unless the binary turns it on ([`enable_on_terminal`]), so that tests,
//! CI and pipes see the same plain lines as before; when off, every call here
//! is a plain print or a no-op.

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

static ENABLED: AtomicBool = AtomicBool::new(false);

/// Turns progress display on when both stdout and stderr are terminals
/// (bars draw on stderr; console lines go to stdout above them).
pub fn enable_on_terminal() {
    let on = std::io::stdout().is_terminal() && std::io::stderr().is_terminal();
    ENABLED.store(on, Ordering::Relaxed);
}

/// Whether progress is shown.
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// A set of bars drawn together; printing goes above them.
#[derive(Clone, Default)]
pub struct Progress {
    multi: Option<MultiProgress>,
}

impl Progress {
    /// Bars when [`enabled`], else an inert value that prints plainly.
    pub fn new() -> Self {
        if enabled() {
            Progress {
                multi: Some(MultiProgress::with_draw_target(ProgressDrawTarget::stderr())),
            }
        } else {
            Self::disabled()
        }
    }

    /// Plain printing, no bars.
    pub fn disabled() -> Self {
        Progress { multi: None }
    }

    /// Prints a line on stdout, above the bars.
    pub fn println(&self, line: &str) {
        match &self.multi {
            // Suspend rather than MultiProgress::println, which writes to the
            // bars' stream (stderr): console lines belong on stdout.
            Some(multi) => multi.suspend(|| println!("{line}")),
            None => println!("{line}"),
        }
    }

    /// Prints a line on stderr, above the bars.
    pub fn eprintln(&self, line: &str) {
        match &self.multi {
            Some(multi) => multi.suspend(|| eprintln!("{line}")),
            None => eprintln!("{line}"),
        }
    }

    /// A spinner with a message (inert when off).
    pub fn spinner(&self, message: &str) -> Spinner {
        Spinner(self.multi.as_ref().map(|multi| {
            let bar = multi.add(ProgressBar::new_spinner());
            bar.set_style(
                ProgressStyle::with_template("{spinner} {prefix} {wide_msg} {elapsed}")
                    .expect("constant template"),
            );
            bar.set_message(message.to_string());
            bar.enable_steady_tick(Duration::from_millis(100));
            bar
        }))
    }

    /// A spinner for node `node`, which follows its console (see [`NodeBar::saw`]).
    pub fn node_bar(&self, node: u32, what: &str) -> NodeBar {
        let spinner = self.spinner(what);
        if let Some(bar) = &spinner.0 {
            bar.set_prefix(format!("[n{node}]"));
        }
        NodeBar(spinner)
    }
}

/// One spinner; dropping it without [`Spinner::finish`] clears it.
pub struct Spinner(Option<ProgressBar>);

impl Spinner {
    /// Changes the message.
    pub fn set_message(&self, message: &str) {
        if let Some(bar) = &self.0 {
            bar.set_message(message.to_string());
        }
    }

    /// Stops the spinner, leaving `message` in its place.
    pub fn finish(&self, message: &str) {
        if let Some(bar) = &self.0 {
            bar.finish_with_message(message.to_string());
        }
    }

    /// Removes the spinner from the screen.
    pub fn clear(&self) {
        if let Some(bar) = &self.0 {
            bar.finish_and_clear();
        }
    }
}

impl Drop for Spinner {
    fn drop(&mut self) {
        if let Some(bar) = &self.0
            && !bar.is_finished()
        {
            bar.finish_and_clear();
        }
    }
}

/// A node's spinner: booting, then running, then live, then how it ended.
pub struct NodeBar(Spinner);

impl NodeBar {
    /// Moves the state on from one of the node's console lines.
    pub fn saw(&self, line: &str) {
        let Some(bar) = &self.0.0 else { return };
        // The kernel's banner starts "shmos "; the cluster check prints
        // "all N nodes live", and a node with apps starts them once the
        // others are live ("started app NAME").
        if line.contains("nodes live") {
            bar.set_message("live".to_string());
        } else if let Some((_, app)) = line.split_once("started app ") {
            let name = app.split_whitespace().next().unwrap_or("");
            bar.set_message(format!("live, running {name}"));
        } else if line.starts_with("shmos ") {
            bar.set_message("running".to_string());
        }
    }

    /// Ends the spinner with a check mark or a cross and the exit's description.
    pub fn finish(&self, ok: bool, how: &str) {
        self.0
            .finish(&format!("{} {how}", if ok { "ok:" } else { "FAILED:" }));
    }
}

//! One build of a plugin project, its output streamed to the terminal.
//!
//! Each line the build prints goes to stderr as it comes, prefixed with the
//! plugin's name (`ping | error[E0308]: mismatched types`), so that builds
//! of two plugins at once stay readable, between a line naming the command
//! and one with the result. A failed build's diagnostics (its output minus
//! cargo's progress lines, without colours, bounded) become the error the
//! status API and the dashboard show. `dev/mod.rs` decides when to build;
//! `dev/project.rs` says how.

use std::io::IsTerminal;
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, BufReader};

use super::project::{Project, RustBuild};

/// A build that runs longer than this is stopped and counts as failed: a
/// cold build of a large crate takes minutes, a hung one forever.
const BUILD_LIMIT: Duration = Duration::from_secs(15 * 60);

/// How much of a failed build's output is kept for the status API: the
/// first errors are the ones that matter; the terminal has the rest.
const ERROR_BYTES: usize = 8 * 1024;

/// What a build did.
#[derive(Debug, Clone)]
pub struct Built {
    pub took: Duration,
    /// `None` if it succeeded; else the command, how it ended, and the
    /// compiler's messages.
    pub error: Option<String>,
}

/// Runs the project's build to the end (or [`BUILD_LIMIT`]). Dropping the
/// future kills the build.
pub async fn run(project: &Project, rust: RustBuild) -> Built {
    let started = Instant::now();
    let described = project.describe(rust);
    let prefix = &project.label();
    say(&format!("{prefix} | building: {described}"));
    let mut command = tokio::process::Command::from(project.command(rust));
    if std::io::stderr().is_terminal() {
        // Piped output has no colours unless asked for; the copy kept for
        // the status API has them stripped.
        command.env("CARGO_TERM_COLOR", "always");
    }
    command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(error) => {
            let error = format!("could not start {described}: {error}");
            say(&format!("{prefix} | {error}"));
            return Built {
                took: started.elapsed(),
                error: Some(error),
            };
        }
    };
    let mut kept = Diagnostics::default();
    let stdout = child.stdout.take().map(|s| BufReader::new(s).split(b'\n'));
    let stderr = child.stderr.take().map(|s| BufReader::new(s).split(b'\n'));
    let streamed = async {
        let (mut stdout, mut stderr) = (stdout, stderr);
        while stdout.is_some() || stderr.is_some() {
            let (from_stdout, line) = tokio::select! {
                line = next(&mut stdout), if stdout.is_some() => (true, line),
                line = next(&mut stderr), if stderr.is_some() => (false, line),
            };
            match line {
                Some(line) => {
                    say(&format!("{prefix} | {line}"));
                    kept.push(&line);
                }
                None if from_stdout => stdout = None,
                None => stderr = None,
            }
        }
        child.wait().await
    };
    let status = tokio::time::timeout(BUILD_LIMIT, streamed).await;
    let took = started.elapsed();
    let ended = match status {
        Ok(Ok(status)) if status.success() => None,
        Ok(Ok(status)) => Some(format!("exited with {status}")),
        Ok(Err(error)) => Some(format!("could not be waited for: {error}")),
        Err(_) => Some(format!("was stopped after {} s", BUILD_LIMIT.as_secs())),
    };
    let seconds = took.as_secs_f64();
    let Some(ended) = ended else {
        say(&format!("{prefix} | ok in {seconds:.2} s"));
        return Built { took, error: None };
    };
    say(&format!(
        "{prefix} | build failed in {seconds:.2} s; the last good version keeps serving"
    ));
    Built {
        took,
        error: Some(format!(
            "build failed: {described} {ended}\n{}",
            kept.text()
        )),
    }
}

/// The next line of a piped output; `None` at its end.
async fn next<R: tokio::io::AsyncBufRead + Unpin>(
    lines: &mut Option<tokio::io::Split<R>>,
) -> Option<String> {
    let lines = lines.as_mut()?;
    match lines.next_segment().await {
        Ok(Some(bytes)) => Some(String::from_utf8_lossy(&bytes).trim_end().to_owned()),
        Ok(None) | Err(_) => None,
    }
}

/// One line on stderr, written whole (two builds' lines never mix; a test
/// harness captures it).
fn say(line: &str) {
    eprintln!("{line}");
}

/// The build's messages worth keeping: no progress lines, no colours.
#[derive(Default)]
struct Diagnostics {
    text: String,
    dropped: usize,
}

impl Diagnostics {
    fn push(&mut self, line: &str) {
        let line = strip_ansi(line);
        let progress = [
            "Compiling ",
            "Finished ",
            "Blocking ",
            "Building ",
            "Updating ",
            "Locking ",
            "Downloading ",
            "Downloaded ",
            "Checking ",
            "Fresh ",
        ];
        let trimmed = line.trim_start();
        if progress.iter().any(|p| trimmed.starts_with(p)) {
            return;
        }
        if self.text.len() + line.len() + 1 > ERROR_BYTES {
            self.dropped += line.len() + 1;
            return;
        }
        self.text.push_str(&line);
        self.text.push('\n');
    }

    fn text(&self) -> String {
        let mut text = self.text.trim_end().to_owned();
        if self.dropped > 0 {
            text.push_str(&format!(
                "\n… ({} more bytes in the terminal)",
                self.dropped
            ));
        }
        text
    }
}

/// `text` without terminal escape sequences (`ESC [ … letter`).
fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            if chars.next() == Some('[') {
                for c in chars.by_ref() {
                    if c.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
            continue;
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diagnostics_drop_progress_and_colours_and_stay_bounded() {
        let mut kept = Diagnostics::default();
        kept.push("   Compiling ping v0.1.0 (/p)");
        kept.push("\u{1b}[0m\u{1b}[1m\u{1b}[38;5;9merror[E0308]\u{1b}[0m: mismatched types");
        kept.push("  --> src/lib.rs:3:5");
        assert_eq!(
            kept.text(),
            "error[E0308]: mismatched types\n  --> src/lib.rs:3:5"
        );
        for _ in 0..1000 {
            kept.push("a line of twenty bytes");
        }
        assert!(kept.text().len() < ERROR_BYTES + 100);
        assert!(kept.text().ends_with("more bytes in the terminal)"));
    }
}

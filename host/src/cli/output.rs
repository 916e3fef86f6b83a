//! Output shared by the commands that report: diagnostics as text, JSON
//! documents, and colour, which is used only when stdout is a terminal
//! (and `NO_COLOR` is unset).
//!
//! Must not decide exit codes or what to check.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;

use serde::Serialize;

use crate::config::{Diagnostic, Severity};

/// The arguments of the commands that report on a config (`check`,
/// `doctor`).
#[derive(clap::Args)]
pub struct ConfigReportArgs {
    /// The config file.
    #[arg(long, short, value_name = "FILE", default_value = "pitboss.toml")]
    pub(super) config: PathBuf,
    /// Print one JSON document instead of text.
    #[arg(long)]
    pub(super) json: bool,
}

/// ANSI colours for the few words that carry a verdict.
#[derive(Clone, Copy)]
pub(super) enum Colour {
    Red,
    Yellow,
    Green,
    Cyan,
    Bold,
}

/// Whether to colour: decided once per command.
#[derive(Clone, Copy)]
pub(super) struct Style {
    colour: bool,
}

impl Style {
    pub(super) fn for_stdout() -> Self {
        Style { colour: std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none() }
    }

    pub(super) fn paint(self, text: &str, colour: Colour) -> String {
        if !self.colour {
            return text.to_owned();
        }
        let code = match colour {
            Colour::Red => "31",
            Colour::Yellow => "33",
            Colour::Green => "32",
            Colour::Cyan => "36",
            Colour::Bold => "1",
        };
        format!("\x1b[{code}m{text}\x1b[0m")
    }

    pub(super) fn severity(self, severity: Severity) -> String {
        let colour = match severity {
            Severity::Error => Colour::Red,
            Severity::Warning => Colour::Yellow,
            Severity::Info => Colour::Cyan,
        };
        self.paint(severity.as_str(), colour)
    }
}

/// `error: pool.hpc.size: must be ≥ 1 (got 0)`, its hint indented below.
pub(super) fn print_diagnostics(diagnostics: &[Diagnostic], style: Style, indent: &str) {
    for d in diagnostics {
        let field = if d.field.is_empty() { String::new() } else { format!("{}: ", d.field) };
        println!("{indent}{}: {field}{}", style.severity(d.severity), d.message);
        if let Some(hint) = &d.hint {
            println!("{indent}  hint: {hint}");
        }
    }
}

/// `2 errors, 1 warning` (only the severities present; `no problems`).
pub(super) fn summary(diagnostics: &[Diagnostic]) -> String {
    let count = |severity| diagnostics.iter().filter(|d| d.severity == severity).count();
    let parts: Vec<String> = [(Severity::Error, "error"), (Severity::Warning, "warning"), (Severity::Info, "note")]
        .into_iter()
        .map(|(severity, noun)| (count(severity), noun))
        .filter(|(n, _)| *n > 0)
        .map(|(n, noun)| format!("{n} {noun}{}", if n == 1 { "" } else { "s" }))
        .collect();
    if parts.is_empty() {
        "no problems".to_owned()
    } else {
        parts.join(", ")
    }
}

/// Writes `document` to stdout; a reader that went away (`| head`) is not
/// an error.
pub(super) fn print_json(document: &impl Serialize) -> anyhow::Result<()> {
    let text = serde_json::to_string_pretty(document)?;
    match writeln!(std::io::stdout().lock(), "{text}") {
        Err(err) if err.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        written => Ok(written?),
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: ConfigReportArgs,
    }

    #[test]
    fn report_flags_parse() {
        let cli = Cli::try_parse_from(["check", "--config", "x.toml", "--json"]).unwrap();
        assert_eq!((cli.args.config.to_str(), cli.args.json), (Some("x.toml"), true));
        let cli = Cli::try_parse_from(["check"]).unwrap();
        assert_eq!((cli.args.config.to_str(), cli.args.json), (Some("pitboss.toml"), false));
    }

    #[test]
    fn summaries_count_each_severity() {
        let d = |severity| Diagnostic { severity, field: "f".into(), message: "m".into(), hint: None };
        assert_eq!(summary(&[]), "no problems");
        assert_eq!(summary(&[d(Severity::Error), d(Severity::Error), d(Severity::Warning)]), "2 errors, 1 warning");
        assert_eq!(summary(&[d(Severity::Info)]), "1 note");
    }

    #[test]
    fn no_colour_off_a_terminal() {
        assert_eq!(Style { colour: false }.paint("error", Colour::Red), "error");
        assert_eq!(Style { colour: true }.paint("ok", Colour::Green), "\x1b[32mok\x1b[0m");
    }
}

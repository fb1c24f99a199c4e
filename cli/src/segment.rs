//! `cairn segment ...`: segments in FilterQL.

use std::io::Read as _;
use std::path::PathBuf;

use clap::Subcommand;

use crate::process::UsageError;

#[derive(Subcommand)]
pub enum SegmentCommand {
    /// Parse a FilterQL statement (from FILE, or standard input), check its fields
    /// against the profile, and print its canonical form; on an error, print its line
    /// and column (or the conditions that cannot work) and exit 2.
    Check {
        /// The file holding the statement (default: standard input).
        file: Option<PathBuf>,
    },
}

pub fn run(command: SegmentCommand) -> anyhow::Result<()> {
    match command {
        SegmentCommand::Check { file } => {
            let (source, name) = match &file {
                Some(path) => (
                    std::fs::read_to_string(path).map_err(|err| {
                        UsageError(format!("cannot read {}: {err}", path.display()))
                    })?,
                    path.display().to_string(),
                ),
                None => {
                    let mut source = String::new();
                    std::io::stdin().read_to_string(&mut source)?;
                    (source, "<stdin>".to_string())
                }
            };
            let filter = cairn_filterql::parse(&source).map_err(|err| {
                UsageError(format!(
                    "{name}:{}:{}: {}",
                    err.line, err.column, err.message
                ))
            })?;
            let problems =
                cairn_filterql::check(&filter, &cairn_profile_store::profile::ProfileSchema);
            if !problems.is_empty() {
                return Err(UsageError(format!("{name}: {}", problems.join("; "))).into());
            }
            println!("{}", cairn_filterql::print(&filter));
            Ok(())
        }
    }
}

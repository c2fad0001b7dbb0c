//! `sluice schema check`: every consecutive pair of versions in the registry,
//! compared under a compatibility mode, as a table.

use std::path::Path;
use std::process::ExitCode;

use comfy_table::Table;
use comfy_table::presets::UTF8_FULL_CONDENSED;
use sluice::contract::compat::{Mode, check};
use sluice::contract::registry::{Registry, RegistryError};

/// Checks `names` (or every schema) in the registry at `root`.
pub fn run(root: &Path, names: &[String], mode: Mode) -> ExitCode {
    match compare(root, names, mode) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(2),
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}

fn compare(root: &Path, names: &[String], mode: Mode) -> Result<bool, RegistryError> {
    let registry = Registry::new(root);
    let names = if names.is_empty() {
        registry.names()?
    } else {
        names.to_vec()
    };
    let mut table = Table::new();
    table
        .load_preset(UTF8_FULL_CONDENSED)
        .set_header(["schema", "from", "to", "result", "why"]);
    let mut ok = true;
    for name in &names {
        let versions = registry.versions(name)?;
        for pair in versions.windows(2) {
            let (old, new) = (registry.load(name, pair[0])?, registry.load(name, pair[1])?);
            let breaks = check(
                &old.schema,
                &format!("v{}", pair[0]),
                &new.schema,
                &format!("v{}", pair[1]),
                mode,
            );
            let why = breaks
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("\n");
            ok &= breaks.is_empty();
            let result = if breaks.is_empty() {
                "compatible"
            } else {
                "BREAKING"
            };
            table.add_row([
                name.clone(),
                format!("v{}", pair[0]),
                format!("v{}", pair[1]),
                result.into(),
                why,
            ]);
        }
    }
    outln!("schema registry {} (mode {mode:?})", root.display());
    outln!("{table}");
    outln!(
        "{}",
        if ok {
            "every change is compatible"
        } else {
            "breaking changes: bump the schema under a new name, or make the change compatible"
        }
    );
    Ok(ok)
}

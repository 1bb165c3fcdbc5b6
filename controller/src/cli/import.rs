//! `kiln import FILE`: Metal3 BareMetalHost manifests (with their Secrets) enrolled through the REST API's
//! `POST /api/v1/import`, all or none.

use std::path::PathBuf;

use serde_json::Value;

use kiln_engine::wire::ImportOut;

use super::{CliError, Client, ClientArgs, print_value, read};

/// `kiln import FILE`: the server translates and validates every `BareMetalHost` in the file (with the conflicts a
/// real enrollment would meet) and enrolls all of them in one transaction, or none; hosts with an image are
/// provisioned once inspected. With `dry_run`, only the validation runs and what would happen to each host is
/// printed.
///
/// # Errors
/// [`CliError::Import`] naming the document and field of every refusal.
pub async fn import(args: &ClientArgs, file: &PathBuf, dry_run: bool) -> Result<(), CliError> {
    let text = read(file)?;
    let c = Client::new(args)?;
    let path = if dry_run {
        "/api/v1/import?dry_run=true"
    } else {
        "/api/v1/import"
    };
    let (status, body) = c.post_yaml(path, text).await?;
    let parsed = serde_json::from_str::<ImportOut>(&body);
    let out = match (status, parsed) {
        (200 | 201, Ok(out)) => out,
        (422, Ok(out)) if !out.refused.is_empty() => {
            let lines: Vec<String> = out
                .refused
                .iter()
                .map(|r| format!("{}: {}: {}", r.document, r.field, r.error))
                .collect();
            return Err(CliError::Import {
                file: file.display().to_string(),
                message: format!(
                    "nothing was imported; {} refused:\n  {}",
                    lines.len(),
                    lines.join("\n  ")
                ),
            });
        }
        (status, _) => {
            let v: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
            return Err(CliError::Api {
                status,
                error: v["error"].as_str().map(str::to_owned).unwrap_or(body),
                field: v["field"].as_str().map(str::to_owned),
            });
        }
    };
    if print_value(args.output, &out)? {
        return Ok(());
    }
    for h in &out.hosts {
        if dry_run {
            println!("{}: would be {} (dry run)", h.name, h.outcome);
        } else {
            println!("{}: {}", h.name, h.outcome);
        }
    }
    Ok(())
}

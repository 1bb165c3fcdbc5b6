//! `kiln import FILE`: Metal3 BareMetalHost manifests (with their Secrets) enrolled through the REST API, all or
//! none (every document is checked with a dry run first).

use std::path::PathBuf;

use serde_json::Value;

use kiln_engine::store::Event;
use kiln_engine::wire::HostOut;

use super::{CliError, Client, ClientArgs, print_value, read};

/// `kiln import FILE`: enrolls every `BareMetalHost` in the file (and provisions those with an image), all or
/// none: every document is validated first (by the server, with a dry run that also finds name, MAC and BMC
/// conflicts), then the hosts are enrolled; if one is refused midway, the hosts this run enrolled are deleted again.
/// With `dry_run`, only the validation runs and what would happen to each host is printed.
///
/// # Errors
/// [`CliError`] naming the document and field of every refusal.
pub async fn import(args: &ClientArgs, file: &PathBuf, dry_run: bool) -> Result<(), CliError> {
    let text = read(file)?;
    let docs: Vec<Value> = serde_saphyr::from_multiple(&text).map_err(|e| CliError::Parse {
        what: file.display().to_string(),
        message: e.to_string(),
    })?;
    let hosts = crate::import::translate(&docs).map_err(|e| CliError::Parse {
        what: file.display().to_string(),
        message: e.to_string(),
    })?;
    let c = Client::new(args)?;
    // 1. Validate everything; collect every refusal, not just the first.
    let mut refusals = Vec::new();
    for h in &hosts {
        match c.post::<HostOut>("/api/v1/hosts?dry_run=true", &h.enroll).await {
            Ok(_) => {}
            // kiln could not be asked (unreachable, TLS not trusted): not a refusal of this document.
            Err(e @ CliError::Http { .. }) => return Err(e),
            Err(e) => refusals.push(format!("{}: {e}", h.doc)),
        }
        if let Some(p) = &h.provision
            && let Err(e) = kiln_engine::wire::image_from(&p.image)
        {
            refusals.push(format!("{}: spec.{e}", h.doc));
        }
    }
    if !refusals.is_empty() {
        return Err(CliError::Import {
            file: file.display().to_string(),
            message: format!(
                "nothing was imported; {} refused:\n  {}",
                refusals.len(),
                refusals.join("\n  ")
            ),
        });
    }
    let verb = |h: &crate::import::ImportedHost| {
        if h.provision.is_some() {
            "enrolled, provisioning"
        } else {
            "enrolled"
        }
    };
    if dry_run {
        for h in &hosts {
            println!("{}: would be {} (dry run)", h.name, verb(h));
        }
        return Ok(());
    }
    // 2. Enroll all; undo this run's enrollments if one is refused after all (a conflict that appeared meanwhile).
    let mut done: Vec<Event> = Vec::new();
    for h in &hosts {
        let r = async {
            let _: HostOut = c.post("/api/v1/hosts", &h.enroll).await?;
            if let Some(p) = &h.provision {
                let _: HostOut = c.post(&format!("/api/v1/hosts/{}/provision", h.name), p).await?;
            }
            Ok::<(), CliError>(())
        }
        .await;
        if let Err(e) = r {
            let mut undone = done.iter().map(|d| d.host.clone()).collect::<Vec<_>>();
            if !matches!(&e, CliError::Api { status: 409, .. }) {
                undone.push(h.name.clone());
            }
            for name in &undone {
                let _ = c.delete::<Value>(&format!("/api/v1/hosts/{name}")).await;
            }
            return Err(CliError::Import {
                file: file.display().to_string(),
                message: format!("{}: {e}; the hosts this import enrolled were deleted again", h.doc),
            });
        }
        println!("{}: {}", h.name, verb(h));
        done.push(Event {
            id: 0,
            host: h.name.clone(),
            at: kiln_engine::executor::now(),
            kind: "import".into(),
            message: verb(h).into(),
        });
    }
    print_value(args.output, &done)?;
    Ok(())
}

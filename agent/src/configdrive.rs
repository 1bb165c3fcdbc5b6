//! Writing the config drive after the image: delegated to `kiln_images` (the `config-2` layout and the partition
//! at the end of the disk belong there).

use std::path::Path;
use std::sync::Arc;

use kiln_images::protocol::ConfigDrive;

use crate::error::AgentError;
use crate::exec::Agent;

/// Writes `cd` onto `disk` after the image's partitions; returns the result detail.
///
/// # Errors
/// [`AgentError::ConfigDrive`].
pub async fn write(agent: &Arc<Agent>, disk: &Path, cd: &ConfigDrive) -> Result<serde_json::Value, AgentError> {
    let _ = (agent, cd);
    Err(AgentError::ConfigDrive {
        disk: disk.display().to_string(),
        reason: "this kiln-images has no config drive writer yet".into(),
    })
}

//! Virtual media (DSP0268 VirtualMedia): the InsertMedia/EjectMedia actions where the BMC advertises them, an
//! ETag-guarded PATCH of the resource where it does not (HPE iLO 4/5 1.x, Lenovo XCC, the DMTF mockups). A BMC that
//! refuses the optional `Inserted`/`WriteProtected` (Supermicro X11/X12 in the action, iLO in the PATCH) is asked
//! again with the image alone, as sushy does.

use reqwest::Method;
use serde_json::{Value, json};

use super::RedfishBmc;
use super::client::Client;
use super::model::{Collection, VirtualMedia};
use super::quirks;
use crate::error::BmcError;

/// The CD/DVD-capable members of a VirtualMedia collection, with their paths.
pub(super) async fn cd_media(client: &Client, collection: &str) -> Result<Vec<(String, VirtualMedia)>, BmcError> {
    let members = client.get_json::<Collection>(collection).await?.member_ids();
    let mut out = Vec::new();
    for member in members {
        let vm: VirtualMedia = client.get_json(&member).await?;
        if vm.is_cd() {
            out.push((member, vm));
        }
    }
    Ok(out)
}

impl RedfishBmc {
    pub(super) async fn insert(&self, image_url: &str) -> Result<(), BmcError> {
        let collection = self.found.virtual_media.as_ref().ok_or_else(|| BmcError::Unsupported {
            bmc: self.bmc(),
            operation: "virtual media".into(),
        })?;
        let media = cd_media(&self.client, collection).await?;
        let Some((path, vm)) = media.into_iter().next() else {
            return Err(BmcError::Unsupported {
                bmc: self.bmc(),
                operation: "virtual CD".into(),
            });
        };
        if vm.is_inserted() {
            if vm.image.as_deref() == Some(image_url) {
                return Ok(());
            }
            self.eject_one(&path, &vm).await?;
        }
        let full = json!({"Image": image_url, "Inserted": true, "WriteProtected": true});
        let minimal = json!({"Image": image_url});
        let action = vm
            .actions
            .as_ref()
            .and_then(|a| a.insert.as_ref())
            .and_then(|t| t.target.clone());
        let Some(target) = action else {
            return self.patch_media(&path, &full, &minimal, "InsertMedia").await;
        };
        match self.post_media(&target, &full, &minimal, "InsertMedia").await {
            // Advertised but not there: the resource itself may take the image.
            Err(BmcError::NotFound { .. } | BmcError::Unsupported { .. }) => {
                self.patch_media(&path, &full, &minimal, "InsertMedia").await
            }
            other => other,
        }
    }

    pub(super) async fn eject_all(&self) -> Result<(), BmcError> {
        let Some(collection) = &self.found.virtual_media else {
            return Ok(());
        };
        let members = self.client.get_json::<Collection>(collection).await?.member_ids();
        for member in members {
            let vm: VirtualMedia = self.client.get_json(&member).await?;
            if vm.is_inserted() {
                self.eject_one(&member, &vm).await?;
            }
        }
        Ok(())
    }

    async fn eject_one(&self, path: &str, vm: &VirtualMedia) -> Result<(), BmcError> {
        let full = json!({"Image": null, "Inserted": false});
        let minimal = json!({"Image": null});
        let action = vm
            .actions
            .as_ref()
            .and_then(|a| a.eject.as_ref())
            .and_then(|t| t.target.clone());
        let Some(target) = action else {
            return self.patch_media(path, &full, &minimal, "EjectMedia").await;
        };
        match self.client.request(Method::POST, &target, Some(&json!({}))).await {
            Ok(_) => Ok(()),
            // Services without the action (Redfish < 1.1 VirtualMedia): PATCH the resource instead.
            Err(BmcError::NotFound { .. } | BmcError::Unsupported { .. }) => {
                self.patch_media(path, &full, &minimal, "EjectMedia").await
            }
            Err(e) => Err(e),
        }
    }

    /// POSTs the action with `full`, and with `minimal` when the BMC refuses an optional parameter.
    async fn post_media(&self, target: &str, full: &Value, minimal: &Value, what: &str) -> Result<(), BmcError> {
        match self.client.request(Method::POST, target, Some(full)).await {
            Ok(_) => Ok(()),
            Err(BmcError::Http { status, message, .. }) if quirks::is_optional_parameter_refused(status, &message) => {
                tracing::info!(bmc = %self.client.bmc, action = what, %message,
                    "the BMC refuses the optional Inserted/WriteProtected parameters: sending the image alone");
                self.client
                    .request(Method::POST, target, Some(minimal))
                    .await
                    .map(|_| ())
            }
            Err(e) => Err(e),
        }
    }

    /// PATCHes the VirtualMedia resource (ETag-guarded) with `full`, and with `minimal` when the BMC refuses an
    /// optional property. A BMC that takes no PATCH either gets the standard action at its usual place.
    async fn patch_media(&self, path: &str, full: &Value, minimal: &Value, what: &str) -> Result<(), BmcError> {
        let (_, etag) = self.client.get_with_etag::<Value>(path).await?;
        match self.client.patch(path, full, etag.as_deref()).await {
            Ok(_) => Ok(()),
            Err(BmcError::Http { status, message, .. }) if quirks::is_optional_parameter_refused(status, &message) => {
                tracing::info!(bmc = %self.client.bmc, action = what, %message,
                    "the BMC refuses Inserted/WriteProtected in a VirtualMedia PATCH: sending the image alone");
                let (_, etag) = self.client.get_with_etag::<Value>(path).await?;
                self.client.patch(path, minimal, etag.as_deref()).await.map(|_| ())
            }
            Err(BmcError::Unsupported { .. }) => {
                let target = quirks::join(path, &format!("Actions/VirtualMedia.{what}"));
                let body = if what == "EjectMedia" { json!({}) } else { full.clone() };
                self.post_media(&target, &body, minimal, what).await
            }
            Err(e) => Err(e),
        }
    }
}

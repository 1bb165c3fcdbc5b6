//! `POST /api/v1/import`: Metal3 BareMetalHost manifests (multi-document YAML with their Secrets, as `kubectl apply`
//! takes them) enrolled all or none. Every document is translated ([`crate::import`]) and validated exactly as `POST
//! /api/v1/hosts` and `.../provision` validate, conflicts with enrolled hosts included, and every refusal is reported
//! at once; then all hosts are created in one store transaction. `kiln import` and the web page's import use it.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Query, State as AxState};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::Value;

use crate::http_util::{ApiError, AppState};
use kiln_engine::executor::now;
use kiln_engine::wire::{ImportOut, ImportRefusal, ImportedOut, image_credentials_from, image_from, spec_from};

#[derive(Debug, Deserialize, Default)]
pub(crate) struct ImportQuery {
    #[serde(default)]
    dry_run: bool,
}

fn refusal(document: &str, field: &str, error: impl Into<String>) -> ImportRefusal {
    ImportRefusal {
        document: document.to_owned(),
        field: field.to_owned(),
        error: error.into(),
    }
}

/// The request fields the API names, as the manifest's fields (what a Metal3 user wrote).
fn manifest_field(api_field: &str) -> String {
    let f = match api_field {
        "name" => "metadata.name",
        "boot_mac" => "spec.bootMACAddress",
        "boot_mode" => "spec.bootMode",
        "labels" => "metadata.labels",
        "preprovisioning_network_data" => "spec.preprovisioningNetworkDataName",
        f if f.starts_with("bmc.") => return format!("spec.{f}"),
        f if f.starts_with("root_device_hints") => return f.replacen("root_device_hints", "spec.rootDeviceHints", 1),
        f if f.starts_with("image.") => return format!("spec.{f}"),
        f => return format!("spec.{f}"),
    };
    f.to_owned()
}

fn refused(out: ImportOut) -> Response {
    let first = &out.refused[0];
    let mut body = serde_json::to_value(&out).unwrap_or_default();
    body["error"] = Value::String(format!(
        "nothing was imported; {} refused: {}: {}: {}{}",
        out.refused.len(),
        first.document,
        first.field,
        first.error,
        if out.refused.len() > 1 {
            " (and more, see refused)"
        } else {
            ""
        }
    ));
    body["field"] = Value::String(first.field.clone());
    (StatusCode::UNPROCESSABLE_ENTITY, Json(body)).into_response()
}

pub(crate) async fn import(
    AxState(app): AxState<AppState>,
    Query(q): Query<ImportQuery>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let text = std::str::from_utf8(&body)
        .map_err(|_| ApiError::field(StatusCode::BAD_REQUEST, "manifest", "the manifest is not UTF-8 text"))?;
    let docs: Vec<Value> = serde_saphyr::from_multiple(text)
        .map_err(|e| ApiError::field(StatusCode::BAD_REQUEST, "manifest", format!("not YAML: {e}")))?;
    let mut out = ImportOut {
        dry_run: q.dry_run,
        ..ImportOut::default()
    };
    let hosts = match crate::import::translate(&docs) {
        Ok(h) => h,
        Err(e) => {
            out.refused.push(refusal(&e.doc, &e.field, e.message));
            return Ok(refused(out));
        }
    };
    if hosts.is_empty() {
        return Err(ApiError::field(
            StatusCode::UNPROCESSABLE_ENTITY,
            "manifest",
            "no BareMetalHost in the manifest",
        ));
    }
    // 1. Validate every document as the API would, conflicts with enrolled hosts and earlier documents included.
    let mut taken = crate::api::Taken::load(&app).await?;
    let mut specs = Vec::new();
    for h in &hosts {
        let (name, mut spec) = match spec_from(&h.enroll) {
            Ok(v) => v,
            Err(e) => {
                out.refused.push(refusal(&h.doc, &manifest_field(&e.field), e.message));
                continue;
            }
        };
        if let Some(b) = &spec.bmc
            && let Err(m) = app.executor.accepts(&b.address)
        {
            out.refused.push(refusal(&h.doc, "spec.bmc.address", m));
            continue;
        }
        if let Err(e) = taken.check(&name, &spec) {
            out.refused.push(refusal(
                &h.doc,
                &manifest_field(e.field.as_deref().unwrap_or("name")),
                e.error,
            ));
            continue;
        }
        // The config drive's data, used when the host is provisioned, as Metal3 takes it at enrollment.
        spec.user_data = h.user_data.clone();
        spec.network_data = h.network_data.clone();
        spec.meta_data = h.meta_data.clone();
        if let Some(i) = &h.image {
            match image_from(i) {
                // Enrolled with its image: it is provisioned once inspected, as a Metal3 host with an image is.
                Ok(image) => {
                    spec.image = Some(image);
                    spec.image_credentials = image_credentials_from(i);
                }
                Err(e) => {
                    out.refused.push(refusal(&h.doc, &manifest_field(&e.field), e.message));
                    continue;
                }
            }
        }
        let outcome = match (&h.image, spec.options.externally_provisioned) {
            (Some(_), false) => "enrolled, provisioning",
            (Some(_), true) => "enrolled as externally provisioned",
            (None, _) => "enrolled",
        };
        out.hosts.push(ImportedOut {
            document: h.doc.clone(),
            name: name.to_string(),
            outcome: outcome.into(),
        });
        taken.add(&name, &spec);
        let why = format!("imported from {} ({outcome})", h.doc);
        specs.push((name, spec, why));
    }
    if !out.refused.is_empty() {
        out.hosts.clear();
        return Ok(refused(out));
    }
    if q.dry_run {
        return Ok((StatusCode::OK, Json(out)).into_response());
    }
    // 2. All in one transaction: a conflict that appeared since the check enrolls none.
    let t = now();
    app.store.create_hosts(&specs, t).await?;
    app.executor.poke();
    Ok((StatusCode::CREATED, Json(out)).into_response())
}

//! The OpenAPI document of kiln's HTTP API, generated from the very request and response types the handlers parse
//! and return (their `JsonSchema` derives), plus one table of routes. `kiln openapi` prints it, `GET
//! /api/v1/openapi.json` serves it, and `http/src/openapi.json` is a checked-in copy that a test keeps equal
//! to the generated document (as `deploy/crds` is kept equal to the CRD types).

use schemars::generate::SchemaSettings;
use schemars::{JsonSchema, Schema, SchemaGenerator};
use serde_json::{Value, json};

use kiln_engine::store::Event;
use kiln_engine::wire::{
    BmcOut, DeprovisionIn, HostCreate, HostOut, HostTimingOut, ImportOut, InspectionOut, PowerIn, ProvisionIn,
    TimingOut,
};

/// The error body every route answers with on failure.
#[derive(Debug, serde::Serialize, JsonSchema)]
#[allow(dead_code)]
struct Error {
    /// What went wrong, in words.
    error: String,
    /// The request field that is wrong, when one is (`bmc.address`, `image.checksum`, ...).
    field: Option<String>,
}

/// How a route answers: status, description and body schema.
struct Answer(u16, &'static str, Option<Schema>);

struct Route {
    method: &'static str,
    path: &'static str,
    summary: &'static str,
    /// `false` for routes that take no admin token (the agent's and the health/metrics routes).
    admin: bool,
    params: Vec<Value>,
    body: Option<Schema>,
    /// The media type of `body`.
    body_type: &'static str,
    answers: Vec<Answer>,
}

fn schema_of<T: JsonSchema>(g: &mut SchemaGenerator) -> Option<Schema> {
    Some(g.subschema_for::<T>())
}

fn routes(g: &mut SchemaGenerator) -> Vec<Route> {
    let host = schema_of::<HostOut>(g);
    let hosts = schema_of::<Vec<HostOut>>(g);
    let events = schema_of::<Vec<Event>>(g);
    let limit = json!({ "name": "limit", "in": "query", "schema": { "type": "integer", "minimum": 1, "maximum": 10000 },
                        "description": "most recent events to return (default 100)" });
    let route = |method, path, summary, body: Option<Schema>, answers: Vec<Answer>| Route {
        method,
        path,
        summary,
        admin: true,
        params: vec![],
        body,
        body_type: "application/json",
        answers,
    };
    let _ = schema_of::<BmcOut>(g);
    vec![
        Route {
            params: vec![
                json!({ "name": "selector", "in": "query", "schema": { "type": "string" },
                                 "description": "label selector k=v[,k=v]" }),
            ],
            ..route(
                "get",
                "/api/v1/hosts",
                "List hosts",
                None,
                vec![Answer(200, "the hosts", hosts)],
            )
        },
        Route {
            params: vec![
                json!({ "name": "dry_run", "in": "query", "schema": { "type": "boolean", "default": false },
                "description": "validate and check for name, boot MAC and BMC conflicts; write nothing" }),
            ],
            ..route(
                "post",
                "/api/v1/hosts",
                "Enroll a host",
                schema_of::<HostCreate>(g),
                vec![
                    Answer(201, "enrolled", host.clone()),
                    Answer(200, "dry run: the host as it would be enrolled", host.clone()),
                    Answer(409, "the name, boot MAC or BMC is already another host's", None),
                ],
            )
        },
        Route {
            params: vec![
                json!({ "name": "dry_run", "in": "query", "schema": { "type": "boolean", "default": false },
                "description": "validate every document, conflicts included; write nothing" }),
            ],
            body_type: "application/yaml",
            ..route(
                "post",
                "/api/v1/import",
                "Import Metal3 BareMetalHost manifests (multi-document YAML with their Secrets), all or none",
                Some(json!({ "type": "string", "description": "BareMetalHost and Secret documents, as kubectl apply takes them" }).try_into().expect("a schema object")),
                vec![
                    Answer(201, "every host enrolled", schema_of::<ImportOut>(g)),
                    Answer(200, "dry run: what would happen to each host", schema_of::<ImportOut>(g)),
                    Answer(422, "refused (every refusal listed); nothing was enrolled", schema_of::<ImportOut>(g)),
                ],
            )
        },
        route(
            "get",
            "/api/v1/hosts/{name}",
            "Show a host",
            None,
            vec![Answer(200, "the host", host.clone())],
        ),
        route(
            "delete",
            "/api/v1/hosts/{name}",
            "Delete a host (powers it off)",
            None,
            vec![Answer(202, "deleting", host.clone())],
        ),
        route(
            "post",
            "/api/v1/hosts/{name}/provision",
            "Set the image to write",
            schema_of::<ProvisionIn>(g),
            vec![
                Answer(202, "provisioning", host.clone()),
                Answer(409, "the host cannot be written", None),
            ],
        ),
        route(
            "post",
            "/api/v1/hosts/{name}/deprovision",
            "Remove the image: erase (unless cleaning is disabled) and make available",
            schema_of::<DeprovisionIn>(g),
            vec![Answer(202, "deprovisioning", host.clone())],
        ),
        route(
            "post",
            "/api/v1/hosts/{name}/power",
            "Power action",
            schema_of::<PowerIn>(g),
            vec![
                Answer(202, "requested", host.clone()),
                Answer(409, "kiln is driving the host", None),
            ],
        ),
        route(
            "post",
            "/api/v1/hosts/{name}/inspect",
            "Inspect again",
            None,
            vec![
                Answer(202, "requested", host.clone()),
                Answer(409, "the host is not available", None),
            ],
        ),
        Route {
            params: vec![limit.clone()],
            ..route(
                "get",
                "/api/v1/hosts/{name}/events",
                "Events of a host",
                None,
                vec![Answer(200, "newest first", events.clone())],
            )
        },
        route(
            "get",
            "/api/v1/hosts/{name}/timings",
            "Per-phase timing of a host",
            None,
            vec![Answer(
                200,
                "one row per phase and sub-phase",
                schema_of::<Vec<TimingOut>>(g),
            )],
        ),
        route(
            "get",
            "/api/v1/hosts/{name}/inspection",
            "Inspection data",
            None,
            vec![Answer(200, "the inspected hardware", schema_of::<InspectionOut>(g))],
        ),
        Route {
            params: vec![
                json!({ "name": "phase", "in": "query", "required": true, "schema": { "type": "string" },
                        "description": "registering, inspecting, preparing, provisioning or deprovisioning, or a job's \
                                        sub-phase (provisioning.running, inspecting.booting, ...)" }),
                json!({ "name": "limit", "in": "query", "schema": { "type": "integer", "minimum": 1, "maximum": 10000 },
                        "description": "most recent records to return (default 200)" }),
            ],
            ..route(
                "get",
                "/api/v1/timings",
                "Durations of one phase across the hosts",
                None,
                vec![Answer(
                    200,
                    "finished records of the phase, newest first",
                    schema_of::<Vec<HostTimingOut>>(g),
                )],
            )
        },
        Route {
            params: vec![limit],
            ..route(
                "get",
                "/api/v1/events",
                "Latest events",
                None,
                vec![Answer(200, "newest first", events)],
            )
        },
        Route {
            admin: false,
            ..route(
                "post",
                "/agent/v1/heartbeat",
                "Agent heartbeat (boot token); returns the next command (kiln_images::protocol::HeartbeatReply)",
                None,
                vec![Answer(200, "HeartbeatReply", None)],
            )
        },
        Route {
            admin: false,
            ..route(
                "post",
                "/agent/v1/inventory",
                "Agent hardware inventory",
                None,
                vec![Answer(204, "stored", None)],
            )
        },
        Route {
            admin: false,
            ..route(
                "post",
                "/agent/v1/progress",
                "Agent progress",
                None,
                vec![Answer(204, "stored", None)],
            )
        },
        Route {
            admin: false,
            ..route(
                "post",
                "/agent/v1/result",
                "Agent command result",
                None,
                vec![Answer(204, "stored", None), Answer(404, "no such command", None)],
            )
        },
        Route {
            admin: false,
            ..route("get", "/healthz", "Health", None, vec![Answer(200, "ok", None)])
        },
        Route {
            admin: false,
            ..route(
                "get",
                "/metrics",
                "Prometheus metrics",
                None,
                vec![Answer(200, "text exposition format", None)],
            )
        },
    ]
}

/// The OpenAPI 3.1 document.
pub fn document() -> Value {
    let mut settings = SchemaSettings::draft2020_12();
    settings.definitions_path = "/components/schemas".into();
    settings.meta_schema = None;
    let mut g = settings.into_generator();
    let error = g.subschema_for::<Error>();
    let routes = routes(&mut g);
    let mut paths = serde_json::Map::new();
    for r in routes {
        let mut responses = serde_json::Map::new();
        for Answer(code, description, schema) in r.answers {
            let mut a = json!({ "description": description });
            if let Some(s) = schema {
                a["content"] = json!({ "application/json": { "schema": s } });
            }
            responses.insert(code.to_string(), a);
        }
        let mut errors: Vec<u16> = vec![401];
        if r.admin {
            errors.extend([400, 404, 422, 503]);
        }
        for code in errors {
            responses.entry(code.to_string()).or_insert_with(
                || json!({ "description": "error", "content": { "application/json": { "schema": error } } }),
            );
        }
        if !r.admin && r.path.starts_with("/agent/") {
            responses.insert(
                "401".into(),
                json!({ "description": "no or a wrong agent token", "content": { "application/json": { "schema": error } } }),
            );
        } else if !r.admin {
            responses.remove("401");
        }
        let mut op = json!({ "summary": r.summary, "responses": responses });
        let mut params = r.params;
        if r.path.contains("{name}") {
            params.insert(
                0,
                json!({ "name": "name", "in": "path", "required": true, "schema": { "type": "string" } }),
            );
        }
        if !params.is_empty() {
            op["parameters"] = Value::Array(params);
        }
        if let Some(b) = r.body {
            op["requestBody"] = json!({ "required": r.method != "post" || !r.path.ends_with("/deprovision"),
                                        "content": { r.body_type: { "schema": b } } });
        }
        if !r.admin {
            op["security"] = json!([]);
        }
        let item = paths.entry(r.path.to_owned()).or_insert_with(|| json!({}));
        item[r.method] = op;
    }
    let mut schemas = g.take_definitions(true);
    schemas.sort_keys();
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "kiln",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Bare-metal provisioning appliance. Errors are {\"error\": message, \"field\": name of the bad field}. \
                            All /api/v1 routes need Authorization: Bearer <admin token from <data-dir>/admin.token>. \
                            Generated from kiln's request and response types (kiln openapi)."
        },
        "security": [{ "bearer": [] }],
        "paths": paths,
        "components": {
            "securitySchemes": { "bearer": { "type": "http", "scheme": "bearer" } },
            "schemas": schemas,
        },
    })
}

/// The document as served and checked in: pretty JSON with a trailing newline.
pub fn document_text() -> String {
    let mut s = serde_json::to_string_pretty(&document()).expect("a JSON value serializes");
    s.push('\n');
    s
}

#[cfg(test)]
mod tests {
    /// The checked-in copy is the generated document: regenerate with `kiln openapi > http/src/openapi.json`.
    #[test]
    fn checked_in_openapi_matches_the_types() {
        let generated = super::document_text();
        let checked_in = include_str!("openapi.json");
        assert!(
            generated == checked_in,
            "http/src/openapi.json is stale: run `kiln openapi > http/src/openapi.json`"
        );
    }

    #[test]
    fn every_request_type_is_described() {
        let d = super::document();
        let schemas = &d["components"]["schemas"];
        for name in [
            "HostCreate",
            "BmcIn",
            "ProvisionIn",
            "ImageIn",
            "PowerIn",
            "HostOut",
            "BmcOut",
            "BmcTls",
        ] {
            assert!(schemas[name].is_object(), "{name} missing: {}", schemas);
        }
        assert_eq!(schemas["BmcIn"]["properties"]["password"]["writeOnly"], true);
        assert!(schemas["BmcIn"]["properties"]["disable_certificate_verification"].is_object());
        assert!(d["paths"]["/api/v1/hosts"]["post"]["responses"]["409"].is_object());
    }
}

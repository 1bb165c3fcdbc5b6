//! The `kiln` command line (everything but `serve`, which `main` runs): a client of the REST API that reads the
//! admin token file by default and prints tables, JSON or YAML. It owns presentation; it must not open the store.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, ValueEnum};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

/// Errors of CLI commands.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("request to {url} failed")]
    Http {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("kiln answered {status}: {error}{}", field.as_ref().map(|f| format!(" (field {f})")).unwrap_or_default())]
    Api {
        status: u16,
        error: String,
        field: Option<String>,
    },
    #[error("cannot read {path}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot parse {what}: {message}")]
    Parse { what: String, message: String },
    #[error("{0}")]
    Tls(String),
    #[error("{file}: {message}")]
    Import { file: String, message: String },
    #[error("host {host} ended in state {state}: {message}")]
    Failed {
        host: String,
        state: String,
        message: String,
    },
}

/// Output format.
#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum Output {
    Table,
    Wide,
    Json,
    Yaml,
}

/// Where the API is and how to authenticate.
#[derive(Debug, Clone, Args)]
pub struct ClientArgs {
    /// Base URL of `kiln serve`.
    #[arg(long, global = true, env = "KILN_SERVER", default_value = "https://127.0.0.1:8443")]
    pub server: String,
    /// PEM CA certificate to verify the server with; default: `tls/ca.pem` next to the token file (kiln's own CA),
    /// if it exists, else the system's roots.
    #[arg(long, global = true, env = "KILN_CA_FILE")]
    pub ca_file: Option<PathBuf>,
    /// File holding the admin token (written by `kiln serve` on first start).
    #[arg(
        long,
        global = true,
        env = "KILN_TOKEN_FILE",
        default_value = "./kiln-data/admin.token"
    )]
    pub token_file: PathBuf,
    /// Output format.
    #[arg(short = 'o', long, global = true, value_enum, default_value = "table")]
    pub output: Output,
}

/// A REST client of `kiln serve`.
pub struct Client {
    base: String,
    token: String,
    http: reqwest::Client,
}

impl Client {
    /// Reads the token file and builds the client.
    ///
    /// # Errors
    /// [`CliError::Io`] when the token file cannot be read.
    pub fn new(args: &ClientArgs) -> Result<Self, CliError> {
        let token = match std::env::var("KILN_TOKEN") {
            Ok(t) => t,
            Err(_) => std::fs::read_to_string(&args.token_file).map_err(|source| CliError::Io {
                path: args.token_file.display().to_string(),
                source,
            })?,
        };
        let ca_file = args.ca_file.clone().or_else(|| {
            let own = args.token_file.parent()?.join("tls/ca.pem");
            own.exists().then_some(own)
        });
        let ca = match &ca_file {
            Some(path) => Some(std::fs::read(path).map_err(|source| CliError::Io {
                path: path.display().to_string(),
                source,
            })?),
            None => None,
        };
        Self::build(&args.server, token.trim(), ca.as_deref())
    }

    /// A client of `base` trusting the PEM CA certificate(s) `ca_pem` (the system's roots if `None`).
    ///
    /// # Errors
    /// [`CliError::Tls`] when `ca_pem` holds no certificate.
    pub fn build(base: &str, token: &str, ca_pem: Option<&[u8]>) -> Result<Self, CliError> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut b = reqwest::Client::builder().timeout(Duration::from_secs(30));
        if let Some(pem) = ca_pem {
            let certs = reqwest::Certificate::from_pem_bundle(pem)
                .ok()
                .filter(|c| !c.is_empty())
                .ok_or_else(|| CliError::Tls("the CA file holds no PEM certificate".into()))?;
            b = b.tls_certs_only(certs);
        }
        let http = b
            .build()
            .map_err(|e| CliError::Tls(format!("cannot set up HTTPS: {e}")))?;
        Ok(Self {
            base: base.trim_end_matches('/').to_owned(),
            token: token.to_owned(),
            http,
        })
    }

    async fn send<T: DeserializeOwned>(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<T, CliError> {
        #[derive(serde::Deserialize)]
        struct ErrorBody {
            error: String,
            field: Option<String>,
        }
        let url = format!("{}{path}", self.base);
        let mut req = self.http.request(method, &url).bearer_auth(&self.token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let (status, text) = self.exchange(&url, req).await?;
        if !status.is_success() {
            let e = serde_json::from_str::<ErrorBody>(&text).unwrap_or(ErrorBody {
                error: text,
                field: None,
            });
            return Err(CliError::Api {
                status: status.as_u16(),
                error: e.error,
                field: e.field,
            });
        }
        serde_json::from_str(&text).map_err(|e| CliError::Parse {
            what: url.clone(),
            message: e.to_string(),
        })
    }

    /// Sends `req` to `url`; the status and body of whatever the server answered.
    async fn exchange(
        &self,
        url: &str,
        req: reqwest::RequestBuilder,
    ) -> Result<(reqwest::StatusCode, String), CliError> {
        let http = |source| CliError::Http {
            url: url.to_owned(),
            source,
        };
        let resp = req.send().await.map_err(http)?;
        let status = resp.status();
        let text = resp.text().await.map_err(http)?;
        Ok((status, text))
    }

    /// POSTs a YAML document as is; the status and body of the answer, whatever it is.
    pub async fn post_yaml(&self, path: &str, yaml: String) -> Result<(u16, String), CliError> {
        let url = format!("{}{path}", self.base);
        let req = self
            .http
            .post(&url)
            .bearer_auth(&self.token)
            .header(reqwest::header::CONTENT_TYPE, "application/yaml")
            .body(yaml);
        let (status, text) = self.exchange(&url, req).await?;
        Ok((status.as_u16(), text))
    }

    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, CliError> {
        self.send(reqwest::Method::GET, path, None).await
    }
    /// POSTs a typed request body (the API's own request types).
    pub async fn post<T: DeserializeOwned>(&self, path: &str, body: &impl Serialize) -> Result<T, CliError> {
        let body = serde_json::to_value(body).map_err(|e| CliError::Parse {
            what: path.to_owned(),
            message: e.to_string(),
        })?;
        self.send(reqwest::Method::POST, path, Some(body)).await
    }
    pub async fn delete<T: DeserializeOwned>(&self, path: &str) -> Result<T, CliError> {
        self.send(reqwest::Method::DELETE, path, None).await
    }
}

fn read(path: &PathBuf) -> Result<String, CliError> {
    std::fs::read_to_string(path).map_err(|source| CliError::Io {
        path: path.display().to_string(),
        source,
    })
}

/// The credentials for `image`'s registry (an `oci://` reference) in a docker config file, as `docker login` or
/// `podman login` write it.
fn registry_login(path: &PathBuf, image: &str) -> Result<kiln_images::protocol::RegistryCredentials, CliError> {
    let bad = |message: String| CliError::Parse {
        what: path.display().to_string(),
        message,
    };
    let reference = kiln_images::oci::OciReference::parse(image)
        .map_err(|e| bad(format!("--registry-auth is for oci:// images only: {e}")))?;
    let raw = std::fs::read(path).map_err(|source| CliError::Io {
        path: path.display().to_string(),
        source,
    })?;
    match kiln_images::oci::credentials_from_docker_config(&raw, reference.registry()) {
        Ok(Some(c)) => Ok(c),
        Ok(None) => Err(bad(format!("no credentials for the registry {}", reference.registry()))),
        Err(e) => Err(bad(e)),
    }
}

/// A JSON file's value (network data and the like), the file named in the error.
fn read_json(path: &PathBuf) -> Result<serde_json::Value, CliError> {
    serde_json::from_str(&read(path)?).map_err(|e| CliError::Parse {
        what: path.display().to_string(),
        message: e.to_string(),
    })
}

fn print_value<T: Serialize>(out: Output, v: &T) -> Result<bool, CliError> {
    match out {
        Output::Json => println!("{}", serde_json::to_string_pretty(v).expect("serializable")),
        Output::Yaml => print!(
            "{}",
            serde_saphyr::to_string(&serde_json::to_value(v).expect("serializable")).map_err(|e| CliError::Parse {
                what: "yaml output".into(),
                message: e.to_string()
            })?
        ),
        Output::Table | Output::Wide => return Ok(false),
    }
    Ok(true)
}

pub mod bmc;
pub mod host;
pub mod image;
pub mod import;

pub use host::{HostCmd, host};
pub use import::import;

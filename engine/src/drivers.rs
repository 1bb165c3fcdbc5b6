//! The real BMC drivers behind the executor's [`BmcConnector`] seam: `kiln_bmc::connect` (Redfish or IPMI by the
//! address scheme), with errors classified for retry (`is_transient`) and credentials (`BmcErrorKind::Auth`).

use std::sync::Arc;

use async_trait::async_trait;
use kiln_bmc::{BmcErrorKind, BmcOptions, Credentials};

use crate::bmcs::{BmcAdapter, BmcConnector, DynBmc, chain};
use crate::machine::BmcFailure;
use crate::model::BmcInfo;
use crate::types::HostName;

/// Connects hosts' BMCs with kiln-bmc's drivers. `options` holds the appliance-wide timeouts and retries; each
/// host's own TLS settings ([`BmcTls`](crate::model::BmcTls)) are applied on top for its connection.
#[derive(Debug, Clone, Default)]
pub struct Drivers {
    pub options: BmcOptions,
}

impl Drivers {
    /// The options for one host's BMC: the appliance's, with the host's TLS settings.
    pub fn options_for(&self, bmc: &BmcInfo) -> BmcOptions {
        let mut o = self.options.clone();
        o.disable_certificate_verification = bmc.tls.disable_certificate_verification;
        o.ca_bundle_pem = bmc.tls.ca_pem.as_ref().map(|p| p.as_bytes().to_vec());
        o
    }
}

/// Whether a kiln-bmc error is transient, and whether it is about credentials.
pub fn classify(e: &kiln_bmc::BmcError) -> (bool, bool) {
    (e.is_transient(), e.kind() == BmcErrorKind::Auth)
}

#[async_trait]
impl BmcConnector for Drivers {
    async fn connect(&self, _host: &HostName, bmc: &BmcInfo) -> Result<Arc<dyn DynBmc>, BmcFailure> {
        let creds = Credentials {
            username: bmc.username.clone(),
            password: bmc.password.clone(),
        };
        let any = kiln_bmc::connect(&bmc.address, creds, self.options_for(bmc))
            .await
            .map_err(|e| {
                let (transient, auth) = classify(&e);
                BmcFailure {
                    message: chain(&e),
                    transient,
                    auth,
                }
            })?;
        Ok(Arc::new(BmcAdapter::new(any, classify)))
    }
}

//! The real BMC drivers behind the executor's [`BmcConnector`] seam: `kiln_bmc::connect` (Redfish or IPMI by the
//! address scheme), with errors classified for retry (`is_transient`) and credentials (`BmcErrorKind::Auth`).

use std::sync::Arc;

use async_trait::async_trait;
use kiln_bmc::{BmcErrorKind, BmcOptions, Credentials};

use crate::bmcs::{BmcAdapter, BmcConnector, DynBmc, chain};
use crate::machine::BmcFailure;
use crate::model::BmcInfo;
use crate::types::HostName;

/// Connects hosts' BMCs with kiln-bmc's drivers.
#[derive(Debug, Clone, Default)]
pub struct Drivers {
    pub options: BmcOptions,
}

fn classify(e: &kiln_bmc::BmcError) -> (bool, bool) {
    (e.is_transient(), e.kind() == BmcErrorKind::Auth)
}

#[async_trait]
impl BmcConnector for Drivers {
    async fn connect(&self, _host: &HostName, bmc: &BmcInfo) -> Result<Arc<dyn DynBmc>, BmcFailure> {
        let address: kiln_bmc::BmcAddress =
            bmc.address
                .as_str()
                .parse()
                .map_err(|e: kiln_bmc::AddressError| BmcFailure {
                    message: chain(&e),
                    transient: false,
                    auth: false,
                })?;
        let creds = Credentials {
            username: bmc.username.clone(),
            password: bmc.password.clone(),
        };
        let any = kiln_bmc::connect(&address, creds, self.options.clone())
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

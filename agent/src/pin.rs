//! Trust in the appliance by pin: kiln is its own CA, and the agent learns that CA's SHA-256 from the kernel command
//! line (`kiln.ca=`), next to its token. A server is trusted when the chain it presents carries a certificate with
//! that hash and its own certificate verifies against that CA for the name in `kiln.api` (WebPKI rules: validity,
//! signature, subject alternative name). So the ramdisk needs no CA bundle, and an impostor on the provisioning
//! network without kiln's CA key cannot answer for the appliance.

use std::sync::Arc;

use rustls::DigitallySignedStruct;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use sha2::{Digest, Sha256};

use crate::cmdline::CaPin;

/// A verifier that accepts a chain only through the pinned CA.
#[derive(Debug)]
pub struct PinnedCa {
    pin: CaPin,
    provider: Arc<CryptoProvider>,
}

impl PinnedCa {
    pub fn new(pin: CaPin, provider: Arc<CryptoProvider>) -> Self {
        Self { pin, provider }
    }
}

/// A rustls client configuration that trusts only the pinned CA.
pub fn client_config(pin: CaPin) -> rustls::ClientConfig {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(PinnedCa::new(pin, provider)))
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    config
}

impl ServerCertVerifier for PinnedCa {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let ca = intermediates
            .iter()
            .find(|c| Sha256::digest(c.as_ref()).as_slice() == self.pin.0)
            .ok_or_else(|| {
                rustls::Error::General(
                    "the server's certificate chain does not carry the appliance CA of kiln.ca= (another server, or \
                     the appliance's CA was replaced)"
                        .into(),
                )
            })?;
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca.clone().into_owned())?;
        let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), self.provider.clone())
            .build()
            .map_err(|e| rustls::Error::General(format!("pinned CA: {e}")))?;
        webpki.verify_server_cert(end_entity, &[], server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

//! RMCP+ sessions over UDP (IPMI v2.0 section 13): retransmission, pre-session commands, session
//! establishment with RAKP (sections 13.17-13.23), authenticated and encrypted commands, Close Session.

use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::time::Instant;

use super::crypto::{self, CipherSuite, RakpContext, SessionKeys};
use super::packet::{
    self, OpenSessionRequest, OpenSessionResponse, Packet, Rakp1, Rakp2, Rakp3, Rakp4, Request, Response, payload_type,
    rmcp_status_meaning,
};
use crate::config::Credentials;
use crate::error::BmcError;
use crate::throttle::Throttle;

/// Network functions (IPMI v2.0 table 5-1).
pub const NETFN_CHASSIS: u8 = 0x00;
pub const NETFN_APP: u8 = 0x06;

/// App commands used for session handling (IPMI v2.0 table G-1).
const CMD_GET_CHANNEL_AUTH_CAPABILITIES: u8 = 0x38;
const CMD_SET_SESSION_PRIVILEGE_LEVEL: u8 = 0x3B;
const CMD_CLOSE_SESSION: u8 = 0x3C;
const CMD_GET_CHANNEL_CIPHER_SUITES: u8 = 0x54;

/// The name-only lookup bit of the RAKP 1 role byte (section 13.20), set by ipmitool by default.
const NAME_ONLY_LOOKUP: u8 = 0x10;

/// A UDP socket connected to one BMC, with retransmission.
#[derive(Debug)]
pub(crate) struct Transport {
    socket: UdpSocket,
    pub bmc: String,
    pub attempt_timeout: Duration,
    pub attempts: u32,
    throttle: std::sync::Arc<Throttle>,
}

/// What a reply filter says about a datagram.
pub(crate) enum Verdict<T> {
    /// Not ours (stale retransmission, another sequence number): keep waiting.
    Ignore,
    Done(Result<T, BmcError>),
}

impl Transport {
    pub(crate) async fn connect(
        endpoint: &str,
        attempt_timeout: Duration,
        attempts: u32,
        min_interval: Duration,
    ) -> Result<Self, BmcError> {
        let bmc = endpoint.to_string();
        let connect_err = |e: std::io::Error| BmcError::Connect {
            bmc: bmc.clone(),
            source: Box::new(e),
        };
        let addr = tokio::net::lookup_host(endpoint)
            .await
            .map_err(connect_err)?
            .next()
            .ok_or_else(|| connect_err(std::io::Error::other("the host name resolves to no address")))?;
        let local = if addr.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" };
        let socket = UdpSocket::bind(local).await.map_err(connect_err)?;
        socket.connect(addr).await.map_err(connect_err)?;
        let throttle = Throttle::for_bmc(&format!("ipmi {endpoint}"), min_interval);
        Ok(Self {
            socket,
            bmc,
            attempt_timeout,
            attempts: attempts.max(1),
            throttle,
        })
    }

    /// Sends what `build` makes (rebuilt for every retransmission) and waits for a datagram `accept` takes.
    pub(crate) async fn exchange<T>(
        &self,
        operation: &str,
        attempts: u32,
        attempt_timeout: Duration,
        mut build: impl FnMut() -> Vec<u8>,
        mut accept: impl FnMut(&[u8]) -> Verdict<T>,
    ) -> Result<T, BmcError> {
        let _turn = self.throttle.turn().await;
        let mut buf = vec![0u8; 1024];
        for attempt in 0..attempts.max(1) {
            let datagram = build();
            if attempt > 0 {
                tracing::debug!(bmc = %self.bmc, operation, attempt, "retransmitting");
            }
            self.socket.send(&datagram).await.map_err(|e| self.io_error(e))?;
            let deadline = Instant::now() + attempt_timeout;
            loop {
                let received = tokio::time::timeout_at(deadline, self.socket.recv(&mut buf)).await;
                let n = match received {
                    Err(_elapsed) => break,
                    Ok(Ok(n)) => n,
                    Ok(Err(e)) => return Err(self.io_error(e)),
                };
                match accept(&buf[..n]) {
                    Verdict::Ignore => continue,
                    Verdict::Done(result) => return result,
                }
            }
        }
        Err(BmcError::Timeout {
            bmc: self.bmc.clone(),
            operation: operation.to_string(),
            after: attempt_timeout * attempts.max(1),
        })
    }

    /// Sends without waiting for an answer (RAKP 3 carrying an error status).
    async fn send_only(&self, datagram: &[u8]) {
        let _ = self.socket.send(datagram).await;
    }

    fn io_error(&self, e: std::io::Error) -> BmcError {
        // A connected UDP socket reports ICMP port unreachable as ECONNREFUSED: nothing listens there.
        BmcError::Connect {
            bmc: self.bmc.clone(),
            source: Box::new(e),
        }
    }

    fn protocol(&self, operation: &str, detail: impl std::fmt::Display) -> BmcError {
        BmcError::Protocol {
            bmc: self.bmc.clone(),
            operation: operation.to_string(),
            detail: detail.to_string(),
        }
    }

    /// A command outside a session (IPMI v1.5 format, AuthType NONE), as ipmitool sends the pre-session ones.
    pub(crate) async fn sessionless(
        &self,
        operation: &str,
        netfn: u8,
        cmd: u8,
        data: &[u8],
        attempts: u32,
        attempt_timeout: Duration,
    ) -> Result<Response, BmcError> {
        let rq_seq = rand::random::<u8>() & 0x3F;
        let request = Request {
            netfn,
            cmd,
            rq_seq,
            data: data.to_vec(),
        };
        let datagram = packet::encode_v15(&request.encode());
        self.exchange(
            operation,
            attempts,
            attempt_timeout,
            || datagram.clone(),
            |bytes| {
                // Answers come back in v1.5 format, or (pyghmi, virtualbmc) as a session-less RMCP+ IPMI payload.
                let message = match packet::decode(bytes, 0) {
                    Ok(Packet::V15 { message, .. }) => message,
                    Ok(Packet::V20(p)) if p.payload_type == payload_type::IPMI && p.session_id == 0 && !p.encrypted => {
                        p.payload
                    }
                    Ok(Packet::V20(_)) => return Verdict::Ignore,
                    Err(e) => return Verdict::Done(Err(self.protocol(operation, e))),
                };
                match Response::decode(&message) {
                    Ok(r) if r.cmd == cmd && r.rq_seq == rq_seq && r.netfn == netfn + 1 => Verdict::Done(Ok(r)),
                    Ok(_) => Verdict::Ignore,
                    Err(e) => Verdict::Done(Err(self.protocol(operation, e))),
                }
            },
        )
        .await
    }

    /// Get Channel Authentication Capabilities (section 22.13) for the current channel with the IPMI v2.0 bit.
    /// Returns whether the channel supports IPMI v2.0 (RMCP+).
    pub(crate) async fn channel_auth_capabilities(&self, privilege: u8) -> Result<bool, BmcError> {
        let op = "Get Channel Authentication Capabilities";
        let r = self
            .sessionless(
                op,
                NETFN_APP,
                CMD_GET_CHANNEL_AUTH_CAPABILITIES,
                &[0x8E, privilege],
                self.attempts,
                self.attempt_timeout,
            )
            .await?;
        if r.completion_code != 0 {
            return Err(BmcError::Ipmi {
                bmc: self.bmc.clone(),
                operation: op.into(),
                code: r.completion_code,
            });
        }
        if r.data.len() < 8 {
            return Err(self.protocol(op, format!("{} data bytes, expected 8", r.data.len())));
        }
        // Byte 2 bit 7: extended capabilities present; byte 4 bit 1: IPMI v2.0 supported.
        Ok(r.data[1] & 0x80 != 0 && r.data[3] & 0x02 != 0)
    }

    /// Get Channel Cipher Suites (section 22.15): the suite IDs the current channel offers. One short attempt
    /// per record block: many BMCs (ipmi_sim) never answer, and the caller falls back.
    pub(crate) async fn cipher_suites(&self, timeout: Duration) -> Result<Vec<u8>, BmcError> {
        let op = "Get Channel Cipher Suites";
        let mut records = Vec::new();
        for index in 0..0x40u8 {
            let r = self
                .sessionless(
                    op,
                    NETFN_APP,
                    CMD_GET_CHANNEL_CIPHER_SUITES,
                    &[0x0E, 0x00, 0x80 | index],
                    1,
                    timeout,
                )
                .await?;
            if r.completion_code != 0 {
                return Err(BmcError::Ipmi {
                    bmc: self.bmc.clone(),
                    operation: op.into(),
                    code: r.completion_code,
                });
            }
            let Some(block) = r.data.get(1..) else {
                return Err(self.protocol(op, "no channel number"));
            };
            records.extend_from_slice(block);
            if block.len() < 16 {
                break;
            }
        }
        Ok(packet::parse_cipher_suite_records(&records))
    }
}

/// An active RMCP+ session.
pub(crate) struct Session {
    pub suite: CipherSuite,
    console_session_id: u32,
    bmc_session_id: u32,
    keys: SessionKeys,
    out_seq: u32,
    rq_seq: u8,
    pub last_used: Instant,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("suite", &self.suite)
            .field("bmc_session_id", &format_args!("{:#010x}", self.bmc_session_id))
            .finish_non_exhaustive()
    }
}

/// Why opening a session failed, so the caller can try another cipher suite.
pub(crate) enum OpenError {
    /// The BMC does not do this cipher suite.
    SuiteRejected(BmcError),
    Other(BmcError),
}

impl From<BmcError> for OpenError {
    fn from(e: BmcError) -> Self {
        OpenError::Other(e)
    }
}

impl Session {
    /// Opens a session: Open Session, RAKP 1-4, then Set Session Privilege Level.
    pub(crate) async fn open(
        t: &Transport,
        creds: &Credentials,
        privilege: u8,
        suite: CipherSuite,
    ) -> Result<Session, OpenError> {
        let username = creds.username.as_bytes();
        let kuid = creds.password.expose().as_bytes();
        if username.len() > 16 {
            return Err(OpenError::Other(BmcError::Invalid {
                bmc: t.bmc.clone(),
                operation: "IPMI login".into(),
                detail: "IPMI user names have at most 16 bytes".into(),
            }));
        }
        if kuid.len() > 20 {
            return Err(OpenError::Other(BmcError::Invalid {
                bmc: t.bmc.clone(),
                operation: "IPMI login".into(),
                detail: "IPMI v2.0 passwords have at most 20 bytes".into(),
            }));
        }
        let console_session_id = loop {
            let id = rand::random::<u32>();
            if id != 0 {
                break id;
            }
        };
        let mut tag = rand::random::<u8>();

        // Open Session (section 13.17).
        let op = "RMCP+ Open Session";
        tag = tag.wrapping_add(1);
        let request = OpenSessionRequest {
            tag,
            privilege,
            console_session_id,
            auth_algorithm: suite.auth_algorithm(),
            integrity_algorithm: suite.integrity_algorithm(),
            confidentiality_algorithm: suite.confidentiality_algorithm(),
        };
        let datagram = packet::encode_v20(payload_type::OPEN_SESSION_REQUEST, false, 0, 0, &request.encode(), None);
        let response: OpenSessionResponse = t
            .exchange(
                op,
                t.attempts,
                t.attempt_timeout,
                || datagram.clone(),
                |bytes| {
                    expect_payload(t, op, bytes, payload_type::OPEN_SESSION_RESPONSE, |p| {
                        let r = OpenSessionResponse::decode(p)?;
                        Ok(
                            (r.tag == tag && (r.status != 0 || r.console_session_id == console_session_id))
                                .then_some(r),
                        )
                    })
                },
            )
            .await?;
        let accepted = match (response.status, response.accepted) {
            (0, Some(a)) => a,
            (status, _) => {
                let reason = rmcp_status_meaning(status).to_string();
                let e = match status {
                    0x01 | 0x0B => BmcError::Busy {
                        bmc: t.bmc.clone(),
                        reason: format!("{reason} (session table full?)"),
                    },
                    0x0D => auth_failed(t, creds, "unknown user name"),
                    _ => BmcError::SessionRejected {
                        bmc: t.bmc.clone(),
                        status,
                        reason,
                    },
                };
                return Err(match status {
                    0x04..=0x07 | 0x10 | 0x11 | 0x12 => OpenError::SuiteRejected(e),
                    _ => OpenError::Other(e),
                });
            }
        };
        if (
            accepted.auth_algorithm,
            accepted.integrity_algorithm,
            accepted.confidentiality_algorithm,
        ) != (
            request.auth_algorithm,
            request.integrity_algorithm,
            request.confidentiality_algorithm,
        ) {
            return Err(OpenError::SuiteRejected(
                t.protocol(op, "the BMC chose other algorithms than proposed"),
            ));
        }
        let bmc_session_id = accepted.bmc_session_id;

        // RAKP 1 / 2 (sections 13.20, 13.21).
        let op = "RAKP 1";
        tag = tag.wrapping_add(1);
        let role = privilege | NAME_ONLY_LOOKUP;
        let rakp1 = Rakp1 {
            tag,
            bmc_session_id,
            console_random: rand::random(),
            role,
            username: username.to_vec(),
        };
        let datagram = packet::encode_v20(payload_type::RAKP1, false, 0, 0, &rakp1.encode(), None);
        let rakp2: Rakp2 = t
            .exchange(
                op,
                t.attempts,
                t.attempt_timeout,
                || datagram.clone(),
                |bytes| {
                    expect_payload(t, op, bytes, payload_type::RAKP2, |p| {
                        let r = Rakp2::decode(p)?;
                        Ok(
                            (r.tag == tag && (r.status != 0 || r.console_session_id == console_session_id))
                                .then_some(r),
                        )
                    })
                },
            )
            .await?;
        match rakp2.status {
            0 => {}
            0x0D => return Err(auth_failed(t, creds, "unknown user name").into()),
            0x09 | 0x0A => {
                return Err(auth_failed(
                    t,
                    creds,
                    &format!("privilege refused: {}", rmcp_status_meaning(rakp2.status)),
                )
                .into());
            }
            0x01 | 0x0B => {
                return Err(BmcError::Busy {
                    bmc: t.bmc.clone(),
                    reason: rmcp_status_meaning(rakp2.status).into(),
                }
                .into());
            }
            status => {
                return Err(BmcError::SessionRejected {
                    bmc: t.bmc.clone(),
                    status,
                    reason: rmcp_status_meaning(status).into(),
                }
                .into());
            }
        }
        let ctx = RakpContext {
            console_session_id,
            bmc_session_id,
            console_random: rakp1.console_random,
            bmc_random: rakp2.bmc_random,
            bmc_guid: rakp2.bmc_guid,
            role,
            username,
        };
        let expected = crypto::rakp2_code(suite, kuid, &ctx);
        if !crypto::constant_time_eq(&expected, &rakp2.auth_code) {
            // Tell the BMC so it frees the session slot (ipmitool does the same): RAKP 3 with status 0x0F.
            let nack = Rakp3 {
                tag: tag.wrapping_add(1),
                status: 0x0F,
                bmc_session_id,
                auth_code: vec![],
            };
            t.send_only(&packet::encode_v20(
                payload_type::RAKP3,
                false,
                0,
                0,
                &nack.encode(),
                None,
            ))
            .await;
            return Err(auth_failed(t, creds, "wrong password (RAKP 2 key exchange code does not match)").into());
        }

        // RAKP 3 / 4 (sections 13.22, 13.23).
        let op = "RAKP 3";
        tag = tag.wrapping_add(1);
        let rakp3 = Rakp3 {
            tag,
            status: 0,
            bmc_session_id,
            auth_code: crypto::rakp3_code(suite, kuid, &ctx),
        };
        let sik = crypto::session_integrity_key(suite, kuid, &ctx);
        let datagram = packet::encode_v20(payload_type::RAKP3, false, 0, 0, &rakp3.encode(), None);
        let rakp4: Rakp4 = t
            .exchange(
                op,
                t.attempts,
                t.attempt_timeout,
                || datagram.clone(),
                |bytes| {
                    expect_payload(t, op, bytes, payload_type::RAKP4, |p| {
                        let r = Rakp4::decode(p)?;
                        Ok(
                            (r.tag == tag && (r.status != 0 || r.console_session_id == console_session_id))
                                .then_some(r),
                        )
                    })
                },
            )
            .await?;
        if rakp4.status != 0 {
            let e = match rakp4.status {
                0x0F => auth_failed(t, creds, "the BMC rejected our RAKP 3 code"),
                status => BmcError::SessionRejected {
                    bmc: t.bmc.clone(),
                    status,
                    reason: rmcp_status_meaning(status).into(),
                },
            };
            return Err(e.into());
        }
        if !crypto::constant_time_eq(&crypto::rakp4_icv(suite, &sik, &ctx), &rakp4.icv) {
            return Err(t.protocol(op, "RAKP 4 integrity check value does not match").into());
        }
        let mut session = Session {
            suite,
            console_session_id,
            bmc_session_id,
            keys: SessionKeys::derive(suite, &sik),
            out_seq: 0,
            rq_seq: rand::random::<u8>() & 0x3F,
            last_used: Instant::now(),
        };
        tracing::debug!(bmc = %t.bmc, suite = suite.id(), session = format_args!("{bmc_session_id:#010x}"), "IPMI session open");

        // The session starts at USER level; raise it (section 22.18).
        let r = session
            .command(
                t,
                "Set Session Privilege Level",
                NETFN_APP,
                CMD_SET_SESSION_PRIVILEGE_LEVEL,
                &[privilege],
            )
            .await?;
        if r.completion_code != 0 {
            let e = BmcError::Ipmi {
                bmc: t.bmc.clone(),
                operation: "Set Session Privilege Level".into(),
                code: r.completion_code,
            };
            session.close(t).await;
            return Err(e.into());
        }
        Ok(session)
    }

    /// One authenticated, encrypted IPMI command. Returns the response whatever its completion code.
    pub(crate) async fn command(
        &mut self,
        t: &Transport,
        operation: &str,
        netfn: u8,
        cmd: u8,
        data: &[u8],
    ) -> Result<Response, BmcError> {
        self.command_with(t, operation, netfn, cmd, data, t.attempts).await
    }

    async fn command_with(
        &mut self,
        t: &Transport,
        operation: &str,
        netfn: u8,
        cmd: u8,
        data: &[u8],
        attempts: u32,
    ) -> Result<Response, BmcError> {
        self.rq_seq = (self.rq_seq + 1) & 0x3F;
        let rq_seq = self.rq_seq;
        let message = Request {
            netfn,
            cmd,
            rq_seq,
            data: data.to_vec(),
        }
        .encode();
        let keys = self.keys.clone();
        let bmc_session_id = self.bmc_session_id;
        let console_session_id = self.console_session_id;
        let code_len = self.suite.integrity_len();
        let out_seq = &mut self.out_seq;
        let result = t
            .exchange(
                operation,
                attempts,
                t.attempt_timeout,
                || {
                    // Every transmission gets a fresh session sequence number (section 6.12.13).
                    *out_seq = out_seq.wrapping_add(1).max(1);
                    let payload = keys.encrypt(rand::random(), &message);
                    let code = |d: &[u8]| keys.integrity_code(d);
                    packet::encode_v20(
                        payload_type::IPMI,
                        true,
                        bmc_session_id,
                        *out_seq,
                        &payload,
                        Some(&code),
                    )
                },
                |bytes| {
                    let p = match packet::decode(bytes, code_len) {
                        Ok(Packet::V20(p)) => p,
                        Ok(Packet::V15 { .. }) => return Verdict::Ignore,
                        Err(e) => return Verdict::Done(Err(t.protocol(operation, e))),
                    };
                    if p.payload_type != payload_type::IPMI || p.session_id != console_session_id {
                        return Verdict::Ignore;
                    }
                    let Some((range, code)) = &p.integrity else {
                        return Verdict::Done(Err(t.protocol(operation, "unauthenticated packet inside the session")));
                    };
                    if !crypto::constant_time_eq(&keys.integrity_code(&bytes[range.clone()]), code) {
                        tracing::debug!(bmc = %t.bmc, operation, "dropping a packet with a bad AuthCode");
                        return Verdict::Ignore;
                    }
                    let plain = if p.encrypted {
                        match keys.decrypt(&p.payload) {
                            Ok(plain) => plain,
                            Err(e) => return Verdict::Done(Err(t.protocol(operation, e))),
                        }
                    } else {
                        p.payload
                    };
                    match Response::decode(&plain) {
                        Ok(r) if r.rq_seq == rq_seq && r.cmd == cmd && r.netfn == netfn + 1 => Verdict::Done(Ok(r)),
                        Ok(_) => Verdict::Ignore,
                        Err(e) => Verdict::Done(Err(t.protocol(operation, e))),
                    }
                },
            )
            .await;
        self.last_used = Instant::now();
        result
    }

    /// Close Session (section 22.19), best effort: one short attempt.
    pub(crate) async fn close(&mut self, t: &Transport) {
        let id = self.bmc_session_id.to_le_bytes();
        match self
            .command_with(t, "Close Session", NETFN_APP, CMD_CLOSE_SESSION, &id, 1)
            .await
        {
            Ok(r) if r.completion_code == 0 => {
                tracing::debug!(bmc = %t.bmc, session = format_args!("{:#010x}", self.bmc_session_id), "IPMI session closed");
            }
            Ok(r) => tracing::debug!(bmc = %t.bmc, code = r.completion_code, "Close Session refused"),
            Err(e) => tracing::debug!(bmc = %t.bmc, error = %e, "Close Session failed"),
        }
    }
}

fn auth_failed(t: &Transport, creds: &Credentials, detail: &str) -> BmcError {
    BmcError::AuthFailed {
        bmc: t.bmc.clone(),
        username: creds.username.clone(),
        detail: detail.to_string(),
    }
}

/// Accepts an unauthenticated RMCP+ session-setup payload of type `want`, decoded by `parse`
/// (`Ok(None)` = not the answer to our message).
fn expect_payload<T>(
    t: &Transport,
    operation: &str,
    bytes: &[u8],
    want: u8,
    parse: impl FnOnce(&[u8]) -> Result<Option<T>, packet::DecodeError>,
) -> Verdict<T> {
    match packet::decode(bytes, 0) {
        Ok(Packet::V20(p)) if p.payload_type == want => match parse(&p.payload) {
            Ok(Some(v)) => Verdict::Done(Ok(v)),
            Ok(None) => Verdict::Ignore,
            Err(e) => Verdict::Done(Err(t.protocol(operation, e))),
        },
        Ok(_) => Verdict::Ignore,
        Err(e) => Verdict::Done(Err(t.protocol(operation, e))),
    }
}

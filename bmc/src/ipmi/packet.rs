//! Wire formats of IPMI over LAN: the RMCP header (IPMI v2.0 section 13.1.3), IPMI v1.5 and v2.0/RMCP+ session
//! headers (13.6, 13.8), LAN IPMI messages (13.8), RMCP+ Open Session and RAKP messages (13.17-13.23) and cipher
//! suite records (22.15). Encoders and decoders only: no sockets, no keys (integrity is a callback).

use std::ops::Range;

/// A decoding failure; never a panic, whatever the bytes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct DecodeError(pub String);

fn err<T>(msg: impl Into<String>) -> Result<T, DecodeError> {
    Err(DecodeError(msg.into()))
}

/// RMCP header: version 6, reserved, sequence 0xFF (no RMCP ACK), class IPMI (section 13.1.3).
pub const RMCP_HEADER: [u8; 4] = [0x06, 0x00, 0xFF, 0x07];

/// Session header AuthType/Format value meaning "RMCP+ (IPMI v2.0)".
const AUTH_FORMAT_RMCP_PLUS: u8 = 0x06;

/// RMCP+ payload types (table 13-16).
pub mod payload_type {
    pub const IPMI: u8 = 0x00;
    pub const OPEN_SESSION_REQUEST: u8 = 0x10;
    pub const OPEN_SESSION_RESPONSE: u8 = 0x11;
    pub const RAKP1: u8 = 0x12;
    pub const RAKP2: u8 = 0x13;
    pub const RAKP3: u8 = 0x14;
    pub const RAKP4: u8 = 0x15;
}

/// A decoded datagram.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet {
    /// IPMI v1.5 session (only session-less, AuthType NONE, is accepted).
    V15 {
        session_seq: u32,
        session_id: u32,
        message: Vec<u8>,
    },
    /// IPMI v2.0 RMCP+.
    V20(V20Packet),
}

/// An RMCP+ packet as received: the payload is still encrypted if `encrypted`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct V20Packet {
    pub payload_type: u8,
    pub encrypted: bool,
    pub authenticated: bool,
    pub session_id: u32,
    pub session_seq: u32,
    pub payload: Vec<u8>,
    /// For authenticated packets: the range of the datagram covered by the AuthCode, and the AuthCode.
    pub integrity: Option<(Range<usize>, Vec<u8>)>,
}

/// Encodes an IPMI v1.5 session-less packet (AuthType NONE), used before an RMCP+ session exists.
pub fn encode_v15(message: &[u8]) -> Vec<u8> {
    let mut out = RMCP_HEADER.to_vec();
    out.push(0x00); // AuthType NONE
    out.extend(0u32.to_le_bytes()); // session sequence
    out.extend(0u32.to_le_bytes()); // session ID
    out.push(message.len() as u8);
    out.extend(message);
    out
}

/// Computes the AuthCode over the bytes it covers.
pub type AuthCodeFn<'a> = &'a dyn Fn(&[u8]) -> Vec<u8>;

/// Encodes an RMCP+ packet. `payload` is already encrypted when `encrypted`. When `auth_code` is given the
/// packet carries the integrity trailer (pad to a multiple of 4, pad length, next header 0x07) and the AuthCode
/// computed by `auth_code` over the session header through next header.
pub fn encode_v20(
    payload_type: u8,
    encrypted: bool,
    session_id: u32,
    session_seq: u32,
    payload: &[u8],
    auth_code: Option<AuthCodeFn<'_>>,
) -> Vec<u8> {
    let mut out = RMCP_HEADER.to_vec();
    let start = out.len();
    out.push(AUTH_FORMAT_RMCP_PLUS);
    let mut pt = payload_type & 0x3F;
    if encrypted {
        pt |= 0x80;
    }
    if auth_code.is_some() {
        pt |= 0x40;
    }
    out.push(pt);
    out.extend(session_id.to_le_bytes());
    out.extend(session_seq.to_le_bytes());
    out.extend((payload.len() as u16).to_le_bytes());
    out.extend(payload);
    if let Some(auth_code) = auth_code {
        // Integrity PAD: 0xFF bytes so that session header..next header is a multiple of 4 (section 13.28.4).
        let covered = out.len() - start + 2;
        let pad = (4 - covered % 4) % 4;
        out.extend(std::iter::repeat_n(0xFF, pad));
        out.push(pad as u8);
        out.push(0x07); // Next Header
        let code = auth_code(&out[start..]);
        out.extend(code);
    }
    out
}

/// Decodes a datagram. `auth_code_len` is the AuthCode length of the session's integrity algorithm (needed to
/// split an authenticated RMCP+ trailer); 0 before a session exists.
pub fn decode(datagram: &[u8], auth_code_len: usize) -> Result<Packet, DecodeError> {
    if datagram.len() < 4 {
        return err(format!("{} bytes is shorter than an RMCP header", datagram.len()));
    }
    if datagram[0] != 0x06 || datagram[3] & 0x1F != 0x07 {
        return err(format!(
            "not an RMCP IPMI packet (version {:#04x}, class {:#04x})",
            datagram[0], datagram[3]
        ));
    }
    let s = &datagram[4..];
    let Some(&auth_type) = s.first() else {
        return err("no session header");
    };
    match auth_type {
        0x00 => {
            if s.len() < 10 {
                return err("IPMI v1.5 session header truncated");
            }
            let session_seq = u32::from_le_bytes(s[1..5].try_into().expect("4 bytes"));
            let session_id = u32::from_le_bytes(s[5..9].try_into().expect("4 bytes"));
            let len = s[9] as usize;
            let Some(message) = s.get(10..10 + len) else {
                return err(format!(
                    "IPMI v1.5 message claims {len} bytes, {} present",
                    s.len() - 10
                ));
            };
            Ok(Packet::V15 {
                session_seq,
                session_id,
                message: message.to_vec(),
            })
        }
        AUTH_FORMAT_RMCP_PLUS => {
            if s.len() < 12 {
                return err("RMCP+ session header truncated");
            }
            let pt = s[1];
            let payload_type = pt & 0x3F;
            if payload_type == 0x02 {
                return err("OEM payloads are not supported");
            }
            let session_id = u32::from_le_bytes(s[2..6].try_into().expect("4 bytes"));
            let session_seq = u32::from_le_bytes(s[6..10].try_into().expect("4 bytes"));
            let len = u16::from_le_bytes([s[10], s[11]]) as usize;
            let Some(payload) = s.get(12..12 + len) else {
                return err(format!("RMCP+ payload claims {len} bytes, {} present", s.len() - 12));
            };
            let authenticated = pt & 0x40 != 0;
            let integrity = if authenticated {
                let trailer = &s[12 + len..];
                if trailer.len() < 2 + auth_code_len {
                    return err("RMCP+ integrity trailer truncated");
                }
                let code_start = trailer.len() - auth_code_len;
                let pad_len = trailer[code_start - 2] as usize;
                if trailer[code_start - 1] != 0x07 || pad_len + 2 != code_start {
                    return err("RMCP+ integrity trailer malformed");
                }
                let covered_end = 4 + 12 + len + code_start;
                Some((4..covered_end, trailer[code_start..].to_vec()))
            } else {
                None
            };
            Ok(Packet::V20(V20Packet {
                payload_type,
                encrypted: pt & 0x80 != 0,
                authenticated,
                session_id,
                session_seq,
                payload: payload.to_vec(),
                integrity,
            }))
        }
        other => err(format!("unsupported session AuthType {other:#04x}")),
    }
}

/// Slave address of the BMC and of the remote console software (section 13.8, "81h").
pub const BMC_SA: u8 = 0x20;
pub const CONSOLE_SWID: u8 = 0x81;

fn checksum(bytes: &[u8]) -> u8 {
    bytes.iter().fold(0u8, |a, b| a.wrapping_add(*b)).wrapping_neg()
}

/// An IPMI request message on LAN (section 13.8): to the BMC, LUN 0.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub netfn: u8,
    pub cmd: u8,
    /// 6-bit requester sequence number.
    pub rq_seq: u8,
    pub data: Vec<u8>,
}

impl Request {
    pub fn encode(&self) -> Vec<u8> {
        let header = [BMC_SA, self.netfn << 2];
        let mut out = header.to_vec();
        out.push(checksum(&header));
        let body_start = out.len();
        out.extend([CONSOLE_SWID, (self.rq_seq & 0x3F) << 2, self.cmd]);
        out.extend(&self.data);
        out.push(checksum(&out[body_start..]));
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        if bytes.len() < 7 {
            return err(format!("IPMI request of {} bytes is too short", bytes.len()));
        }
        if checksum(&bytes[..2]) != bytes[2] || checksum(&bytes[3..bytes.len() - 1]) != bytes[bytes.len() - 1] {
            return err("IPMI request checksum mismatch");
        }
        Ok(Self {
            netfn: bytes[1] >> 2,
            rq_seq: bytes[4] >> 2,
            cmd: bytes[5],
            data: bytes[6..bytes.len() - 1].to_vec(),
        })
    }
}

/// An IPMI response message on LAN.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// The response NetFn (request NetFn + 1).
    pub netfn: u8,
    pub cmd: u8,
    pub rq_seq: u8,
    pub completion_code: u8,
    pub data: Vec<u8>,
}

impl Response {
    pub fn encode(&self) -> Vec<u8> {
        let header = [CONSOLE_SWID, self.netfn << 2];
        let mut out = header.to_vec();
        out.push(checksum(&header));
        let body_start = out.len();
        out.extend([BMC_SA, (self.rq_seq & 0x3F) << 2, self.cmd, self.completion_code]);
        out.extend(&self.data);
        out.push(checksum(&out[body_start..]));
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        if bytes.len() < 8 {
            return err(format!("IPMI response of {} bytes is too short", bytes.len()));
        }
        if checksum(&bytes[..2]) != bytes[2] {
            return err("IPMI response header checksum mismatch");
        }
        if checksum(&bytes[3..bytes.len() - 1]) != bytes[bytes.len() - 1] {
            return err("IPMI response data checksum mismatch");
        }
        Ok(Self {
            netfn: bytes[1] >> 2,
            rq_seq: bytes[4] >> 2,
            cmd: bytes[5],
            completion_code: bytes[6],
            data: bytes[7..bytes.len() - 1].to_vec(),
        })
    }
}

/// Some BMCs (ipmi_sim) answer a failed session step with only the tag and status byte: read the console
/// session ID as 0 when it is missing.
fn u32_or_zero(b: &[u8], at: usize) -> u32 {
    if b.len() >= at + 4 { u32_at(b, at) } else { 0 }
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn array16(b: &[u8], at: usize) -> [u8; 16] {
    b[at..at + 16].try_into().expect("16 bytes")
}

/// RMCP+ Open Session Request (section 13.17).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenSessionRequest {
    pub tag: u8,
    /// Requested maximum privilege level (0 = highest the proposed algorithms allow).
    pub privilege: u8,
    pub console_session_id: u32,
    pub auth_algorithm: u8,
    pub integrity_algorithm: u8,
    pub confidentiality_algorithm: u8,
}

fn algorithm_payload(kind: u8, algorithm: u8) -> [u8; 8] {
    [kind, 0, 0, 0x08, algorithm & 0x3F, 0, 0, 0]
}

fn parse_algorithm(b: &[u8], at: usize, kind: u8) -> Result<u8, DecodeError> {
    let p = &b[at..at + 8];
    if p[0] != kind || p[3] != 0x08 {
        return err(format!("algorithm payload {kind} malformed"));
    }
    Ok(p[4] & 0x3F)
}

impl OpenSessionRequest {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![self.tag, self.privilege & 0x0F, 0, 0];
        out.extend(self.console_session_id.to_le_bytes());
        out.extend(algorithm_payload(0x00, self.auth_algorithm));
        out.extend(algorithm_payload(0x01, self.integrity_algorithm));
        out.extend(algorithm_payload(0x02, self.confidentiality_algorithm));
        out
    }

    pub fn decode(b: &[u8]) -> Result<Self, DecodeError> {
        if b.len() < 32 {
            return err("Open Session Request truncated");
        }
        Ok(Self {
            tag: b[0],
            privilege: b[1] & 0x0F,
            console_session_id: u32_at(b, 4),
            auth_algorithm: parse_algorithm(b, 8, 0x00)?,
            integrity_algorithm: parse_algorithm(b, 16, 0x01)?,
            confidentiality_algorithm: parse_algorithm(b, 24, 0x02)?,
        })
    }
}

/// RMCP+ Open Session Response (section 13.18). On an error status only the first 8 bytes are present.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenSessionResponse {
    pub tag: u8,
    pub status: u8,
    pub privilege: u8,
    pub console_session_id: u32,
    /// Present when `status` is 0.
    pub accepted: Option<OpenSessionAccepted>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenSessionAccepted {
    pub bmc_session_id: u32,
    pub auth_algorithm: u8,
    pub integrity_algorithm: u8,
    pub confidentiality_algorithm: u8,
}

impl OpenSessionResponse {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![self.tag, self.status, self.privilege, 0];
        out.extend(self.console_session_id.to_le_bytes());
        if let Some(a) = &self.accepted {
            out.extend(a.bmc_session_id.to_le_bytes());
            out.extend(algorithm_payload(0x00, a.auth_algorithm));
            out.extend(algorithm_payload(0x01, a.integrity_algorithm));
            out.extend(algorithm_payload(0x02, a.confidentiality_algorithm));
        }
        out
    }

    pub fn decode(b: &[u8]) -> Result<Self, DecodeError> {
        if b.len() < 2 || (b[1] == 0 && b.len() < 8) {
            return err("Open Session Response truncated");
        }
        let accepted = if b[1] == 0 {
            if b.len() < 36 {
                return err("Open Session Response truncated");
            }
            Some(OpenSessionAccepted {
                bmc_session_id: u32_at(b, 8),
                auth_algorithm: parse_algorithm(b, 12, 0x00)?,
                integrity_algorithm: parse_algorithm(b, 20, 0x01)?,
                confidentiality_algorithm: parse_algorithm(b, 28, 0x02)?,
            })
        } else {
            None
        };
        Ok(Self {
            tag: b[0],
            status: b[1],
            privilege: b.get(2).copied().unwrap_or(0) & 0x0F,
            console_session_id: u32_or_zero(b, 4),
            accepted,
        })
    }
}

/// RAKP Message 1 (section 13.20).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rakp1 {
    pub tag: u8,
    pub bmc_session_id: u32,
    pub console_random: [u8; 16],
    /// Requested privilege level with the name-only lookup bit (0x10).
    pub role: u8,
    pub username: Vec<u8>,
}

impl Rakp1 {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![self.tag, 0, 0, 0];
        out.extend(self.bmc_session_id.to_le_bytes());
        out.extend(self.console_random);
        out.extend([self.role, 0, 0, self.username.len() as u8]);
        out.extend(&self.username);
        out
    }

    pub fn decode(b: &[u8]) -> Result<Self, DecodeError> {
        if b.len() < 28 {
            return err("RAKP 1 truncated");
        }
        let len = b[27] as usize;
        let Some(username) = b.get(28..28 + len) else {
            return err("RAKP 1 user name truncated");
        };
        Ok(Self {
            tag: b[0],
            bmc_session_id: u32_at(b, 4),
            console_random: array16(b, 8),
            role: b[24],
            username: username.to_vec(),
        })
    }
}

/// RAKP Message 2 (section 13.21).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rakp2 {
    pub tag: u8,
    pub status: u8,
    pub console_session_id: u32,
    pub bmc_random: [u8; 16],
    pub bmc_guid: [u8; 16],
    pub auth_code: Vec<u8>,
}

impl Rakp2 {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![self.tag, self.status, 0, 0];
        out.extend(self.console_session_id.to_le_bytes());
        if self.status == 0 {
            out.extend(self.bmc_random);
            out.extend(self.bmc_guid);
            out.extend(&self.auth_code);
        }
        out
    }

    pub fn decode(b: &[u8]) -> Result<Self, DecodeError> {
        if b.len() < 2 || (b[1] == 0 && b.len() < 8) {
            return err("RAKP 2 truncated");
        }
        if b[1] != 0 {
            return Ok(Self {
                tag: b[0],
                status: b[1],
                console_session_id: u32_or_zero(b, 4),
                bmc_random: [0; 16],
                bmc_guid: [0; 16],
                auth_code: vec![],
            });
        }
        if b.len() < 40 {
            return err("RAKP 2 truncated");
        }
        Ok(Self {
            tag: b[0],
            status: b[1],
            console_session_id: u32_at(b, 4),
            bmc_random: array16(b, 8),
            bmc_guid: array16(b, 24),
            auth_code: b[40..].to_vec(),
        })
    }
}

/// RAKP Message 3 (section 13.22).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rakp3 {
    pub tag: u8,
    pub status: u8,
    pub bmc_session_id: u32,
    pub auth_code: Vec<u8>,
}

impl Rakp3 {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![self.tag, self.status, 0, 0];
        out.extend(self.bmc_session_id.to_le_bytes());
        out.extend(&self.auth_code);
        out
    }

    pub fn decode(b: &[u8]) -> Result<Self, DecodeError> {
        if b.len() < 8 {
            return err("RAKP 3 truncated");
        }
        Ok(Self {
            tag: b[0],
            status: b[1],
            bmc_session_id: u32_at(b, 4),
            auth_code: b[8..].to_vec(),
        })
    }
}

/// RAKP Message 4 (section 13.23).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rakp4 {
    pub tag: u8,
    pub status: u8,
    pub console_session_id: u32,
    pub icv: Vec<u8>,
}

impl Rakp4 {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![self.tag, self.status, 0, 0];
        out.extend(self.console_session_id.to_le_bytes());
        out.extend(&self.icv);
        out
    }

    pub fn decode(b: &[u8]) -> Result<Self, DecodeError> {
        if b.len() < 2 || (b[1] == 0 && b.len() < 8) {
            return err("RAKP 4 truncated");
        }
        Ok(Self {
            tag: b[0],
            status: b[1],
            console_session_id: u32_or_zero(b, 4),
            icv: b.get(8..).unwrap_or_default().to_vec(),
        })
    }
}

/// Cipher suite IDs from Get Channel Cipher Suites record data (section 22.15.1, table 22-18):
/// `0xC0 id` (standard) or `0xC1 id IANA[3]` (OEM) starts a record; algorithm tags follow.
pub fn parse_cipher_suite_records(data: &[u8]) -> Vec<u8> {
    let mut ids = Vec::new();
    let mut i = 0;
    while i < data.len() {
        match data[i] {
            0xC0 => {
                if let Some(&id) = data.get(i + 1) {
                    ids.push(id);
                }
                i += 2;
            }
            0xC1 => {
                if let Some(&id) = data.get(i + 1) {
                    ids.push(id);
                }
                i += 5;
            }
            _ => i += 1, // algorithm tag bytes (00xxxxxx auth, 01xxxxxx integrity, 10xxxxxx confidentiality)
        }
    }
    ids
}

/// RMCP+ status codes (table 13-15), for messages.
pub fn rmcp_status_meaning(status: u8) -> &'static str {
    match status {
        0x00 => "no errors",
        0x01 => "insufficient resources to create a session",
        0x02 => "invalid session ID",
        0x03 => "invalid payload type",
        0x04 => "invalid authentication algorithm",
        0x05 => "invalid integrity algorithm",
        0x06 => "no matching authentication payload",
        0x07 => "no matching integrity payload",
        0x08 => "inactive session ID",
        0x09 => "invalid role",
        0x0A => "unauthorized role or privilege level requested",
        0x0B => "insufficient resources to create a session at the requested role",
        0x0C => "invalid name length",
        0x0D => "unauthorized name",
        0x0E => "unauthorized GUID",
        0x0F => "invalid integrity check value",
        0x10 => "invalid confidentiality algorithm",
        0x11 => "no cipher suite match with proposed security algorithms",
        0x12 => "illegal or unrecognized parameter",
        _ => "unknown status",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn get_channel_auth_capabilities_matches_ipmitool() {
        // What `ipmitool -I lanplus -vvvv` sends first: Get Channel Authentication Capabilities, channel 0x0E
        // with the IPMI v2.0 bit, privilege ADMINISTRATOR, rqSeq 0.
        let req = Request {
            netfn: 0x06,
            cmd: 0x38,
            rq_seq: 0,
            data: vec![0x8E, 0x04],
        };
        let packet = encode_v15(&req.encode());
        assert_eq!(
            packet,
            [
                0x06, 0x00, 0xFF, 0x07, 0x00, 0, 0, 0, 0, 0, 0, 0, 0, 0x09, 0x20, 0x18, 0xC8, 0x81, 0x00, 0x38, 0x8E,
                0x04, 0xB5
            ]
        );
    }

    #[test]
    fn integrity_trailer_pads_to_four() {
        let code = |data: &[u8]| {
            assert_eq!(data.len() % 4, 0);
            vec![0xAA; 12]
        };
        for len in 0..8 {
            let p = encode_v20(0, true, 1, 2, &vec![0x55; len], Some(&code));
            let Packet::V20(d) = decode(&p, 12).unwrap() else {
                panic!()
            };
            assert_eq!(d.payload, vec![0x55; len]);
            let (range, ac) = d.integrity.unwrap();
            assert_eq!(ac, vec![0xAA; 12]);
            assert_eq!((range.end - range.start) % 4, 0);
        }
    }

    #[test]
    fn cipher_suite_records() {
        // ipmitool's example: suites 3 and 17, plus an OEM record.
        let data = [
            0xC0, 0x03, 0x01, 0x41, 0x81, 0xC0, 0x11, 0x03, 0x44, 0x81, 0xC1, 0x50, 0x01, 0x02, 0x03, 0x01,
        ];
        assert_eq!(parse_cipher_suite_records(&data), vec![3, 17, 0x50]);
    }

    #[test]
    fn truncated_inputs_are_errors() {
        let req = Request {
            netfn: 0x00,
            cmd: 0x01,
            rq_seq: 5,
            data: vec![],
        };
        let good = encode_v20(0, false, 7, 9, &req.encode(), Some(&|_: &[u8]| vec![1; 16]));
        for n in 0..good.len() {
            assert!(decode(&good[..n], 16).is_err(), "prefix of {n} bytes decoded");
        }
        let v15 = encode_v15(&req.encode());
        for n in 0..v15.len() {
            assert!(decode(&v15[..n], 0).is_err(), "v1.5 prefix of {n} bytes decoded");
        }
        for n in 0..8 {
            assert!(Response::decode(&[0u8; 8][..n]).is_err());
            assert!(OpenSessionResponse::decode(&[0u8; 36][..n]).is_err());
            assert!(Rakp2::decode(&[0u8; 40][..n]).is_err());
            assert!(Rakp4::decode(&[0u8; 8][..n]).is_err());
        }
        // A bare tag + error status, as ipmi_sim sends for an unsupported algorithm, is a valid refusal.
        let refusal = OpenSessionResponse::decode(&[0x01, 0x04]).unwrap();
        assert_eq!((refusal.tag, refusal.status, refusal.accepted), (0x01, 0x04, None));
        assert_eq!(Rakp2::decode(&[0x02, 0x0D]).unwrap().status, 0x0D);
        assert_eq!(Rakp4::decode(&[0x03, 0x0F]).unwrap().status, 0x0F);
        assert!(OpenSessionResponse::decode(&[0u8; 35]).is_err());
        assert!(Rakp2::decode(&[0u8; 39]).is_err());
    }

    proptest! {
        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..80), n in 0usize..40) {
            let _ = decode(&bytes, n);
            let _ = Response::decode(&bytes);
            let _ = Request::decode(&bytes);
            let _ = OpenSessionResponse::decode(&bytes);
            let _ = OpenSessionRequest::decode(&bytes);
            let _ = Rakp1::decode(&bytes);
            let _ = Rakp2::decode(&bytes);
            let _ = Rakp3::decode(&bytes);
            let _ = Rakp4::decode(&bytes);
            let _ = parse_cipher_suite_records(&bytes);
        }

        #[test]
        fn v15_round_trip(message in proptest::collection::vec(any::<u8>(), 0..200)) {
            let p = encode_v15(&message);
            prop_assert_eq!(decode(&p, 0).unwrap(), Packet::V15 { session_seq: 0, session_id: 0, message });
        }

        #[test]
        fn v20_round_trip(pt in 0u8..0x40, enc: bool, auth: bool, sid: u32, seq: u32,
                          payload in proptest::collection::vec(any::<u8>(), 0..300), code_len in prop_oneof![Just(12usize), Just(16usize)]) {
            prop_assume!(pt != 0x02);
            let code = move |_: &[u8]| vec![0xC5; code_len];
            let p = encode_v20(pt, enc, sid, seq, &payload, if auth { Some(&code) } else { None });
            let Packet::V20(d) = decode(&p, code_len).unwrap() else { panic!("not v2.0") };
            prop_assert_eq!((d.payload_type, d.encrypted, d.authenticated, d.session_id, d.session_seq), (pt, enc, auth, sid, seq));
            prop_assert_eq!(d.payload, payload);
            prop_assert_eq!(d.integrity.is_some(), auth);
        }

        #[test]
        fn request_round_trip(netfn in 0u8..0x40, cmd: u8, rq_seq in 0u8..0x40, data in proptest::collection::vec(any::<u8>(), 0..40)) {
            let r = Request { netfn, cmd, rq_seq, data };
            prop_assert_eq!(Request::decode(&r.encode()).unwrap(), r);
        }

        #[test]
        fn response_round_trip(netfn in 0u8..0x40, cmd: u8, rq_seq in 0u8..0x40, cc: u8, data in proptest::collection::vec(any::<u8>(), 0..40)) {
            let r = Response { netfn, cmd, rq_seq, completion_code: cc, data };
            prop_assert_eq!(Response::decode(&r.encode()).unwrap(), r);
        }

        #[test]
        fn open_session_round_trip(tag: u8, privilege in 0u8..16, sid: u32, a in 0u8..0x40, i in 0u8..0x40, c in 0u8..0x40,
                                   status: u8, bsid: u32) {
            let req = OpenSessionRequest { tag, privilege, console_session_id: sid, auth_algorithm: a, integrity_algorithm: i, confidentiality_algorithm: c };
            prop_assert_eq!(OpenSessionRequest::decode(&req.encode()).unwrap(), req);
            let accepted = (status == 0).then_some(OpenSessionAccepted { bmc_session_id: bsid, auth_algorithm: a, integrity_algorithm: i, confidentiality_algorithm: c });
            let rsp = OpenSessionResponse { tag, status, privilege, console_session_id: sid, accepted };
            prop_assert_eq!(OpenSessionResponse::decode(&rsp.encode()).unwrap(), rsp);
        }

        #[test]
        fn rakp_round_trips(tag: u8, status: u8, sid: u32, r in proptest::array::uniform16(any::<u8>()), g in proptest::array::uniform16(any::<u8>()),
                            role: u8, name in proptest::collection::vec(any::<u8>(), 0..17), code in proptest::collection::vec(any::<u8>(), 0..33)) {
            let m1 = Rakp1 { tag, bmc_session_id: sid, console_random: r, role, username: name };
            prop_assert_eq!(Rakp1::decode(&m1.encode()).unwrap(), m1);
            let m2 = if status == 0 {
                Rakp2 { tag, status, console_session_id: sid, bmc_random: r, bmc_guid: g, auth_code: code.clone() }
            } else {
                Rakp2 { tag, status, console_session_id: sid, bmc_random: [0; 16], bmc_guid: [0; 16], auth_code: vec![] }
            };
            prop_assert_eq!(Rakp2::decode(&m2.encode()).unwrap(), m2);
            let m3 = Rakp3 { tag, status, bmc_session_id: sid, auth_code: code.clone() };
            prop_assert_eq!(Rakp3::decode(&m3.encode()).unwrap(), m3);
            let m4 = Rakp4 { tag, status, console_session_id: sid, icv: code };
            prop_assert_eq!(Rakp4::decode(&m4.encode()).unwrap(), m4);
        }
    }
}

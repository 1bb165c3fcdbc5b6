//! TFTP datagrams (RFC 1350), option negotiation (RFC 2347: blksize RFC 2348, timeout and tsize RFC 2349,
//! windowsize RFC 7440): parsing what clients send and encoding what the server sends. Pure functions, fuzzed
//! through [`crate::fuzzing::tftp_request`].

/// RFC 1350 opcodes.
pub const RRQ: u16 = 1;
/// Write request.
pub const WRQ: u16 = 2;
/// Data block.
pub const DATA: u16 = 3;
/// Acknowledgement.
pub const ACK: u16 = 4;
/// Error.
pub const ERROR: u16 = 5;
/// Option acknowledgement (RFC 2347).
pub const OACK: u16 = 6;

/// Block size without options (RFC 1350).
pub const DEFAULT_BLKSIZE: u16 = 512;
/// Largest block size a client may ask for (RFC 2348).
pub const MAX_BLKSIZE: u16 = 65464;
/// Largest window kiln agrees to (RFC 7440 allows 65535; more than this only deepens the loss a burst can cause).
pub const MAX_WINDOW: u16 = 64;
/// Requests with more options than this are not requests a boot ROM sends.
const MAX_OPTIONS: usize = 16;

/// Error codes (RFC 1350 §5, RFC 2347).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u16)]
pub enum ErrorCode {
    /// "Not defined, see error message."
    Undefined = 0,
    /// File not found.
    FileNotFound = 1,
    /// Access violation.
    AccessViolation = 2,
    /// Illegal TFTP operation.
    IllegalOperation = 4,
    /// Unknown transfer ID.
    UnknownTransferId = 5,
    /// Option negotiation refused (RFC 2347).
    OptionRefused = 8,
}

/// A refusal sent to a client: its code and message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The TFTP error code.
    pub code: ErrorCode,
    /// The message, for the client's user.
    pub message: &'static str,
}

impl Refusal {
    /// File not found (also what a directory or a non-file is reported as).
    pub const NOT_FOUND: Refusal = Refusal {
        code: ErrorCode::FileNotFound,
        message: "file not found",
    };
    /// A name that is refused or leaves the root.
    pub const ACCESS: Refusal = Refusal {
        code: ErrorCode::AccessViolation,
        message: "access violation",
    };
    /// Writes, and the obsolete `mail` mode.
    pub const READ_ONLY: Refusal = Refusal {
        code: ErrorCode::IllegalOperation,
        message: "this server is read-only",
    };
    /// All transfer slots of the server or of this client are taken.
    pub const BUSY: Refusal = Refusal {
        code: ErrorCode::Undefined,
        message: "too many transfers; retry later",
    };
    /// A netascii transfer of a file too big to convert in memory.
    pub const NETASCII_TOO_BIG: Refusal = Refusal {
        code: ErrorCode::Undefined,
        message: "netascii mode is served for files up to 8 MiB; use octet",
    };
}

/// Transfer mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Bytes as they are.
    Octet,
    /// Text: line ends as CR LF, a lone CR as CR NUL.
    Netascii,
    /// Obsolete (RFC 1350 "mail"), write-only: always refused.
    Mail,
}

/// Read or write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// RRQ.
    Read,
    /// WRQ.
    Write,
}

/// The options of a request that kiln acts on; anything else a client sends is left out of the OACK, as
/// RFC 2347 asks of a server that does not support an option.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Options {
    /// `blksize`, already limited to 8..=65464.
    pub blksize: Option<u16>,
    /// `tsize` was asked for (a read request sends 0; the OACK carries the size).
    pub tsize: bool,
    /// `timeout` in seconds, 1..=255.
    pub timeout: Option<u8>,
    /// `windowsize`, limited to 1..=[`MAX_WINDOW`].
    pub windowsize: Option<u16>,
}

impl Options {
    /// Whether the reply starts with an OACK.
    pub fn any(&self) -> bool {
        self.blksize.is_some() || self.tsize || self.timeout.is_some() || self.windowsize.is_some()
    }
}

/// A parsed RRQ or WRQ.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request<'a> {
    /// RRQ or WRQ.
    pub kind: Kind,
    /// The file name as sent (checked against the root later).
    pub filename: &'a str,
    /// The transfer mode.
    pub mode: Mode,
    /// The options kiln honours, with out-of-range values dropped.
    pub options: Options,
}

/// Why a datagram on the server port is not a request (dropped and counted, never answered).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Malformed {
    /// Shorter than an opcode, or a field without its NUL.
    Truncated,
    /// An opcode other than RRQ or WRQ.
    NotARequest(u16),
    /// The file name or an option is not UTF-8.
    NotText,
    /// A mode other than octet, netascii or mail.
    UnknownMode,
    /// An option without a value, or too many options.
    BadOptions,
}

fn nul_terminated(b: &[u8]) -> Result<(&str, &[u8]), Malformed> {
    let end = b.iter().position(|c| *c == 0).ok_or(Malformed::Truncated)?;
    let s = std::str::from_utf8(&b[..end]).map_err(|_| Malformed::NotText)?;
    Ok((s, &b[end + 1..]))
}

/// Parses a datagram received on the server port.
///
/// # Errors
/// [`Malformed`] for anything that is not a complete RRQ or WRQ.
pub fn parse_request(datagram: &[u8]) -> Result<Request<'_>, Malformed> {
    let (op, rest) = datagram.split_first_chunk::<2>().ok_or(Malformed::Truncated)?;
    let kind = match u16::from_be_bytes(*op) {
        RRQ => Kind::Read,
        WRQ => Kind::Write,
        other => return Err(Malformed::NotARequest(other)),
    };
    let (filename, rest) = nul_terminated(rest)?;
    let (mode, mut rest) = nul_terminated(rest)?;
    let mode = if mode.eq_ignore_ascii_case("octet") {
        Mode::Octet
    } else if mode.eq_ignore_ascii_case("netascii") {
        Mode::Netascii
    } else if mode.eq_ignore_ascii_case("mail") {
        Mode::Mail
    } else {
        return Err(Malformed::UnknownMode);
    };
    let mut options = Options::default();
    let mut seen = 0;
    while !rest.is_empty() {
        seen += 1;
        if seen > MAX_OPTIONS {
            return Err(Malformed::BadOptions);
        }
        let (name, after) = nul_terminated(rest).map_err(|_| Malformed::BadOptions)?;
        let (value, after) = nul_terminated(after).map_err(|_| Malformed::BadOptions)?;
        rest = after;
        // Repeated options: the first one counts. Values out of range or not numbers: the option is ignored,
        // which RFC 2347 allows (the transfer goes on with the default).
        if name.eq_ignore_ascii_case("blksize") && options.blksize.is_none() {
            options.blksize = value
                .parse::<u32>()
                .ok()
                .filter(|v| *v >= 8)
                .map(|v| v.min(u32::from(MAX_BLKSIZE)) as u16);
        } else if name.eq_ignore_ascii_case("tsize") {
            options.tsize = kind == Kind::Read && value.parse::<u64>().is_ok();
        } else if name.eq_ignore_ascii_case("timeout") && options.timeout.is_none() {
            options.timeout = value.parse::<u8>().ok().filter(|v| *v >= 1);
        } else if name.eq_ignore_ascii_case("windowsize") && options.windowsize.is_none() {
            options.windowsize = value
                .parse::<u32>()
                .ok()
                .filter(|v| (1..=65535).contains(v))
                .map(|v| v.min(u32::from(MAX_WINDOW)) as u16);
        }
    }
    Ok(Request {
        kind,
        filename,
        mode,
        options,
    })
}

/// The OACK for `options`, with `size` as the `tsize` value.
pub fn oack(options: &Options, size: u64) -> Vec<u8> {
    let mut v = OACK.to_be_bytes().to_vec();
    let mut put = |k: &str, val: String| {
        v.extend_from_slice(k.as_bytes());
        v.push(0);
        v.extend_from_slice(val.as_bytes());
        v.push(0);
    };
    if let Some(b) = options.blksize {
        put("blksize", b.to_string());
    }
    if options.tsize {
        put("tsize", size.to_string());
    }
    if let Some(t) = options.timeout {
        put("timeout", t.to_string());
    }
    if let Some(w) = options.windowsize {
        put("windowsize", w.to_string());
    }
    v
}

/// An ERROR datagram.
pub fn error(refusal: &Refusal) -> Vec<u8> {
    let mut v = Vec::with_capacity(5 + refusal.message.len());
    v.extend_from_slice(&ERROR.to_be_bytes());
    v.extend_from_slice(&(refusal.code as u16).to_be_bytes());
    v.extend_from_slice(refusal.message.as_bytes());
    v.push(0);
    v
}

/// What a client sends during a transfer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reply {
    /// ACK of a block number (0 acknowledges the OACK).
    Ack(u16),
    /// The client gave up (its error code).
    Error(u16),
    /// Anything else: ignored.
    Other,
}

/// Parses a datagram a client sent to a transfer's port.
pub fn parse_reply(datagram: &[u8]) -> Reply {
    match datagram {
        [0, 4, hi, lo, ..] => Reply::Ack(u16::from_be_bytes([*hi, *lo])),
        [0, 5, hi, lo, ..] => Reply::Error(u16::from_be_bytes([*hi, *lo])),
        _ => Reply::Other,
    }
}

/// `data` as netascii (RFC 764): LF becomes CR LF, a CR not followed by LF becomes CR NUL.
pub fn to_netascii(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + data.len() / 16);
    let mut i = 0;
    while i < data.len() {
        match data[i] {
            b'\n' => out.extend_from_slice(b"\r\n"),
            b'\r' if data.get(i + 1) == Some(&b'\n') => {
                out.extend_from_slice(b"\r\n");
                i += 1;
            }
            b'\r' => out.extend_from_slice(b"\r\0"),
            b => out.push(b),
        }
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(fields: &[&str]) -> Vec<u8> {
        let mut v = RRQ.to_be_bytes().to_vec();
        for f in fields {
            v.extend_from_slice(f.as_bytes());
            v.push(0);
        }
        v
    }

    #[test]
    fn requests_and_their_options() {
        let d = req(&[
            "pxelinux.0",
            "OCTET",
            "BLKSIZE",
            "1468",
            "tsize",
            "0",
            "windowsize",
            "999",
            "x",
            "y",
        ]);
        let r = parse_request(&d).unwrap();
        assert_eq!((r.kind, r.filename, r.mode), (Kind::Read, "pxelinux.0", Mode::Octet));
        assert_eq!(
            r.options,
            Options {
                blksize: Some(1468),
                tsize: true,
                timeout: None,
                windowsize: Some(MAX_WINDOW),
            }
        );
        let o = oack(&r.options, 12345);
        assert_eq!(&o[..2], &[0, 6]);
        assert_eq!(&o[2..], b"blksize\x001468\x00tsize\x0012345\x00windowsize\x0064\x00");

        // Out of range values are ignored, not errors; a huge blksize is lowered.
        let d = req(&["a", "netascii", "blksize", "4", "timeout", "0", "windowsize", "0"]);
        let r = parse_request(&d).unwrap();
        assert_eq!(r.mode, Mode::Netascii);
        assert!(!r.options.any());
        let d = req(&["a", "octet", "blksize", "100000", "timeout", "255"]);
        let r = parse_request(&d).unwrap().options;
        assert_eq!((r.blksize, r.timeout), (Some(MAX_BLKSIZE), Some(255)));
    }

    #[test]
    fn malformed_requests() {
        assert_eq!(parse_request(&[0]), Err(Malformed::Truncated));
        assert_eq!(parse_request(&[0, 4, 0, 1]), Err(Malformed::NotARequest(4)));
        assert_eq!(parse_request(b"\x00\x01name"), Err(Malformed::Truncated));
        assert_eq!(
            parse_request(b"\x00\x01name\x00binary\x00"),
            Err(Malformed::UnknownMode)
        );
        assert_eq!(parse_request(b"\x00\x01n\xffx\x00octet\x00"), Err(Malformed::NotText));
        assert_eq!(
            parse_request(b"\x00\x01n\x00octet\x00blksize\x00"),
            Err(Malformed::BadOptions)
        );
        let many: Vec<&str> = ["f", "octet"].into_iter().chain(std::iter::repeat_n("o", 40)).collect();
        assert_eq!(parse_request(&req(&many)), Err(Malformed::BadOptions));
        assert_eq!(parse_request(&req(&["f", "mail"])).unwrap().mode, Mode::Mail);
    }

    #[test]
    fn replies_and_errors() {
        assert_eq!(parse_reply(&[0, 4, 1, 2]), Reply::Ack(258));
        assert_eq!(parse_reply(&[0, 5, 0, 8, b'x', 0]), Reply::Error(8));
        assert_eq!(parse_reply(&[0, 4, 1]), Reply::Other);
        assert_eq!(error(&Refusal::NOT_FOUND), b"\x00\x05\x00\x01file not found\x00");
    }

    #[test]
    fn netascii() {
        assert_eq!(to_netascii(b"a\nb\r\nc\rd"), b"a\r\nb\r\nc\r\0d");
        assert_eq!(to_netascii(b"\r"), b"\r\0");
    }
}

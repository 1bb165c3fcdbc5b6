//! Which kind of network-boot client sent a request (options 60, 77, 93, 175) and which boot file it gets.
//!
//! Pure: reads a decoded message, decides; no I/O. References: RFC 4578 §2.1 (option 93, client system
//! architecture; IANA "Processor Architecture Types"), PXE 2.1 spec (option 60 `PXEClient`), UEFI 2.x §24.7 (HTTP
//! boot: option 60 `HTTPClient`), RFC 3004 (option 77 user class; iPXE sends `iPXE`), iPXE's option 175.

use dhcproto::v4::{DhcpOption, Message, OptionCode};

use crate::MacAddr;
use crate::config::BootConfig;

/// The firmware/loader family of a client, from option 93 (RFC 4578 §2.1 and the IANA registry).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    /// 0: x86 BIOS.
    BiosX86,
    /// 6: EFI IA32.
    EfiIa32,
    /// 7 (EFI BC) or 9 (EFI x86-64); 16 for HTTP.
    EfiX64,
    /// 11: EFI arm64; 19 for HTTP.
    EfiArm64,
    /// Anything else (the raw code is kept).
    Other(u16),
}

impl Arch {
    /// Maps an option 93 code; HTTP-boot codes (15, 16, 19) map to the same family.
    pub fn from_code(code: u16) -> Self {
        match code {
            0 => Arch::BiosX86,
            6 | 15 => Arch::EfiIa32,
            7 | 9 | 16 => Arch::EfiX64,
            11 | 19 => Arch::EfiArm64,
            other => Arch::Other(other),
        }
    }
}

/// What kind of client sent the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Client {
    /// iPXE itself (user class `iPXE` or option 175): gets the URL of its per-host script.
    Ipxe,
    /// A firmware PXE client (option 60 starts with `PXEClient`): gets an iPXE binary by TFTP.
    Pxe(Arch),
    /// A UEFI HTTP-boot client (option 60 starts with `HTTPClient`): gets an `http://` URL.
    Http(Arch),
    /// Not a network-boot client (an OS's DHCP client): address only.
    Plain,
}

/// Raw option 93 code, if present.
pub fn arch_code(msg: &Message) -> Option<u16> {
    match msg.opts().get(OptionCode::ClientSystemArchitecture) {
        Some(DhcpOption::ClientSystemArchitecture(a)) => Some(u16::from(*a)),
        _ => None,
    }
}

/// Option 60 bytes, if present.
pub fn class_id(msg: &Message) -> Option<&[u8]> {
    match msg.opts().get(OptionCode::ClassIdentifier) {
        Some(DhcpOption::ClassIdentifier(v)) => Some(v),
        _ => None,
    }
}

/// Classifies the sender of `msg`.
pub fn classify(msg: &Message) -> Client {
    let user_class_ipxe = match msg.opts().get(OptionCode::UserClass) {
        // iPXE sends the bare string; RFC 3004 framing (length-prefixed) is accepted too.
        Some(DhcpOption::UserClass(v)) => v == b"iPXE" || v.get(1..) == Some(b"iPXE".as_slice()),
        _ => false,
    };
    if user_class_ipxe || msg.opts().contains(OptionCode::Unknown(175)) {
        return Client::Ipxe;
    }
    // PXE 2.1: "PXEClient:Arch:xxxxx:UNDI:yyyzzz"; without option 93 the architecture is taken as BIOS.
    let arch = Arch::from_code(arch_code(msg).unwrap_or(0));
    match class_id(msg) {
        Some(c) if c.starts_with(b"PXEClient") => Client::Pxe(arch),
        Some(c) if c.starts_with(b"HTTPClient") => Client::Http(arch),
        _ => Client::Plain,
    }
}

/// Where the boot file is fetched from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BootFile {
    /// A TFTP path on our next-server (`siaddr`).
    Tftp(String),
    /// A URL (iPXE script, or an EFI binary for UEFI HTTP boot).
    Url(String),
}

impl BootFile {
    /// The bytes for the `file` field / option 67.
    pub fn as_str(&self) -> &str {
        match self {
            BootFile::Tftp(s) | BootFile::Url(s) => s,
        }
    }
}

/// The boot file for `client` with MAC `mac`; `None` for plain DHCP clients and unsupported architectures.
pub fn boot_file(client: Client, mac: MacAddr, boot: &BootConfig) -> Option<BootFile> {
    let efi_name = |arch: Arch| match arch {
        Arch::BiosX86 => Some(&boot.bios),
        Arch::EfiX64 => Some(&boot.efi_x64),
        Arch::EfiArm64 => Some(&boot.efi_arm64),
        Arch::EfiIa32 | Arch::Other(_) => None,
    };
    match client {
        Client::Ipxe => Some(BootFile::Url(boot.script_url(mac))),
        Client::Pxe(arch) => efi_name(arch).map(|n| BootFile::Tftp(n.clone())),
        // BIOS has no HTTP boot; an HTTP client claiming it is odd, give it nothing.
        Client::Http(Arch::BiosX86) => None,
        Client::Http(arch) => efi_name(arch).map(|n| BootFile::Url(boot.file_url(n))),
        Client::Plain => None,
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use dhcproto::v4::{Architecture, UnknownOption};

    use super::*;

    fn msg(opts: Vec<DhcpOption>) -> Message {
        let mut m = Message::new(
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
            &[2, 0, 0, 0, 0, 1],
        );
        for o in opts {
            m.opts_mut().insert(o);
        }
        m
    }

    fn boot() -> BootConfig {
        BootConfig::with_base("http://10.0.0.1:8080/".parse().unwrap())
    }

    #[test]
    fn table_of_clients_and_files() {
        let mac = MacAddr::new([2, 0, 0, 0, 0, 1]);
        let pxe = |a: u16| {
            vec![
                DhcpOption::ClassIdentifier(b"PXEClient:Arch:00000:UNDI:002001".to_vec()),
                DhcpOption::ClientSystemArchitecture(Architecture::from(a)),
            ]
        };
        let cases: Vec<(Vec<DhcpOption>, Client, Option<BootFile>)> = vec![
            (vec![], Client::Plain, None),
            (
                pxe(0),
                Client::Pxe(Arch::BiosX86),
                Some(BootFile::Tftp("undionly.kpxe".into())),
            ),
            (
                pxe(7),
                Client::Pxe(Arch::EfiX64),
                Some(BootFile::Tftp("ipxe.efi".into())),
            ),
            (
                pxe(9),
                Client::Pxe(Arch::EfiX64),
                Some(BootFile::Tftp("ipxe.efi".into())),
            ),
            (
                pxe(11),
                Client::Pxe(Arch::EfiArm64),
                Some(BootFile::Tftp("ipxe-arm64.efi".into())),
            ),
            (pxe(6), Client::Pxe(Arch::EfiIa32), None),
            (
                vec![
                    DhcpOption::ClassIdentifier(b"HTTPClient:Arch:00016".to_vec()),
                    DhcpOption::ClientSystemArchitecture(Architecture::from(16)),
                ],
                Client::Http(Arch::EfiX64),
                Some(BootFile::Url("http://10.0.0.1:8080/boot/files/ipxe.efi".into())),
            ),
            (
                [pxe(0), vec![DhcpOption::UserClass(b"iPXE".to_vec())]].concat(),
                Client::Ipxe,
                Some(BootFile::Url("http://10.0.0.1:8080/boot/02:00:00:00:00:01.ipxe".into())),
            ),
            (
                vec![DhcpOption::Unknown(UnknownOption::new(
                    OptionCode::Unknown(175),
                    vec![0xb1, 1, 1],
                ))],
                Client::Ipxe,
                Some(BootFile::Url("http://10.0.0.1:8080/boot/02:00:00:00:00:01.ipxe".into())),
            ),
        ];
        for (opts, want_client, want_file) in cases {
            let m = msg(opts);
            let c = classify(&m);
            assert_eq!(c, want_client);
            assert_eq!(boot_file(c, mac, &boot()), want_file, "{c:?}");
        }
    }
}

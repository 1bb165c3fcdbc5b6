//! Writes the seed corpora of kiln's fuzz targets into `<dir>/<target>/<name>`: requests shaped like those real
//! clients send (PXE ROMs, iPXE, UEFI HTTP boot, udhcpc, dhclient; TFTP reads with the options firmware asks for),
//! BMC answers shaped like those the tests' mock and emulators give, and the inputs users write (BMC addresses,
//! checksums, Metal3 manifests). Existing files of other names (crash inputs kept as regressions) are left alone.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use dhcproto::Encodable;
use dhcproto::v4::{Architecture, DhcpOption, Flags, Message, MessageType, OptionCode, UnknownOption};
use kiln_bmc::fuzzing::FUZZ_SIK;
use kiln_bmc::ipmi::crypto::{CipherSuite, SessionKeys};
use kiln_bmc::ipmi::packet::{self, OpenSessionAccepted, OpenSessionResponse, Rakp2, Rakp4, Response, payload_type};

struct Corpus {
    root: PathBuf,
}

impl Corpus {
    fn put(&self, target: &str, name: &str, bytes: impl AsRef<[u8]>) {
        let dir = self.root.join(target);
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        let path = dir.join(name);
        std::fs::write(&path, bytes).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    }
}

const SERVER: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);

fn mac(last: u8) -> [u8; 6] {
    [0x52, 0x54, 0x00, 0x12, 0x34, last]
}

/// A BOOTREQUEST from `chaddr` with a message type and `opts`, as a client would send it.
fn request(xid: u32, chaddr: [u8; 6], kind: MessageType, opts: Vec<DhcpOption>) -> Message {
    let unspecified = Ipv4Addr::UNSPECIFIED;
    let mut m = Message::new_with_id(xid, unspecified, unspecified, unspecified, unspecified, &chaddr);
    m.opts_mut().insert(DhcpOption::MessageType(kind));
    for o in opts {
        m.opts_mut().insert(o);
    }
    m
}

/// What a PXE 2.1 ROM or UEFI PXE stack sends with every request (RFC 4578 options 93, 94, 97; option 60).
fn pxe_opts(arch: u16, class: &str) -> Vec<DhcpOption> {
    let mut guid = vec![0u8];
    guid.extend((0u8..16).map(|i| i.wrapping_mul(17)));
    vec![
        DhcpOption::MaxMessageSize(1260),
        DhcpOption::ParameterRequestList(
            [
                1u8, 2, 3, 5, 6, 11, 12, 13, 15, 16, 17, 18, 22, 23, 28, 40, 41, 42, 43, 50, 51, 54, 58, 59, 60, 66, 67,
            ]
            .into_iter()
            .chain(128..=135)
            .map(OptionCode::from)
            .collect(),
        ),
        DhcpOption::ClientMachineIdentifier(guid),
        DhcpOption::ClientNetworkInterface(1, 3, 16),
        DhcpOption::ClientSystemArchitecture(Architecture::from(arch)),
        DhcpOption::ClassIdentifier(class.as_bytes().to_vec()),
    ]
}

/// iPXE: user class `iPXE` and its feature option 175 (encapsulated: PXEEXT, HTTP, DNS, bzImage, EFI, ...).
fn ipxe_opts() -> Vec<DhcpOption> {
    let mut o = pxe_opts(7, "PXEClient:Arch:00007:UNDI:003010");
    o.push(DhcpOption::UserClass(b"iPXE".to_vec()));
    o.push(DhcpOption::Unknown(UnknownOption::new(
        OptionCode::Unknown(175),
        vec![
            0xb1, 0x05, 0x01, 0x80, 0x86, 0x10, 0x0e, 0x10, 0x01, 0x01, 0x13, 0x01, 0x01, 0x18, 0x01, 0x01,
        ],
    )));
    o
}

fn udhcpc_opts(chaddr: [u8; 6]) -> Vec<DhcpOption> {
    let mut id = vec![1u8];
    id.extend(chaddr);
    vec![
        DhcpOption::ClassIdentifier(b"udhcp 1.36.1".to_vec()),
        DhcpOption::ClientIdentifier(id),
        DhcpOption::MaxMessageSize(576),
        DhcpOption::ParameterRequestList([1u8, 3, 6, 12, 15, 28, 42].into_iter().map(OptionCode::from).collect()),
        DhcpOption::Hostname("node-3".into()),
    ]
}

fn dhclient_opts() -> Vec<DhcpOption> {
    vec![
        DhcpOption::ParameterRequestList(
            [1u8, 28, 2, 3, 15, 6, 119, 12, 44, 47, 26, 121, 42]
                .into_iter()
                .map(OptionCode::from)
                .collect(),
        ),
        DhcpOption::Hostname("node-4".into()),
    ]
}

fn dhcp(c: &Corpus) {
    let requested = DhcpOption::RequestedIpAddress(Ipv4Addr::new(10, 0, 0, 150));
    let sid = DhcpOption::ServerIdentifier(SERVER);
    let bios = || pxe_opts(0, "PXEClient:Arch:00000:UNDI:002001");
    let with = |mut v: Vec<DhcpOption>, more: &[DhcpOption]| {
        v.extend_from_slice(more);
        v
    };
    let mut seeds: Vec<(&str, Message)> = vec![
        (
            "pxe-bios-discover",
            request(0x1000_0001, mac(1), MessageType::Discover, bios()),
        ),
        (
            "pxe-bios-request",
            request(
                0x1000_0001,
                mac(1),
                MessageType::Request,
                with(bios(), &[requested.clone(), sid.clone()]),
            ),
        ),
        (
            "pxe-uefi-x64-discover",
            request(
                0x1000_0002,
                mac(2),
                MessageType::Discover,
                pxe_opts(7, "PXEClient:Arch:00007:UNDI:003016"),
            ),
        ),
        (
            "pxe-uefi-x64-9-discover",
            request(
                0x1000_0003,
                mac(3),
                MessageType::Discover,
                pxe_opts(9, "PXEClient:Arch:00009:UNDI:003016"),
            ),
        ),
        (
            "pxe-uefi-arm64-discover",
            request(
                0x1000_0004,
                mac(5),
                MessageType::Discover,
                pxe_opts(11, "PXEClient:Arch:00011:UNDI:003000"),
            ),
        ),
        (
            "pxe-uefi-ia32-discover",
            request(
                0x1000_0005,
                mac(6),
                MessageType::Discover,
                pxe_opts(6, "PXEClient:Arch:00006:UNDI:003016"),
            ),
        ),
        (
            "uefi-http-discover",
            request(
                0x1000_0006,
                mac(7),
                MessageType::Discover,
                pxe_opts(16, "HTTPClient:Arch:00016:UNDI:003001"),
            ),
        ),
        (
            "ipxe-discover",
            request(0x1000_0007, mac(9), MessageType::Discover, ipxe_opts()),
        ),
        (
            "ipxe-request",
            request(
                0x1000_0007,
                mac(9),
                MessageType::Request,
                with(ipxe_opts(), &[requested.clone(), sid.clone()]),
            ),
        ),
        (
            "udhcpc-discover",
            request(0x1000_0008, mac(10), MessageType::Discover, udhcpc_opts(mac(10))),
        ),
        (
            "udhcpc-request",
            request(
                0x1000_0008,
                mac(10),
                MessageType::Request,
                with(udhcpc_opts(mac(10)), &[requested.clone(), sid.clone()]),
            ),
        ),
        (
            "dhclient-discover",
            request(0x1000_0009, mac(13), MessageType::Discover, dhclient_opts()),
        ),
        (
            "request-for-another-server",
            request(
                0x1000_000a,
                mac(14),
                MessageType::Request,
                with(
                    dhclient_opts(),
                    &[
                        requested.clone(),
                        DhcpOption::ServerIdentifier(Ipv4Addr::new(10, 0, 0, 254)),
                    ],
                ),
            ),
        ),
        (
            "decline",
            request(
                0x1000_000b,
                mac(15),
                MessageType::Decline,
                vec![requested.clone(), sid.clone()],
            ),
        ),
    ];
    let mut renew = request(0x1000_000c, mac(13), MessageType::Request, dhclient_opts());
    renew.set_ciaddr(Ipv4Addr::new(10, 0, 0, 150));
    seeds.push(("dhclient-renew", renew));
    let mut release = request(0x1000_000d, mac(13), MessageType::Release, vec![sid.clone()]);
    release.set_ciaddr(Ipv4Addr::new(10, 0, 0, 150));
    seeds.push(("release", release));
    let mut inform = request(0x1000_000e, mac(17), MessageType::Inform, dhclient_opts());
    inform.set_ciaddr(Ipv4Addr::new(10, 0, 0, 42));
    seeds.push(("inform", inform));
    let mut proxy = request(0x1000_000f, mac(18), MessageType::Request, bios());
    proxy.set_ciaddr(Ipv4Addr::new(192, 168, 1, 50));
    seeds.push(("pxe-request-port-4011", proxy));
    let mut relayed = request(
        0x1000_0010,
        mac(21),
        MessageType::Discover,
        pxe_opts(7, "PXEClient:Arch:00007:UNDI:003016"),
    );
    relayed.set_giaddr(Ipv4Addr::new(10, 5, 0, 1)).set_hops(1);
    seeds.push(("relayed-pxe-discover", relayed));
    let mut broadcast = request(0x1000_0011, mac(22), MessageType::Discover, bios());
    broadcast.set_flags(Flags::default().set_broadcast()).set_secs(4);
    seeds.push(("pxe-bios-discover-broadcast", broadcast));
    for (name, m) in seeds {
        c.put("dhcp_packet", name, m.to_vec().expect("a seed encodes"));
    }
}

/// An RRQ/WRQ datagram (RFC 1350) with options (RFC 2347).
fn tftp_req(opcode: u16, name: &str, mode: &str, opts: &[(&str, &str)]) -> Vec<u8> {
    let mut b = opcode.to_be_bytes().to_vec();
    for s in [name, mode].into_iter().chain(opts.iter().flat_map(|(k, v)| [*k, *v])) {
        b.extend(s.as_bytes());
        b.push(0);
    }
    b
}

fn tftp(c: &Corpus) {
    let seeds: [(&str, Vec<u8>); 13] = [
        (
            "pxe-rom-tsize",
            tftp_req(1, "undionly.kpxe", "octet", &[("tsize", "0")]),
        ),
        (
            "pxe-rom-blksize",
            tftp_req(1, "undionly.kpxe", "octet", &[("blksize", "1456")]),
        ),
        (
            "uefi-windowsize",
            tftp_req(
                1,
                "ipxe.efi",
                "octet",
                &[("blksize", "1468"), ("tsize", "0"), ("windowsize", "4")],
            ),
        ),
        (
            "ipxe-blksize-tsize",
            tftp_req(1, "x86/snponly.efi", "octet", &[("blksize", "1432"), ("tsize", "0")]),
        ),
        ("tftp-hpa-netascii", tftp_req(1, "default.kpxe", "netascii", &[])),
        (
            "timeout-option",
            tftp_req(1, "ipxe.efi", "OCTET", &[("timeout", "3"), ("BLKSIZE", "512")]),
        ),
        (
            "write-request",
            tftp_req(2, "upload.bin", "octet", &[("tsize", "1024")]),
        ),
        ("dot-dot", tftp_req(1, "../etc/passwd", "octet", &[])),
        ("symlink-out", tftp_req(1, "etc/passwd", "octet", &[])),
        ("absolute", tftp_req(1, "/undionly.kpxe", "octet", &[])),
        ("directory", tftp_req(1, "x86", "octet", &[])),
        ("encoded-traversal", tftp_req(1, "..%2fetc%2fpasswd", "octet", &[])),
        (
            "missing",
            tftp_req(1, "pxelinux.cfg/01-52-54-00-12-34-01", "octet", &[("tsize", "0")]),
        ),
    ];
    for (name, b) in seeds {
        c.put("tftp_request", name, b);
    }
}

fn ipmi(c: &Corpus) {
    // The selector byte: bit 0 picks suite 17 over suite 3, bit 1 says the session has an integrity algorithm.
    let presession = |suite17: bool| u8::from(suite17);
    let auth_caps = Response {
        netfn: 0x07,
        cmd: 0x38,
        rq_seq: 0,
        completion_code: 0,
        data: vec![0x01, 0x80, 0x14, 0x03, 0x02, 0x00, 0x00, 0x00],
    };
    let with_selector = |s: u8, datagram: Vec<u8>| [vec![s], datagram].concat();
    c.put(
        "ipmi_packet",
        "v15-channel-auth-capabilities",
        with_selector(0, packet::encode_v15(&auth_caps.encode())),
    );
    let cipher_suites = Response {
        netfn: 0x07,
        cmd: 0x54,
        rq_seq: 1,
        completion_code: 0,
        data: vec![
            0x01, 0xc0, 0x03, 0x01, 0x41, 0x81, 0xc0, 0x11, 0x03, 0x44, 0x81, 0xc1, 0x50, 0x01, 0x02, 0x03,
        ],
    };
    c.put(
        "ipmi_packet",
        "v15-cipher-suites",
        with_selector(0, packet::encode_v15(&cipher_suites.encode())),
    );
    let open = OpenSessionResponse {
        tag: 0,
        status: 0,
        privilege: 4,
        console_session_id: 0xa0a1_a2a3,
        accepted: Some(OpenSessionAccepted {
            bmc_session_id: 0x0200_0001,
            auth_algorithm: 3,
            integrity_algorithm: 4,
            confidentiality_algorithm: 1,
        }),
    };
    let setup = |pt: u8, payload: Vec<u8>| packet::encode_v20(pt, false, 0, 0, &payload, None);
    c.put(
        "ipmi_packet",
        "open-session-response",
        with_selector(
            presession(true),
            setup(payload_type::OPEN_SESSION_RESPONSE, open.encode()),
        ),
    );
    c.put(
        "ipmi_packet",
        "open-session-refused",
        with_selector(
            presession(true),
            setup(payload_type::OPEN_SESSION_RESPONSE, vec![0x00, 0x11]),
        ),
    );
    let rakp2 = Rakp2 {
        tag: 1,
        status: 0,
        console_session_id: 0xa0a1_a2a3,
        bmc_random: [0x3c; 16],
        bmc_guid: *b"kiln-fuzz-guid-1",
        auth_code: vec![0xd4; 32],
    };
    c.put(
        "ipmi_packet",
        "rakp2",
        with_selector(presession(true), setup(payload_type::RAKP2, rakp2.encode())),
    );
    c.put(
        "ipmi_packet",
        "rakp2-unauthorized-name",
        with_selector(presession(false), setup(payload_type::RAKP2, vec![0x01, 0x0d])),
    );
    let rakp4 = Rakp4 {
        tag: 2,
        status: 0,
        console_session_id: 0xa0a1_a2a3,
        icv: vec![0x9e; 16],
    };
    c.put(
        "ipmi_packet",
        "rakp4",
        with_selector(presession(true), setup(payload_type::RAKP4, rakp4.encode())),
    );
    // In-session answers, encrypted and authenticated with keys from the check's fixed SIK.
    let answers = [
        ("chassis-status", 0x01u8, 0x01u8, vec![0x01, 0x00, 0x00, 0x70]),
        (
            "boot-options",
            0x01,
            0x09,
            vec![0x01, 0x05, 0xa0, 0x04, 0x00, 0x00, 0x00],
        ),
        (
            "device-id",
            0x07,
            0x01,
            vec![0x20, 0x81, 0x02, 0x11, 0x02, 0xbf, 0xa2, 0x02, 0x00, 0x34, 0x12],
        ),
        ("system-guid", 0x07, 0x37, (0u8..16).collect()),
    ];
    for (suite, selector, tag) in [
        (CipherSuite::Suite17, 3u8, "suite17"),
        (CipherSuite::Suite3, 2, "suite3"),
    ] {
        let keys = SessionKeys::derive(suite, &FUZZ_SIK);
        for (i, (name, netfn, cmd, data)) in answers.iter().enumerate() {
            let rsp = Response {
                netfn: *netfn,
                cmd: *cmd,
                rq_seq: i as u8 + 1,
                completion_code: 0,
                data: data.clone(),
            };
            let payload = keys.encrypt([0x42 ^ i as u8; 16], &rsp.encode());
            let code = |d: &[u8]| keys.integrity_code(d);
            let datagram = packet::encode_v20(
                payload_type::IPMI,
                true,
                0xa0a1_a2a3,
                i as u32 + 1,
                &payload,
                Some(&code),
            );
            c.put(
                "ipmi_packet",
                &format!("{tag}-{name}"),
                with_selector(selector, datagram),
            );
        }
    }
}

fn redfish(c: &Corpus) {
    let seeds: &[(&str, &str)] = &[
        (
            "service-root",
            r#"{"@odata.id": "/redfish/v1/", "RedfishVersion": "1.11.0", "Vendor": "Dell", "Product": "Integrated Dell Remote Access Controller",
  "Systems": {"@odata.id": "/redfish/v1/Systems"}, "Managers": {"@odata.id": "/redfish/v1/Managers"},
  "SessionService": {"@odata.id": "/redfish/v1/SessionService"}, "Links": {"Sessions": {"@odata.id": "/redfish/v1/SessionService/Sessions"}}}"#,
        ),
        (
            "session-service",
            r#"{"ServiceEnabled": true, "SessionTimeout": 1800, "Sessions": {"@odata.id": "/redfish/v1/SessionService/Sessions"}}"#,
        ),
        (
            "session-created",
            r#"{"@odata.id": "/redfish/v1/SessionService/Sessions/12", "Id": "12", "UserName": "admin"}"#,
        ),
        (
            "systems",
            r#"{"Members@odata.count": 1, "Members": [{"@odata.id": "/redfish/v1/Systems/System.Embedded.1"}]}"#,
        ),
        (
            "system-idrac",
            r##"{"@odata.id": "/redfish/v1/Systems/System.Embedded.1", "@odata.etag": "W/\"gen-12\"", "Id": "System.Embedded.1",
  "Name": "System", "UUID": "4c4c4544-0042-3510-8052-b4c04f4e4d32", "Manufacturer": "Dell Inc.", "Model": "PowerEdge R650",
  "SerialNumber": "CN7016319F00PC", "PowerState": "On",
  "Boot": {"BootSourceOverrideEnabled": "Disabled", "BootSourceOverrideMode": "UEFI", "BootSourceOverrideTarget": "None",
    "BootSourceOverrideTarget@Redfish.AllowableValues": ["None", "Pxe", "Floppy", "Cd", "Hdd", "BiosSetup", "Utilities", "UefiTarget", "SDCard", "UefiHttp"]},
  "ProcessorSummary": {"Count": 2, "Model": "Intel(R) Xeon(R) Gold 6338 CPU @ 2.00GHz"},
  "MemorySummary": {"TotalSystemMemoryGiB": 256.0},
  "Actions": {"#ComputerSystem.Reset": {"target": "/redfish/v1/Systems/System.Embedded.1/Actions/ComputerSystem.Reset",
    "ResetType@Redfish.AllowableValues": ["On", "ForceOff", "ForceRestart", "GracefulRestart", "GracefulShutdown", "PushPowerButton", "Nmi", "PowerCycle"]}},
  "EthernetInterfaces": {"@odata.id": "/redfish/v1/Systems/System.Embedded.1/EthernetInterfaces"},
  "Storage": {"@odata.id": "/redfish/v1/Systems/System.Embedded.1/Storage"},
  "Processors": {"@odata.id": "/redfish/v1/Systems/System.Embedded.1/Processors"},
  "Links": {"ManagedBy": [{"@odata.id": "/redfish/v1/Managers/iDRAC.Embedded.1"}]}, "Oem": {"Dell": {}}}"##,
        ),
        (
            "system-sushy",
            r##"{"@odata.id": "/redfish/v1/Systems/1", "Id": "1", "Name": "mock", "UUID": "00000000-0000-0000-0000-000000000001",
  "PowerState": "Off", "Boot": {"BootSourceOverrideTarget": "Pxe", "BootSourceOverrideEnabled": "Once", "BootSourceOverrideMode": "UEFI"},
  "Actions": {"#ComputerSystem.Reset": {"target": "/redfish/v1/Systems/1/Actions/ComputerSystem.Reset", "@Redfish.ActionInfo": "/redfish/v1/Systems/1/ResetActionInfo"}},
  "VirtualMedia": {"@odata.id": "/redfish/v1/Systems/1/VirtualMedia"}, "SimpleStorage": {"@odata.id": "/redfish/v1/Systems/1/SimpleStorage"},
  "UUID": null, "MemorySummary": {"TotalSystemMemoryGiB": 1.5}}"##,
        ),
        (
            "reset-action-info",
            r#"{"@odata.id": "/redfish/v1/Systems/1/ResetActionInfo", "Parameters": [{"Name": "ResetType", "Required": true, "DataType": "String",
  "AllowableValues": ["On", "ForceOff", "GracefulShutdown", "GracefulRestart", "ForceRestart", "Nmi", "ForceOn"]}]}"#,
        ),
        (
            "manager",
            r#"{"@odata.id": "/redfish/v1/Managers/iDRAC.Embedded.1", "Id": "iDRAC.Embedded.1", "VirtualMedia": {"@odata.id": "/redfish/v1/Managers/iDRAC.Embedded.1/VirtualMedia"}}"#,
        ),
        (
            "virtual-media-cd",
            r##"{"@odata.id": "/redfish/v1/Managers/1/VirtualMedia/CD1", "Id": "CD1", "MediaTypes": ["CD", "DVD"], "Image": "http://10.0.0.1:8080/boot/agent.iso",
  "Inserted": true, "WriteProtected": true,
  "Actions": {"#VirtualMedia.InsertMedia": {"target": "/redfish/v1/Managers/1/VirtualMedia/CD1/Actions/VirtualMedia.InsertMedia"},
    "#VirtualMedia.EjectMedia": {"target": "https://bmc.example:8443/redfish/v1/Managers/1/VirtualMedia/CD1/Actions/VirtualMedia.EjectMedia"}}}"##,
        ),
        (
            "virtual-media-floppy",
            r#"{"@odata.id": "/redfish/v1/Managers/1/VirtualMedia/Floppy1", "MediaTypes": ["Floppy", "USBStick"], "Image": "", "Inserted": null}"#,
        ),
        (
            "ethernet-interface",
            r#"{"@odata.id": "/redfish/v1/Systems/1/EthernetInterfaces/NIC.Integrated.1-1-1", "MACAddress": "B4:96:91:3A:0C:10", "PermanentMACAddress": "b4:96:91:3a:0c:10"}"#,
        ),
        (
            "processor",
            r#"{"Id": "CPU.Socket.1", "Model": "Intel(R) Xeon(R) Gold 6338 CPU @ 2.00GHz", "ProcessorType": "CPU"}"#,
        ),
        (
            "storage",
            r#"{"Id": "RAID.Integrated.1-1", "Drives": [{"@odata.id": "/redfish/v1/Systems/System.Embedded.1/Storage/RAID.Integrated.1-1/Drives/Disk.Bay.0"}]}"#,
        ),
        (
            "drive",
            r#"{"Id": "Disk.Bay.0", "Name": "Solid State Disk 0:1:0", "CapacityBytes": 479559942144, "MediaType": "SSD"}"#,
        ),
        (
            "simple-storage",
            r#"{"Id": "1", "Devices": [{"Name": "vda", "CapacityBytes": 10737418240}, {"Name": "cdrom", "CapacityBytes": null}]}"#,
        ),
        (
            "task-exception",
            r#"{"TaskState": "Exception", "TaskStatus": "Critical", "Messages": [{"MessageId": "IDRAC.2.8.SYS051", "Message": "Unable to mount the image."}]}"#,
        ),
        (
            "error-body",
            r#"{"error": {"code": "Base.1.8.GeneralError", "message": "A general error has occurred. See ExtendedInfo for more information.",
  "@Message.ExtendedInfo": [{"MessageId": "Base.1.8.PropertyValueNotInList", "Message": "The value Floppy for the property BootSourceOverrideTarget is not in the list of acceptable values."},
    {"MessageId": "Base.1.8.Success"}]}}"#,
        ),
        (
            "location-absolute-same-origin",
            "https://bmc.example:8443/redfish/v1/TaskService/Tasks/JID_123",
        ),
        (
            "location-other-origin",
            "https://attacker.example/redfish/v1/SessionService/Sessions/1",
        ),
        ("location-protocol-relative", "//attacker.example/redfish/v1/x"),
    ];
    for (name, body) in seeds {
        c.put("redfish_body", name, body);
    }
}

fn addresses(c: &Corpus) {
    let seeds = [
        "idrac-virtualmedia://1.2.3.4/redfish/v1/Systems/System.Embedded.1",
        "ipmi://[fd00::1]:623?privilegelevel=OPERATOR",
        "ipmi://192.168.111.1:6230",
        "ipmi:bmc.rack1.example",
        "192.168.122.1:6233",
        "[fe80::fc33:62ff:fe83:8a76]:6233",
        "redfish+http://192.168.111.1:8000/redfish/v1/Systems/4a8ea2b5-1d2c-4b44-9a7a-6d5d7c6a8f1e",
        "redfish://bmc.example/redfish/v1/Systems/1",
        "redfish-virtualmedia+https://[fd00::5]:8443/redfish/v1/Systems/abc",
        "redfish-uefihttp://bmc",
        "ilo5-redfish://ilo.example/redfish/v1/Systems/1/",
        "ilo5-virtualmedia://10.0.0.7",
        "idrac-redfish+http://idrac.example:8080",
        "REDFISH+HTTPS://BMC:443/redfish/v1/",
        "ipmi://bmc?privilegelevel=administrator",
        "redfish://admin:hunter2@bmc/redfish/v1/Systems/1",
        "libvirt://192.168.122.1/",
        "idrac://10.0.0.1",
        "ipmi://bmc:70000",
        "redfish://bmc/redfish/v1/../Systems/1",
        "ipmi://fd00::1",
        "  ipmi://bmc:623  ",
    ];
    for (i, s) in seeds.iter().enumerate() {
        c.put("bmc_address", &format!("address-{i:02}"), s);
    }
}

/// Test vectors of the qcow2 layout (QEMU docs/interop/qcow2.txt) with 512-byte clusters, small enough to mutate.
fn qcow2_header(version: u32, size: u64, l1_size: u32, l1: u64, refcount: u64) -> Vec<u8> {
    let mut h = vec![0u8; 512];
    h[..4].copy_from_slice(b"QFI\xfb");
    h[4..8].copy_from_slice(&version.to_be_bytes());
    h[20..24].copy_from_slice(&9u32.to_be_bytes());
    h[24..32].copy_from_slice(&size.to_be_bytes());
    h[36..40].copy_from_slice(&l1_size.to_be_bytes());
    h[40..48].copy_from_slice(&l1.to_be_bytes());
    h[48..56].copy_from_slice(&refcount.to_be_bytes());
    h[56..60].copy_from_slice(&1u32.to_be_bytes());
    if version == 3 {
        h[100..104].copy_from_slice(&112u32.to_be_bytes());
    }
    h
}

fn qcow2(c: &Corpus) {
    let cs = 512usize;
    let copied = 1u64 << 63;
    for (name, version, data_first) in [
        ("handmade-v3-tables-first", 3, false),
        ("handmade-v2-tables-first", 2, false),
        ("handmade-v3-data-first", 3, true),
    ] {
        // Clusters: 0 header, 1 refcount table, then L1, L2 and two data clusters in either order.
        let (l1, l2, d0, d1) = if data_first { (5, 4, 2, 3) } else { (2, 3, 4, 5) };
        let mut img = vec![0u8; 6 * cs];
        img[..cs].copy_from_slice(&qcow2_header(version, 32 * 1024, 1, (l1 * cs) as u64, cs as u64));
        img[l1 * cs..l1 * cs + 8].copy_from_slice(&((l2 * cs) as u64 | copied).to_be_bytes());
        img[l2 * cs..l2 * cs + 8].copy_from_slice(&((d0 * cs) as u64 | copied).to_be_bytes());
        img[l2 * cs + 24..l2 * cs + 32].copy_from_slice(&((d1 * cs) as u64 | copied).to_be_bytes());
        if version == 3 {
            // A zero cluster (bit 0) in the middle of the disk.
            img[l2 * cs + 40..l2 * cs + 48].copy_from_slice(&1u64.to_be_bytes());
        }
        img[d0 * cs..(d0 + 1) * cs].fill(0xa5);
        img[d1 * cs..(d1 + 1) * cs].copy_from_slice(&[b"kiln".as_slice(); 128].concat());
        c.put("qcow2_image", name, img);
    }
    c.put("qcow2_image", "header-only-v3", qcow2_header(3, 0, 0, 0, 0));
}

fn checksums(c: &Corpus) {
    let a = "4f53cda18c2baa0c0354bb5f9a3ecbe5ed12ab4d8e11ba873c2f11161202b945";
    let b = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
    let seeds = [
        ("inline-sha256", format!("sha256:{a}\n")),
        (
            "bare-sha512",
            format!(
                "{}\n",
                "cf83e1357eefb8bdf1542850d66d8007d620e4050b5715dc83f4a921d36ce9ce47d0d13c5d85f2b0ff8318d2877eec2f63b931bd47417a81a538327af927da3e"
            ),
        ),
        ("md5-needs-type", "md5:d41d8cd98f00b204e9800998ecf8427e\n".to_string()),
        (
            "gnu-sums",
            format!(
                "https://cloud-images.ubuntu.com/noble/current/SHA256SUMS\n{a} *ubuntu-24.04-server-cloudimg-amd64.img\n{b}  ubuntu-24.04-server-cloudimg-arm64.img\n"
            ),
        ),
        (
            "bsd-sums",
            format!(
                "http://172.22.0.1/images/CHECKSUM\n# Fedora-Cloud-Base\nSHA256 (disk.qcow2) = {}\nSHA256 (other.raw) = {b}\n",
                a.to_uppercase()
            ),
        ),
        (
            "single-digest-file",
            format!("file:///srv/images/disk.qcow2.sha256sum\n{a}\n"),
        ),
        (
            "image-url-with-query",
            format!("http://10.0.0.1/disk.qcow2?token=x#frag\n{a}  images/disk.qcow2\n"),
        ),
        (
            "unknown-prefix",
            "sha1:da39a3ee5e6b4b0d3255bfef95601890afd80709\n".to_string(),
        ),
    ];
    for (name, s) in seeds {
        c.put("image_checksum", name, s);
    }
}

/// `oci://` references in the forms Ironic's documentation shows (tag, digest, none), each with a pull secret as
/// Kubernetes stores it (`.dockerconfigjson`, the older `.dockercfg` map, user name and password fields).
fn oci_references(c: &Corpus) {
    let digest = "0a175cf13c651f44750d6a5cf0cf2f75d933bd591315d77e19105e5446b73a86";
    // base64 of `puller:s3cr3t`
    let auth = "cHVsbGVyOnMzY3IzdA==";
    let seeds = [
        (
            "tag-dockerconfigjson",
            format!(
                "oci://registry.example.com:5000/images/debian:12\n{{\"auths\":{{\"registry.example.com:5000\":{{\"auth\":\"{auth}\"}}}}}}"
            ),
        ),
        (
            "digest-dockercfg",
            format!("oci://quay.io/metal3/ubuntu@sha256:{digest}\n{{\"https://quay.io/v1/\":{{\"auth\":\"{auth}\"}}}}"),
        ),
        (
            "tag-and-digest-fields",
            format!(
                "oci://[fd00::1]:5000/a/b/c:raw@sha256:{digest}\n{{\"auths\":{{\"[fd00::1]:5000\":{{\"username\":\"u\",\"password\":\"p\"}}}}}}"
            ),
        ),
        ("no-tag", "oci://localhost/disk\n".to_string()),
        ("userinfo", "oci://u:p@h/a\n{}".to_string()),
        ("upper-case", "oci://h/Disk:1\n{\"auths\": 7}".to_string()),
    ];
    for (name, s) in seeds {
        c.put("oci_reference", name, s);
    }
}

fn agent(c: &Corpus) {
    let seeds: &[(&str, &str)] = &[
        ("heartbeat-idle", r#"{"agent_version": "0.1.0"}"#),
        ("heartbeat-busy", r#"{"agent_version": "0.1.0", "busy_with": 7}"#),
        (
            "inventory",
            r#"{"system": {"vendor": "QEMU", "product": "Standard PC (Q35 + ICH9, 2009)", "serial": "", "uuid": "8e4a5f1c-6b0e-4c3a-9a3d-0c9b7e0f1a2b"},
  "cpu": {"model": "AMD EPYC 7763 64-Core Processor", "count": 4, "architecture": "x86_64"}, "memory_mib": 8192,
  "disks": [{"name": "/dev/vda", "by_path": "/dev/disk/by-path/pci-0000:00:04.0", "size_bytes": 21474836480, "model": "", "vendor": "0x1af4",
    "serial": "kiln-root", "wwn": "", "hctl": "", "rotational": true, "removable": false},
    {"name": "/dev/sr0", "size_bytes": 1073741312, "model": "QEMU DVD-ROM", "rotational": true, "removable": true}],
  "nics": [{"name": "enp1s0", "mac": "52:54:00:12:34:01", "driver": "virtio_net", "link_up": true, "speed_mbps": null, "ipv4": ["10.0.0.150"]}],
  "boot_mode": "uefi"}"#,
        ),
        (
            "progress",
            r#"{"command_id": 7, "phase": "writing", "bytes_read": 104857600, "bytes_written": 73400320, "total_bytes": 2147483648}"#,
        ),
        (
            "result-succeeded",
            r#"{"command_id": 7, "outcome": "succeeded", "detail": {"disk": "/dev/vda", "digest": "sha256:4f53cda18c2baa0c0354bb5f9a3ecbe5ed12ab4d8e11ba873c2f11161202b945", "seconds": 41.5}}"#,
        ),
        (
            "result-failed",
            r#"{"command_id": 8, "outcome": "failed", "kind": "checksum_mismatch", "message": "expected sha256:4f53..., got sha256:e3b0..."}"#,
        ),
        (
            "reply-write-image",
            r#"{"command": {"id": 7, "command": "write_image", "image": {"url": "http://10.0.0.1:8080/images/os.qcow2",
  "checksum": "sha256:4f53cda18c2baa0c0354bb5f9a3ecbe5ed12ab4d8e11ba873c2f11161202b945", "checksum_type": "auto", "format": "qcow2"},
  "root_device_hints": {"minSizeGigabytes": 10, "rotational": false},
  "config_drive": {"meta_data": {"uuid": "8e4a5f1c", "hostname": "node-0", "public_keys": {"0": "ssh-ed25519 AAAA kiln"}}, "user_data": "I2Nsb3VkLWNvbmZpZwo=", "network_data": null}},
  "interval_secs": 5}"#,
        ),
        ("reply-idle", r#"{"interval_secs": 10}"#),
        (
            "reply-erase",
            r#"{"command": {"id": 9, "command": "erase_metadata"}, "interval_secs": 5}"#,
        ),
        (
            "discover",
            r#"{"boot_mac": "52:54:00:12:34:01", "macs": ["52:54:00:12:34:01", "52:54:00:12:34:02"], "bmc_addresses": ["10.0.0.23", "fd00::23"], "agent_version": "0.1.0"}"#,
        ),
        ("discover-reply", r#"{"host": "rack1-node-a", "token": "3f2a9c"}"#),
        ("not-json", "agent_version=0.1.0"),
    ];
    for (name, body) in seeds {
        c.put("agent_api", name, body);
    }
}

fn manifests(c: &Corpus) {
    let host = "apiVersion: v1
kind: Secret
metadata:
  name: node-0-bmc-secret
type: Opaque
data:
  username: YWRtaW4=
  password: cGFzc3dvcmQK
---
apiVersion: metal3.io/v1alpha1
kind: BareMetalHost
metadata:
  name: node-0
  namespace: metal3
  labels:
    rack: r1
  annotations:
    inspect.metal3.io: disabled
spec:
  online: true
  bootMACAddress: 00:5c:52:31:3a:9c
  bootMode: UEFI
  bmc:
    address: redfish+http://192.168.111.1:8000/redfish/v1/Systems/1
    credentialsName: node-0-bmc-secret
    disableCertificateVerification: true
  rootDeviceHints:
    deviceName: /dev/sda
    minSizeGigabytes: 20
  automatedCleaningMode: disabled
  image:
    url: http://172.22.0.1/images/os.qcow2
    checksum: 4f53cda18c2baa0c0354bb5f9a3ecbe5ed12ab4d8e11ba873c2f11161202b945
    checksumType: sha256
    format: qcow2
  userData:
    name: node-0-user-data
  networkData:
    name: node-0-network-data
---
apiVersion: v1
kind: Secret
metadata:
  name: node-0-user-data
  namespace: metal3
stringData:
  userData: |
    #cloud-config
    ssh_authorized_keys: [ssh-ed25519 AAAA kiln]
---
apiVersion: v1
kind: Secret
metadata:
  name: node-0-network-data
  namespace: metal3
stringData:
  networkData: |
    links:
      - id: enp1s0
        type: phy
        ethernet_mac_address: 00:5c:52:31:3a:9c
    networks:
      - id: provisioning
        type: ipv4_dhcp
        link: enp1s0
";
    let secret_ns = host.replace(
        "name: node-0-bmc-secret\ntype",
        "name: node-0-bmc-secret\n  namespace: metal3\ntype",
    );
    let seeds = [
        ("metal3-host-with-secrets", secret_ns),
        (
            "externally-provisioned",
            "apiVersion: metal3.io/v1alpha1\nkind: BareMetalHost\nmetadata:\n  name: node-1\nspec:\n  bootMACAddress: 00:5c:52:31:3a:9d\n  externallyProvisioned: true\n  online: false\n".into(),
        ),
        (
            "ipmi-host",
            "apiVersion: v1\nkind: Secret\nmetadata:\n  name: bmc\nstringData:\n  username: ADMIN\n  password: \" ADMIN \"\n---\napiVersion: metal3.io/v1alpha1\nkind: BareMetalHost\nmetadata:\n  name: node-2\nspec:\n  architecture: x86_64\n  bmc:\n    address: ipmi://[fd00::1]:623?privilegelevel=OPERATOR\n    credentialsName: bmc\n  bootMode: legacy\n".into(),
        ),
        (
            "refused-raid",
            "apiVersion: metal3.io/v1alpha1\nkind: BareMetalHost\nmetadata:\n  name: node-x\nspec:\n  raid:\n    hardwareRAIDVolumes: []\n    softwareRAIDVolumes:\n    - level: \"1\"\n".into(),
        ),
        (
            "duplicate-mac",
            "kind: BareMetalHost\nmetadata: {name: a}\nspec: {bootMACAddress: 00:5C:52:31:3A:9C}\n---\nkind: BareMetalHost\nmetadata: {name: b}\nspec: {bootMACAddress: 00:5c:52:31:3a:9c}\n".into(),
        ),
        ("missing-secret", host.split("---").nth(1).unwrap_or_default().to_owned()),
    ];
    for (name, s) in seeds {
        c.put("import_manifest", name, s);
    }
}

fn main() {
    let root = std::env::args()
        .nth(1)
        .map_or_else(|| PathBuf::from("corpus"), PathBuf::from);
    let c = Corpus { root };
    dhcp(&c);
    tftp(&c);
    ipmi(&c);
    redfish(&c);
    addresses(&c);
    qcow2(&c);
    checksums(&c);
    oci_references(&c);
    agent(&c);
    manifests(&c);
    let n: usize = std::fs::read_dir(&c.root)
        .map(|d| {
            d.flatten()
                .map(|e| std::fs::read_dir(e.path()).map_or(0, Iterator::count))
                .sum()
        })
        .unwrap_or(0);
    println!("{n} seed files under {}", Path::new(&c.root).display());
}

//! The `kiln` binary as an operator uses it: `kiln serve` as a real process (config file, data directory, admin
//! token file), the `kiln host` CLI against it, a host on a real Redfish peer (sushy-emulator), `kill -9` and a
//! restart on the same data directory, and a graceful SIGTERM.

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use kiln_tests::serve::{KilnServe, ok};
use kiln_tests::sushy_loopback::{NODE0, NODE7, Sushy};
use serde_json::Value;

fn serve(data: &Path, port: u16) -> KilnServe {
    KilnServe::start(
        Path::new(env!("CARGO_BIN_EXE_kiln")),
        data,
        port,
        "heartbeat_secs = 1\n[policy]\nidle_poll_secs = 1\nbusy_poll_secs = 1\n",
        &[],
    )
}

fn kiln(data: &Path, port: u16, args: &[&str]) -> Output {
    kiln_tests::serve::cli(Path::new(env!("CARGO_BIN_EXE_kiln")), data, port, args)
}

fn wait_available(data: &Path, port: u16) -> Value {
    for _ in 0..200 {
        let hosts: Value = serde_json::from_str(&ok(kiln(data, port, &["host", "list", "-o", "json"]))).unwrap();
        if hosts[0]["state"] == "available" && hosts[0]["power"] == "off" {
            return hosts;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("host never became available");
}

#[test]
fn operator_enrolls_with_the_cli_and_kiln_survives_kill_9() {
    let sushy = Sushy::start(("admin", "cli-Redfish-pw"));
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut server = serve(&data, port);
    let pwfile = tmp.path().join("pw");
    std::fs::write(&pwfile, "cli-Redfish-pw\n").unwrap();
    let addr = sushy.address_of(&NODE0);
    let pw = pwfile.to_str().unwrap();

    let out = ok(kiln(
        &data,
        port,
        &[
            "host",
            "enroll",
            "node-0",
            "--bmc",
            &addr,
            "--username",
            "admin",
            "--password-file",
            pw,
            "--boot-mac",
            "52:54:00:aa:00:01",
            "--label",
            "rack=r1",
            "--no-inspect",
            "-o",
            "json",
        ],
    ));
    let h: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(h["name"], "node-0");
    assert!(!out.contains("cli-Redfish-pw"));
    wait_available(&data, port);

    // Bad input is refused with the field named and a non-zero exit.
    let bad = kiln(
        &data,
        port,
        &[
            "host",
            "enroll",
            "node-9",
            "--bmc",
            "http://10.0.0.1",
            "--username",
            "admin",
            "--password-file",
            pw,
        ],
    );
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("bmc.address"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );
    assert_eq!(
        ok(kiln(&data, port, &["host", "list", "-l", "rack=r2", "-o", "json"])).trim(),
        "[]"
    );
    // A second host on the BMC of the first would drive the same machine: refused, naming the host that has it.
    let twice = kiln(
        &data,
        port,
        &[
            "host",
            "enroll",
            "node-8",
            "--bmc",
            &addr,
            "--username",
            "admin",
            "--password-file",
            pw,
        ],
    );
    assert!(!twice.status.success());
    let msg = String::from_utf8_lossy(&twice.stderr);
    assert!(msg.contains("bmc.address") && msg.contains("node-0"), "{msg}");
    let table = ok(kiln(&data, port, &["host", "show", "node-0"]));
    assert!(
        table.contains("PHASE") && table.contains("registering") && table.contains("available"),
        "{table}"
    );
    let yaml = ok(kiln(&data, port, &["host", "list", "-o", "yaml"]));
    assert!(yaml.contains("name: node-0"), "{yaml}");

    // A Metal3 BareMetalHost manifest with its credential Secret enrolls too.
    let manifest = tmp.path().join("bmh.yaml");
    std::fs::write(
        &manifest,
        format!(
            "apiVersion: v1\nkind: Secret\nmetadata:\n  name: node-7-bmc\nstringData:\n  username: admin\n  password: cli-Redfish-pw\n---\n\
             apiVersion: metal3.io/v1alpha1\nkind: BareMetalHost\nmetadata:\n  name: node-7\n  labels:\n    rack: r7\nspec:\n  online: true\n  \
             bootMACAddress: 52:54:00:aa:00:07\n  externallyProvisioned: true\n  bmc:\n    address: {addr7}\n    credentialsName: node-7-bmc\n",
            addr7 = sushy.address_of(&NODE7)
        ),
    )
    .unwrap();
    let out = ok(kiln(&data, port, &["import", manifest.to_str().unwrap()]));
    assert!(out.contains("node-7: enrolled"), "{out}");
    let imported: Value =
        serde_json::from_str(&ok(kiln(&data, port, &["host", "list", "-l", "rack=r7", "-o", "json"]))).unwrap();
    assert_eq!(imported[0]["name"], "node-7");
    assert_eq!(imported[0]["options"]["externally_provisioned"], true);
    ok(kiln(&data, port, &["host", "delete", "node-7"]));

    // kill -9 and restart on the same data directory: the host, its key-encrypted credentials and its history remain.
    Command::new("kill")
        .args(["-9", &server.0.id().to_string()])
        .status()
        .unwrap();
    let _ = server.0.wait();
    server = serve(&data, port);
    ok(kiln(&data, port, &["host", "power", "node-0", "on"]));
    for _ in 0..300 {
        let hosts: Value = serde_json::from_str(&ok(kiln(&data, port, &["host", "list", "-o", "json"]))).unwrap();
        if hosts[0]["power"] == "on" {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let hosts: Value = serde_json::from_str(&ok(kiln(&data, port, &["host", "list", "-o", "json"]))).unwrap();
    assert_eq!(
        hosts[0]["power"], "on",
        "power request after restart never reached the BMC: {hosts}"
    );

    // Graceful shutdown on SIGTERM; the log holds no password.
    Command::new("kill")
        .args(["-TERM", &server.0.id().to_string()])
        .status()
        .unwrap();
    let status = server.0.wait().unwrap();
    assert!(status.success(), "kiln serve exited with {status}");
    let log = std::fs::read_to_string(data.with_extension("log")).unwrap();
    assert!(log.contains("kiln stopped"), "{log}");
    assert!(!log.contains("cli-Redfish-pw"), "password in kiln's log");
    assert!(
        !log.contains('\u{1b}'),
        "colour escape codes in a log written to a file"
    );
    let mode = |p: &Path| std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(p).unwrap().permissions()) & 0o777;
    assert_eq!(mode(&data), 0o700, "the data directory is private");
    for f in ["admin.token", "secret.key", "kiln.db", "kiln.db-wal", "kiln.db-shm"] {
        if data.join(f).exists() {
            assert_eq!(mode(&data.join(f)), 0o600, "{f}");
        }
    }
    // A secret file others may read is refused at start, with the fix in the message.
    std::fs::set_permissions(
        data.join("admin.token"),
        std::os::unix::fs::PermissionsExt::from_mode(0o644),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&data)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("chmod 600"), "{err}");
}

/// The CLI's rough edges an operator meets first: an error is one line even with `RUST_BACKTRACE=1` in the
/// environment, and `kiln bmc`'s connection options are accepted after the subcommand too (against sushy-emulator).
#[test]
fn cli_errors_are_one_line_and_bmc_options_go_anywhere_on_the_line() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let port = kiln_tests::free_port();
    let _server = serve(&data, port);
    let out = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args([
            "host",
            "show",
            "nope",
            "--server",
            &format!("https://127.0.0.1:{port}"),
            "--token-file",
        ])
        .arg(data.join("admin.token"))
        .env("RUST_BACKTRACE", "1")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert_eq!(err.trim_end().lines().count(), 1, "one line, no backtrace: {err}");
    assert!(err.contains("nope"), "{err}");

    let sushy = Sushy::start(("admin", "cli-bmc-pw"));
    let pw = tmp.path().join("bmc-pw");
    std::fs::write(&pw, "cli-bmc-pw\n").unwrap();
    let address = sushy.address_of(&NODE0);
    let before: [&[&str]; 2] = [
        &[
            "bmc",
            "--bmc",
            &address,
            "--username",
            "admin",
            "--password-file",
            pw.to_str().unwrap(),
            "power",
            "status",
        ],
        &[
            "bmc",
            "power",
            "status",
            "--bmc",
            &address,
            "--username",
            "admin",
            "--password-file",
            pw.to_str().unwrap(),
        ],
    ];
    for args in before {
        let out = Command::new(env!("CARGO_BIN_EXE_kiln")).args(args).output().unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let said = String::from_utf8_lossy(&out.stdout).to_ascii_lowercase();
        assert!(said.contains("on") || said.contains("off"), "{args:?}: {said}");
    }
}

/// Shell completions and man pages come from the same command definitions as `--help`.
#[test]
fn completions_and_man_pages_cover_every_subcommand() {
    let exe = Path::new(env!("CARGO_BIN_EXE_kiln"));
    for shell in ["bash", "zsh", "fish"] {
        let out = std::process::Command::new(exe)
            .args(["completions", shell])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{shell}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let script = String::from_utf8_lossy(&out.stdout);
        assert!(
            script.contains("preprovisioning-network-data") && script.contains("enroll"),
            "{shell} completion lacks enroll's options"
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(exe)
        .args(["man", "--out-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    for page in [
        "kiln.1",
        "kiln-host.1",
        "kiln-host-enroll.1",
        "kiln-host-provision.1",
        "kiln-bmc.1",
        "kiln-serve.1",
    ] {
        let text = std::fs::read_to_string(dir.path().join(page)).unwrap_or_else(|e| panic!("{page}: {e}"));
        assert!(text.starts_with(".ie") || text.contains(".TH"), "{page} is not roff");
    }
    let provision = std::fs::read_to_string(dir.path().join("kiln-host-provision.1")).unwrap();
    assert!(provision.contains("live\\-iso"), "{provision}");
}

/// Images behind a private CA: `kiln ramdisk build --ca-file` appends the CA to the ramdisk's bundle
/// (`/etc/ssl/certs/ca-certificates.crt`), which the image client reads as the system's trust store (the standard
/// bundle path, or `SSL_CERT_FILE` where set). Here the agent's own download code (`kiln image write`) fetches from a
/// real TLS peer, `openssl s_server`, whose certificate a private CA signed: refused with a bundle without that CA,
/// written and verified with the bundle `ramdisk::ca_bundle` makes.
#[test]
fn an_image_behind_a_private_ca_is_fetched_with_the_ramdisk_bundle_and_refused_without() {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let dir = tempfile::tempdir().unwrap();
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["127.0.0.1".into()])
        .unwrap()
        .signed_by(&leaf_key, &Issuer::new(ca_params, ca_key))
        .unwrap();
    let served = dir.path().join("www");
    std::fs::create_dir_all(&served).unwrap();
    std::fs::write(served.join("leaf.pem"), leaf.pem()).unwrap();
    std::fs::write(served.join("leaf.key"), leaf_key.serialize_pem()).unwrap();
    let image: Vec<u8> = (0..3 << 20).map(|i: u32| (i % 251) as u8).collect();
    std::fs::write(served.join("disk.img"), &image).unwrap();
    let digest = ring::digest::digest(&ring::digest::SHA256, &image);
    let checksum = format!("sha256:{}", hex::encode(digest.as_ref()));

    let port = kiln_tests::free_port();
    let mut server = Command::new("openssl")
        .args(["s_server", "-quiet", "-WWW", "-accept", &format!("127.0.0.1:{port}")])
        .args(["-cert", "leaf.pem", "-key", "leaf.key"])
        .current_dir(&served)
        .stdin(std::process::Stdio::null())
        .spawn()
        .expect("openssl s_server");
    let url = format!("https://127.0.0.1:{port}/disk.img");
    let write = |bundle: &Path| {
        Command::new(env!("CARGO_BIN_EXE_kiln"))
            .args(["image", "write", &url])
            .arg(dir.path().join("out.img"))
            .args(["--checksum", &checksum, "--quiet"])
            .env("SSL_CERT_FILE", bundle)
            .env_remove("SSL_CERT_DIR")
            .output()
            .unwrap()
    };
    for _ in 0..100 {
        if kiln_tests::listening(port) {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    // A bundle with another CA only: the private CA is not trusted.
    let other = rcgen::generate_simple_self_signed(vec!["other.example".into()])
        .unwrap()
        .cert
        .pem();
    let without = dir.path().join("without.pem");
    std::fs::write(&without, &other).unwrap();
    let refused = write(&without);
    let said = String::from_utf8_lossy(&refused.stderr).to_string();
    assert!(!refused.status.success(), "{said}");
    assert!(said.to_lowercase().contains("certificate"), "{said}");
    // The ramdisk's bundle: the system's (here: the other CA) and the extra one.
    let bundle = kiln_images::ramdisk::ca_bundle(Some(other.into_bytes()), ca.pem().as_bytes()).unwrap();
    assert_eq!(kiln_images::ramdisk::count_ca_certificates(&bundle), Ok(2));
    let with = dir.path().join("with.pem");
    std::fs::write(&with, &bundle).unwrap();
    let written = write(&with);
    let _ = server.kill();
    let _ = server.wait();
    assert!(written.status.success(), "{}", String::from_utf8_lossy(&written.stderr));
    assert_eq!(std::fs::read(dir.path().join("out.img")).unwrap(), image);
}

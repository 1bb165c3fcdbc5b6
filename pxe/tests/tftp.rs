//! TFTP against real clients (tftp-hpa, curl) in a private netns, and an in-process RFC 7440 windowsize transfer
//! plus malformed datagrams on loopback.

mod lab;

use std::net::{SocketAddr, UdpSocket};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use kiln_pxe::PxeCounters;
use lab::{Lab, SERVER, run_with_timeout};
use serde_json::json;
use tokio_util::sync::CancellationToken;

fn make_root(dir: &Path) -> Vec<u8> {
    std::fs::create_dir_all(dir.join("sub")).unwrap();
    let big: Vec<u8> = (0..(1u32 << 20) + 123)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(dir.join("big.bin"), &big).unwrap();
    std::fs::write(dir.join("sub/inner.txt"), b"inner\n").unwrap();
    std::os::unix::fs::symlink("/etc/passwd", dir.join("escape")).unwrap();
    std::os::unix::fs::symlink("sub/inner.txt", dir.join("inside-link")).unwrap();
    big
}

#[test]
fn tftp_hpa_and_curl_fetch_and_traversal_is_refused() {
    let mut lab = Lab::new();
    lab.add_client("t0", "02:99:00:00:01:01");
    let out = std::process::Command::new("ip")
        .args(["-n", &lab.cli, "addr", "add", "10.99.0.20/24", "dev", "t0"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let root = lab.dir.path().join("root");
    let big = make_root(&root);
    let cfg = json!({
        "dhcp": {"mode": "off", "interface": "br0", "server_addr": SERVER},
        "tftp": {"enabled": true},
        "boot": {"http_base": format!("http://{SERVER}:8080"), "files_dir": root},
        "state_dir": lab.dir.path().join("state"),
    });
    let kiln = lab.start_kiln("kiln", &cfg, &json!({}), None);
    let dl = lab.dir.path().join("dl");
    std::fs::create_dir_all(&dl).unwrap();
    let cli = lab.cli.clone();
    let tftp = |remote: &str, local: &Path| {
        let mut c = Lab::netns_cmd(&cli, "tftp");
        c.args(["-m", "binary", SERVER, "-c", "get", remote]).arg(local);
        let (in_time, _, text) = run_with_timeout(&mut c, Duration::from_secs(30));
        assert!(in_time, "tftp hung on {remote}");
        text
    };
    let curl = |url_path: &str, extra: &[&str], local: &Path| {
        let mut c = Lab::netns_cmd(&cli, "curl");
        c.args(["-sS", "--path-as-is", "--max-time", "30"])
            .args(extra)
            .arg(format!("tftp://{SERVER}/{url_path}"))
            .arg("-o")
            .arg(local);
        let (in_time, ok, text) = run_with_timeout(&mut c, Duration::from_secs(40));
        assert!(in_time, "curl hung on {url_path}");
        (ok, text)
    };

    // Staged iPXE binary and a 1 MiB file (block-number roll-over needs > 32 MiB at 512, not tested here).
    let f = dl.join("undionly.kpxe");
    tftp("undionly.kpxe", &f);
    assert_eq!(
        std::fs::read(&f).unwrap(),
        std::fs::read("/usr/lib/ipxe/undionly.kpxe").unwrap()
    );
    let f = dl.join("big-hpa");
    tftp("big.bin", &f);
    assert_eq!(std::fs::read(&f).unwrap(), big);
    for (name, extra) in [
        ("plain", vec![]),
        ("noopts", vec!["--tftp-no-options"]),
        ("blk1468", vec!["--tftp-blksize", "1468"]),
        ("blk8192", vec!["--tftp-blksize", "8192"]),
    ] {
        let f = dl.join(format!("big-curl-{name}"));
        let (ok, text) = curl("big.bin", &extra, &f);
        assert!(ok, "curl {name}: {text}");
        assert_eq!(std::fs::read(&f).unwrap(), big, "curl {name}");
    }
    let f = dl.join("inner");
    let (ok, _) = curl("sub/inner.txt", &[], &f);
    assert!(ok);
    let (ok, _) = curl("inside-link", &[], &dl.join("inside-link"));
    assert!(ok, "a symlink staying inside the root is served");

    // Traversal and escapes: refused by both clients, nothing written.
    for bad in [
        "../../../../etc/passwd",
        "/etc/passwd",
        "escape",
        "sub/../../../etc/passwd",
        "..%2f..%2fetc%2fpasswd",
        "sub",
    ] {
        let f = dl.join("bad");
        let text = tftp(bad, &f);
        let got = std::fs::read(&f).unwrap_or_default();
        assert!(
            !String::from_utf8_lossy(&got).contains("root:"),
            "tftp-hpa {bad} leaked: {text}"
        );
        let _ = std::fs::remove_file(&f);
        let (ok, text) = curl(bad, &[], &f);
        assert!(!ok, "curl {bad} should fail: {text}");
        assert!(!String::from_utf8_lossy(&std::fs::read(&f).unwrap_or_default()).contains("root:"));
    }
    // Writes are refused with a TFTP error.
    let src = dl.join("inner");
    let mut c = Lab::netns_cmd(&cli, "tftp");
    c.args(["-m", "binary", SERVER, "-c", "put"])
        .arg(&src)
        .arg("uploaded.txt");
    let (in_time, _, text) = run_with_timeout(&mut c, Duration::from_secs(30));
    assert!(in_time);
    assert!(
        text.to_lowercase().contains("error") || text.contains("Illegal"),
        "put: {text}"
    );
    assert!(!root.join("uploaded.txt").exists());

    let log = lab.stop(&kiln);
    assert!(log.contains("tftp read refused"), "{log}");
}

/// RFC 1350 opcodes.
const RRQ: u16 = 1;
const DATA: u16 = 3;
const ACK: u16 = 4;
const ERROR: u16 = 5;
const OACK: u16 = 6;

fn rrq(name: &str, opts: &[(&str, &str)]) -> Vec<u8> {
    let mut v = RRQ.to_be_bytes().to_vec();
    for s in [name, "octet"] {
        v.extend(s.as_bytes());
        v.push(0);
    }
    for (k, val) in opts {
        v.extend(k.as_bytes());
        v.push(0);
        v.extend(val.as_bytes());
        v.push(0);
    }
    v
}

fn ack(block: u16) -> Vec<u8> {
    [ACK.to_be_bytes(), block.to_be_bytes()].concat()
}

/// A minimal RFC 7440 client: acks the last block of each window.
fn fetch_windowed(server: SocketAddr, name: &str, blksize: usize, window: u16) -> Result<Vec<u8>, String> {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.send_to(
        &rrq(
            name,
            &[
                ("blksize", &blksize.to_string()),
                ("windowsize", &window.to_string()),
                ("tsize", "0"),
            ],
        ),
        server,
    )
    .unwrap();
    let mut buf = vec![0u8; 70000];
    let (n, peer) = s.recv_from(&mut buf).map_err(|e| e.to_string())?;
    let op = u16::from_be_bytes([buf[0], buf[1]]);
    if op == ERROR {
        return Err(String::from_utf8_lossy(&buf[4..n]).into_owned());
    }
    assert_eq!(op, OACK);
    let oack = String::from_utf8_lossy(&buf[2..n]).replace('\0', " ");
    assert!(oack.contains(&format!("windowsize {window}")), "{oack}");
    assert!(oack.contains(&format!("blksize {blksize}")), "{oack}");
    assert!(oack.contains(" tsize "), "{oack}");
    s.send_to(&ack(0), peer).unwrap();
    let mut data = Vec::new();
    let mut expect: u16 = 1;
    loop {
        let (n, _) = s.recv_from(&mut buf).map_err(|e| e.to_string())?;
        assert_eq!(u16::from_be_bytes([buf[0], buf[1]]), DATA);
        let block = u16::from_be_bytes([buf[2], buf[3]]);
        if block != expect {
            continue;
        }
        data.extend(&buf[4..n]);
        let last = n - 4 < blksize;
        if last || block.is_multiple_of(window) {
            s.send_to(&ack(block), peer).unwrap();
        }
        if last {
            return Ok(data);
        }
        expect = expect.wrapping_add(1);
    }
}

/// kiln's TFTP server on a loopback port, serving `root` until the token is cancelled.
async fn serve_on_loopback(
    root: &Path,
) -> (
    SocketAddr,
    Arc<PxeCounters>,
    CancellationToken,
    tokio::task::JoinHandle<Result<(), kiln_pxe::PxeError>>,
) {
    let cancel = CancellationToken::new();
    let counters = Arc::new(PxeCounters::default());
    let (addr, fut) = kiln_pxe::tftp::bind(
        "127.0.0.1:0".parse().unwrap(),
        root.to_owned(),
        counters.clone(),
        None,
        cancel.clone(),
    )
    .await
    .unwrap();
    (addr, counters, cancel, tokio::spawn(fut))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn windowsize_transfer_and_malformed_datagrams_on_loopback() {
    let dir = tempfile::tempdir().unwrap();
    let big = make_root(dir.path());
    let (addr, counters, cancel, task) = serve_on_loopback(dir.path()).await;

    // Garbage and truncated requests first: they must be dropped without harm.
    let junk = UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut seed: u32 = 7;
    for len in 0..200usize {
        let mut pkt: Vec<u8> = (0..len)
            .map(|_| {
                seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12345);
                (seed >> 16) as u8
            })
            .collect();
        if len % 3 == 0 && len >= 2 {
            pkt[0] = 0;
            pkt[1] = 1; // looks like an RRQ, random body
        }
        junk.send_to(&pkt, addr).unwrap();
    }
    let truncated = rrq("big.bin", &[("blksize", "1024")]);
    for cut in 0..truncated.len() {
        junk.send_to(&truncated[..cut], addr).unwrap();
    }

    let got = tokio::task::spawn_blocking(move || fetch_windowed(addr, "big.bin", 1024, 8))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got, big);
    let err = tokio::task::spawn_blocking(move || fetch_windowed(addr, "../etc/passwd", 512, 4))
        .await
        .unwrap();
    assert!(err.is_err());
    // Concurrent transfers.
    let mut hs = Vec::new();
    for w in [1u16, 2, 4, 16] {
        hs.push(tokio::task::spawn_blocking(move || {
            fetch_windowed(addr, "big.bin", 1428, w)
        }));
    }
    for h in hs {
        assert_eq!(h.await.unwrap().unwrap().len(), big.len());
    }
    cancel.cancel();
    task.await.unwrap().unwrap();
    assert!(counters.tftp_reads.load(std::sync::atomic::Ordering::Relaxed) >= 5);
    assert!(counters.tftp_malformed.load(std::sync::atomic::Ordering::Relaxed) >= 200);
}

/// One client transfer ID, talking to the server by hand.
struct Peer {
    s: UdpSocket,
    server: SocketAddr,
    tid: Option<SocketAddr>,
}

impl Peer {
    fn new(server: SocketAddr) -> Self {
        let s = UdpSocket::bind("127.0.0.1:0").unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        Peer { s, server, tid: None }
    }
    fn request(&self, datagram: &[u8]) {
        self.s.send_to(datagram, self.server).unwrap();
    }
    /// The next datagram from the transfer: its opcode and what follows.
    fn recv_raw(&mut self) -> Option<(u16, Vec<u8>)> {
        let mut buf = vec![0u8; 70000];
        let (n, from) = self.s.recv_from(&mut buf).ok()?;
        self.tid.get_or_insert(from);
        Some((u16::from_be_bytes([buf[0], buf[1]]), buf[2..n].to_vec()))
    }
    /// The next datagram: opcode, block number (or error code), payload.
    fn recv(&mut self) -> Option<(u16, u16, Vec<u8>)> {
        let (op, rest) = self.recv_raw()?;
        let num = u16::from_be_bytes([rest[0], rest[1]]);
        Some((op, num, rest[2..].to_vec()))
    }
    fn send(&self, datagram: &[u8]) {
        self.s.send_to(datagram, self.tid.unwrap()).unwrap();
    }
}

/// The protocol's corner cases against hand-driven clients: OACK values, netascii, files ending on a block
/// boundary and empty ones, block-number roll-over, a repeated ACK (ignored with one block in flight; with a window,
/// the window is sent again at once), a lost ACK (sent again after the timeout), and a client's ERROR.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protocol_corner_cases_on_loopback() {
    let dir = tempfile::tempdir().unwrap();
    let big = make_root(dir.path());
    std::fs::write(dir.path().join("text.cfg"), b"line one\nline two\r\nbare\rend").unwrap();
    std::fs::write(dir.path().join("empty"), b"").unwrap();
    std::fs::write(dir.path().join("exact"), vec![7u8; 1024]).unwrap();
    // 65,549 blocks of 8 bytes: the block number rolls over.
    let roll: Vec<u8> = (0..65_548u32 * 8 + 5).map(|i| (i % 251) as u8).collect();
    std::fs::write(dir.path().join("roll"), &roll).unwrap();
    let (addr, counters, cancel, task) = serve_on_loopback(dir.path()).await;

    tokio::task::spawn_blocking(move || {
        // OACK carries what was agreed: tsize is the size, timeout is echoed, windowsize is capped.
        let mut p = Peer::new(addr);
        p.request(&rrq(
            "big.bin",
            &[
                ("tsize", "0"),
                ("timeout", "2"),
                ("windowsize", "1000"),
                ("blksize", "1400"),
                ("x-unknown", "1"),
            ],
        ));
        let (op, body) = p.recv_raw().unwrap();
        assert_eq!(op, OACK);
        let full = String::from_utf8_lossy(&body).replace('\0', " ");
        assert!(full.starts_with("blksize 1400 "), "{full}");
        assert!(full.contains(&format!("tsize {} ", big.len())), "{full}");
        assert!(full.contains("timeout 2 ") && full.contains("windowsize 64 "), "{full}");
        assert!(!full.contains("x-unknown"), "{full}");
        p.send(&[0, 5, 0, 0, b'b', b'y', b'e', 0]); // the client gives up

        // netascii: line ends become CR LF, a bare CR becomes CR NUL.
        let mut p = Peer::new(addr);
        let mut req = RRQ.to_be_bytes().to_vec();
        req.extend(b"text.cfg\0netascii\0");
        p.request(&req);
        let (op, block, body) = p.recv().unwrap();
        assert_eq!((op, block), (DATA, 1));
        assert_eq!(body, b"line one\r\nline two\r\nbare\r\0end");
        p.send(&ack(1));

        // Without options: 512-byte blocks; a file of two full blocks ends with an empty third one; an empty file
        // is one empty block.
        for (name, blocks) in [("exact", 3u16), ("empty", 1)] {
            let mut p = Peer::new(addr);
            p.request(&rrq(name, &[]));
            for want in 1..=blocks {
                let (op, block, body) = p.recv().unwrap();
                assert_eq!((op, block), (DATA, want), "{name}");
                assert_eq!(body.len(), if want == blocks { 0 } else { 512 }, "{name}");
                p.send(&ack(block));
            }
        }

        // A repeated ACK with one block in flight does not double the traffic (Sorcerer's Apprentice); without an
        // ACK the block comes again after the timeout.
        let mut p = Peer::new(addr);
        p.request(&rrq("big.bin", &[]));
        assert_eq!(p.recv().unwrap().1, 1);
        p.send(&ack(1));
        assert_eq!(p.recv().unwrap().1, 2);
        p.send(&ack(1));
        p.s.set_read_timeout(Some(Duration::from_millis(400))).unwrap();
        assert!(p.recv().is_none(), "a repeated ACK made the server send again at once");
        p.s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        assert_eq!(p.recv().unwrap().1, 2, "block 2 is sent again after the timeout");
        p.send(&[0, 5, 0, 0, 0]);

        // With a window, a repeated ACK means a loss: the window is sent again at once, from the block after it.
        let mut p = Peer::new(addr);
        p.request(&rrq("big.bin", &[("windowsize", "4"), ("blksize", "512")]));
        assert_eq!(p.recv().unwrap().0, OACK);
        p.send(&ack(0));
        let first: Vec<u16> = (0..4).map(|_| p.recv().unwrap().1).collect();
        assert_eq!(first, [1, 2, 3, 4]);
        p.send(&ack(2)); // 3 and 4 "lost"
        let again: Vec<u16> = (0..4).map(|_| p.recv().unwrap().1).collect();
        assert_eq!(again, [3, 4, 5, 6]);
        p.send(&ack(2)); // nothing of that window arrived either
        let third: Vec<u16> = (0..4).map(|_| p.recv().unwrap().1).collect();
        assert_eq!(third, [3, 4, 5, 6]);
        p.send(&[0, 5, 0, 0, 0]);
    })
    .await
    .unwrap();

    // Block numbers roll over from 65535 to 0.
    let got = tokio::task::spawn_blocking(move || fetch_windowed(addr, "roll", 8, 64))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got, roll);
    cancel.cancel();
    task.await.unwrap().unwrap();
    assert!(counters.tftp_aborted.load(std::sync::atomic::Ordering::Relaxed) >= 3);
}

/// Resident memory of this process, from /proc.
fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kb * 1024
}

/// Files above the cache size are streamed, not read whole: four clients that request a 200 MiB file and never
/// ACK move memory by far less than the file (before: 200 MiB each, kept while they lingered); a client cannot
/// open more than its share of transfers; and a streamed file arrives intact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn big_files_stream_and_lingering_clients_cost_no_memory() {
    let dir = tempfile::tempdir().unwrap();
    let huge = std::fs::File::create(dir.path().join("huge.img")).unwrap();
    huge.set_len(200 << 20).unwrap();
    let mid: Vec<u8> = (0..(9u32 << 20) + 77)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 11) as u8)
        .collect();
    std::fs::write(dir.path().join("mid.bin"), &mid).unwrap();
    let (addr, counters, cancel, task) = serve_on_loopback(dir.path()).await;
    let before = rss_bytes();
    let mut lingering = Vec::new();
    for _ in 0..4 {
        let s = UdpSocket::bind("127.0.0.1:0").unwrap();
        s.send_to(&rrq("huge.img", &[("blksize", "1428")]), addr).unwrap();
        lingering.push(s); // never ACKs
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let grown = rss_bytes().saturating_sub(before);
    assert!(
        grown < 64 << 20,
        "4 lingering transfers of a 200 MiB file grew RSS by {} MiB",
        grown >> 20
    );
    let got = tokio::task::spawn_blocking(move || fetch_windowed(addr, "mid.bin", 1428, 16))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got, mid, "a streamed file arrives intact");
    // One address may hold only a few transfers at once: the ninth request from this host is refused.
    let mut held = Vec::new();
    for _ in 0..8 {
        let s = UdpSocket::bind("127.0.0.1:0").unwrap();
        s.send_to(&rrq("huge.img", &[]), addr).unwrap();
        held.push(s);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let refused_before = counters.tftp_refused.load(std::sync::atomic::Ordering::Relaxed);
    let extra = UdpSocket::bind("127.0.0.1:0").unwrap();
    extra.send_to(&rrq("huge.img", &[]), addr).unwrap();
    extra.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut buf = [0u8; 1500];
    let (n, _) = extra.recv_from(&mut buf).unwrap();
    assert_eq!(&buf[..2], &[0, 5], "an ERROR packet, got {:?}", &buf[..n.min(8)]);
    assert!(counters.tftp_refused.load(std::sync::atomic::Ordering::Relaxed) > refused_before);
    drop((lingering, held));
    cancel.cancel();
    task.await.unwrap().unwrap();
}

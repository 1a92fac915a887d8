//! Block volumes through real NBD clients (qemu-img, qemu-io, nbdinfo, nbdcopy) and a raw
//! protocol client for what they never send (malformed requests).

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;

use common::*;
use lauscha_core::nbd;

/// qemu-io commands against a volume; every `read -P` checks its pattern.
#[track_caller]
fn qemu_io(uri: &str, commands: &[&str]) -> String {
    qemu_io_with(&["-f", "raw"], uri, commands)
}

/// As [`qemu_io`], opening the export read-only (snapshots).
#[track_caller]
fn qemu_io_ro(uri: &str, commands: &[&str]) -> String {
    qemu_io_with(&["-r", "-f", "raw"], uri, commands)
}

#[track_caller]
fn qemu_io_with(flags: &[&str], uri: &str, commands: &[&str]) -> String {
    let mut args = flags.to_vec();
    for c in commands {
        args.extend(["-c", c]);
    }
    args.push(uri);
    let text = run("qemu-io", &args);
    assert!(
        !text.contains("Pattern verification failed") && !text.contains("failed:"),
        "qemu-io: {text}"
    );
    text
}

fn volume(dev: &Dev, name: &str, size: &str) -> String {
    dev.admin(&["volume", "create", name, "--size", size]);
    format!("nbd://{}/{name}", dev.nbd_addr())
}

#[test]
fn qemu_tools_convert_compare_and_check_patterns() {
    let dev = Dev::start(&[]);
    let uri = volume(&dev, "disk", "256M");
    let info = run("nbdinfo", &["--json", &uri]);
    let info: serde_json::Value = serde_json::from_str(&info).unwrap();
    let export = &info["exports"][0];
    assert_eq!(export["export-size"], 256 << 20);
    for flag in [
        "can_flush",
        "can_fua",
        "can_trim",
        "can_zero",
        "can_fast_zero",
    ] {
        assert_eq!(export[flag], true, "{flag}: {export}");
    }
    // 512-byte sectors, as the Linux kernel's client sends whatever it is told.
    assert_eq!(export["block_size_minimum"], 512);

    // A fresh volume reads as zeros.
    qemu_io(&uri, &["read -P 0 0 1M", "read -P 0 255M 1M"]);

    // 256 MiB of random bytes in, compared back by qemu-img and nbdcopy.
    let tmp = tempfile::tempdir().unwrap();
    let image = tmp.path().join("image.raw");
    std::fs::write(&image, payload(42, 256 << 20)).unwrap();
    let image = image.to_str().unwrap();
    run(
        "qemu-img",
        &["convert", "-n", "-f", "raw", "-O", "raw", image, &uri],
    );
    let compared = run(
        "qemu-img",
        &["compare", "-f", "raw", "-F", "raw", image, &uri],
    );
    assert!(compared.contains("identical"), "{compared}");
    let copy = tmp.path().join("copy.raw");
    run("nbdcopy", &[&uri, copy.to_str().unwrap()]);
    assert!(
        std::fs::read(&copy).unwrap() == std::fs::read(image).unwrap(),
        "nbdcopy read back other bytes"
    );

    // Patterns, zeroing, discard, FUA writes and flush, across an extent boundary.
    qemu_io(
        &uri,
        &[
            "write -P 0xab 0 1M",
            "write -P 0xcd 4186112 16k",
            "read -P 0xab 0 1M",
            "read -P 0xcd 4186112 16k",
            "write -z 1M 1M",
            "read -P 0 1M 1M",
            "discard 2M 1M",
            "read -P 0 2M 1M",
            "write -f -P 0x11 8M 64k",
            "flush",
            "read -P 0x11 8M 64k",
            // 512-byte sectors, one of them FUA, between and over 4 KiB blocks (of a
            // range zeroed first: it holds the image's random bytes).
            "write -z 16M 64k",
            "write -P 0x21 16M 512",
            "write -P 0x22 16778752 1k",
            "write -f -P 0x23 16781824 512",
            "write -P 0x24 16785408 8k",
            "write -P 0x25 16789504 512",
            "read -P 0x21 16M 512",
            "read -P 0 16777728 1k",
            "read -P 0x22 16778752 1k",
            "read -P 0x23 16781824 512",
            "read -P 0x24 16785408 4k",
            "read -P 0x25 16789504 512",
            "read -P 0x24 16790016 3584",
        ],
    );
    // A new connection (new attach) sees the same bytes.
    qemu_io(
        &uri,
        &[
            "read -P 0xab 0 1M",
            "read -P 0 1M 2M",
            "read -P 0xcd 4186112 16k",
            "read -P 0x11 8M 64k",
            "read -P 0x21 16M 512",
            "read -P 0 16777728 1k",
            "read -P 0x22 16778752 1k",
            "read -P 0x23 16781824 512",
            "read -P 0x25 16789504 512",
        ],
    );
    let listed = dev.admin(&["volume", "list"]);
    assert_eq!(listed["volumes"][0]["name"], "disk");
}

#[test]
fn acknowledged_writes_survive_a_crash_of_the_server() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let mut dev = Dev::start_in(&data, &[]);
    let uri = volume(&dev, "vm1", "64M");
    // No flush: each write was acknowledged, which is the promise.
    qemu_io(
        &uri,
        &[
            "write -P 0x5a 0 4k",
            "write -P 0x6b 12k 8k",
            "write -P 0x7c 5M 1M",
            "write -z 5M 64k",
        ],
    );
    dev.kill();
    let dev = Dev::start_in(&data, &[]);
    let uri = format!("nbd://{}/vm1", dev.nbd_addr());
    wait_until_attachable(&uri);
    qemu_io(
        &uri,
        &[
            "read -P 0x5a 0 4k",
            "read -P 0 4k 8k",
            "read -P 0x6b 12k 8k",
            "read -P 0 5M 64k",
            "read -P 0x7c 5308416 960k",
        ],
    );
}

/// Waits until `uri` can be attached. After a server is killed, its lease blocks a new
/// attach until it lapses (10 s), as it would block a second host; a client retries, as
/// qemu does with reconnect-delay.
#[track_caller]
fn wait_until_attachable(uri: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !Command::new("qemu-io")
        .args(["-f", "raw", "-c", "read 0 4k", uri])
        .output()
        .unwrap()
        .status
        .success()
    {
        assert!(
            std::time::Instant::now() < deadline,
            "attach still refused after 30 s"
        );
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
}

/// A raw client: handshake, NBD_OPT_GO, then requests.
struct RawClient {
    tcp: TcpStream,
}

impl RawClient {
    fn connect(addr: &str, export: &str) -> RawClient {
        RawClient::try_connect(addr, export).expect("NBD_OPT_GO refused")
    }

    /// As [`RawClient::connect`]; `None` when the server refuses the export (NBD_OPT_GO
    /// answered with an error: another server's lease, for one).
    fn try_connect(addr: &str, export: &str) -> Option<RawClient> {
        let mut tcp = TcpStream::connect(addr).unwrap();
        // A request is two writes (header, payload): without this, Nagle holds the
        // payload for the server's delayed ACK, 40 ms a request.
        tcp.set_nodelay(true).unwrap();
        let mut hello = [0u8; 18];
        tcp.read_exact(&mut hello).unwrap();
        assert_eq!(&hello[..8], &nbd::NBD_MAGIC.to_be_bytes());
        tcp.write_all(&(nbd::CLIENT_FIXED_NEWSTYLE | nbd::CLIENT_NO_ZEROES).to_be_bytes())
            .unwrap();
        // An option the server does not know is answered, not fatal.
        tcp.write_all(&nbd_option(99, &[])).unwrap();
        let (reply_type, _) = read_nbd_option_reply(&mut tcp);
        assert_eq!(reply_type, nbd::REP_ERR_UNSUP);
        tcp.write_all(&nbd_option(nbd::OPT_GO, &nbd_info_request(export)))
            .unwrap();
        loop {
            match read_nbd_option_reply(&mut tcp).0 {
                nbd::REP_ACK => return Some(RawClient { tcp }),
                nbd::REP_INFO => {}
                _ => return None,
            }
        }
    }

    fn request(&mut self, command: u16, cookie: u64, offset: u64, len: u32, data: &[u8]) -> u32 {
        self.request_with_flags(0, command, cookie, offset, len, data)
    }

    fn request_with_flags(
        &mut self,
        flags: u16,
        command: u16,
        cookie: u64,
        offset: u64,
        len: u32,
        data: &[u8],
    ) -> u32 {
        let r = nbd::Request {
            flags,
            command,
            cookie,
            offset,
            len,
        };
        self.tcp.write_all(&nbd::encode_request(&r)).unwrap();
        self.tcp.write_all(data).unwrap();
        let mut reply = [0u8; 16];
        self.tcp.read_exact(&mut reply).unwrap();
        assert_eq!(&reply[..4], &nbd::SIMPLE_REPLY_MAGIC.to_be_bytes());
        assert_eq!(u64::from_be_bytes(reply[8..16].try_into().unwrap()), cookie);
        let error = u32::from_be_bytes(reply[4..8].try_into().unwrap());
        if error == 0 && command == nbd::CMD_READ {
            let mut buf = vec![0u8; len as usize];
            self.tcp.read_exact(&mut buf).unwrap();
        }
        error
    }
}

impl RawClient {
    /// Sends every write before reading any reply (pipelined, as qemu does); returns the
    /// error of each, in the order given.
    fn pipelined_writes(&mut self, writes: &[(u64, Vec<u8>)]) -> Vec<u32> {
        let mut out = Vec::new();
        for (i, (offset, data)) in writes.iter().enumerate() {
            out.extend_from_slice(&nbd::encode_request(&nbd::Request {
                flags: 0,
                command: nbd::CMD_WRITE,
                cookie: i as u64,
                offset: *offset,
                len: data.len() as u32,
            }));
            out.extend_from_slice(data);
        }
        self.tcp.write_all(&out).unwrap();
        let mut errors = vec![u32::MAX; writes.len()];
        for _ in writes {
            let mut reply = [0u8; 16];
            self.tcp.read_exact(&mut reply).unwrap();
            assert_eq!(&reply[..4], &nbd::SIMPLE_REPLY_MAGIC.to_be_bytes());
            let cookie = u64::from_be_bytes(reply[8..16].try_into().unwrap()) as usize;
            errors[cookie] = u32::from_be_bytes(reply[4..8].try_into().unwrap());
        }
        errors
    }

    fn read_block(&mut self, block: u64) -> Vec<u8> {
        let r = nbd::Request {
            flags: 0,
            command: nbd::CMD_READ,
            cookie: block,
            offset: block * 4096,
            len: 4096,
        };
        self.tcp.write_all(&nbd::encode_request(&r)).unwrap();
        let mut reply = [0u8; 16];
        self.tcp.read_exact(&mut reply).unwrap();
        assert_eq!(
            u32::from_be_bytes(reply[4..8].try_into().unwrap()),
            0,
            "read error"
        );
        let mut buf = vec![0u8; 4096];
        self.tcp.read_exact(&mut buf).unwrap();
        buf
    }
}

/// Small writes in flight together are journaled as batches (one stripe set on the nodes
/// and one metadata command for many writes, each entry a slice of its batch). Once
/// acknowledged they read back through a snapshot taken while they are unmerged, and
/// after the server is killed with its client still connected (so nothing was merged at
/// detach). Batched writes that cover an extent are merged by rewriting it: a slice of a
/// batch is never adopted as an extent's stripes (those hold the whole batch).
#[test]
fn concurrent_small_writes_are_batched_and_survive_a_crash_of_the_server() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let mut dev = Dev::start_in(&data, &[]);
    volume(&dev, "batched", "64M");
    let addr = dev.nbd_addr();
    let mut client = RawClient::connect(&addr, "batched");
    // 48 writes of 32 KiB over 12 extents, each of its own byte value, and 64 of 64 KiB
    // that cover extent 15 in order.
    let mut writes: Vec<(u64, Vec<u8>)> = (0..48u64)
        .map(|i| {
            let offset = (i % 12) * (4 << 20) + (i / 12) * (256 << 10);
            (offset, vec![i as u8 + 1; 32 << 10])
        })
        .collect();
    writes.extend((0..64u64).map(|i| ((60 << 20) + i * (64 << 10), vec![100 + i as u8; 64 << 10])));
    let errors = client.pipelined_writes(&writes);
    assert!(errors.iter().all(|e| *e == 0), "{errors:?}");
    let merges = || {
        metrics(
            &dev,
            &[
                "lauscha_volume_merges_adopted_total",
                "lauscha_volume_merges_rewritten_total",
            ],
        )
    };
    // Extent 15 is covered, so due: its merge runs now.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while merges()[1] == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "extent 15 not merged after 30 s"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert_eq!(merges()[0], 0, "no batch slice is adopted as an extent");
    let counts = metrics(
        &dev,
        &[
            "lauscha_volume_journal_batches_total",
            "lauscha_volume_journal_batched_writes_total",
        ],
    );
    assert!(
        counts[0] >= 1 && counts[1] > counts[0],
        "some batch carried several writes: {counts:?}"
    );
    let reads: Vec<String> = writes
        .iter()
        .map(|(offset, bytes)| format!("read -P {} {offset} {}", bytes[0], bytes.len()))
        .collect();
    let reads: Vec<&str> = reads.iter().map(String::as_str).collect();
    dev.admin(&["volume", "snapshot", "batched", "s1"]);
    qemu_io_ro(&format!("nbd://{addr}/batched@s1"), &reads);
    dev.kill();
    drop(client);
    let dev = Dev::start_in(&data, &[]);
    let uri = format!("nbd://{}/batched", dev.nbd_addr());
    wait_until_attachable(&uri);
    qemu_io(&uri, &reads);
    qemu_io(&uri, &["read -P 0 32k 224k", "read -P 0 56M 4M"]);
}

/// 512-byte writes (the NBD minimum) count a whole 4 KiB block against the journal's
/// limits, and a spill must take off what they counted. It took off their length, so
/// each spilled sector left 3.5 KiB counted inline for good: after about 7,000 the count
/// stayed over the 24 MiB limit with nothing inline to spill, and every write waited
/// for room for good. Pipelined 512-byte writes come in batches under 64 KiB, so they
/// go inline; 16,384 of them count 64 MiB, spilled as they come (age merges are out of
/// reach, and no extent gets the 1,024 entries that make it due before the last write).
#[test]
fn sector_writes_spill_from_the_inline_journal_without_stalling_the_volume() {
    let dev = Dev::start(&["--volume-merge-age-s", "3600"]);
    volume(&dev, "sectors", "64M");
    let addr = dev.nbd_addr();
    let mut client = RawClient::connect(&addr, "sectors");
    // A stalled volume fails the test instead of hanging it (the server stops reading
    // requests once 64 are in flight, so the sends can block too).
    let stall = Some(std::time::Duration::from_secs(60));
    client.tcp.set_read_timeout(stall).unwrap();
    client.tcp.set_write_timeout(stall).unwrap();
    // The first sector of every 4 KiB block of the 64 MiB, each its own byte value, the
    // 16 extents in turn, so that they fill evenly.
    let byte = |i: u64| (i % 251) as u8 + 1;
    let block_of = |i: u64| (i % 16) * 1024 + i / 16;
    for round in 0..32u64 {
        let writes: Vec<(u64, Vec<u8>)> = (round * 512..(round + 1) * 512)
            .map(|i| (block_of(i) * 4096, vec![byte(i); 512]))
            .collect();
        let errors = client.pipelined_writes(&writes);
        assert!(errors.iter().all(|e| *e == 0), "round {round}: {errors:?}");
    }
    let spilled = metrics(&dev, &["lauscha_volume_journal_spilled_entries_total"])[0];
    assert!(spilled >= 2048, "{spilled} entries spilled");
    for i in [0u64, 1, 17, 4095, 8192, 16383] {
        let block = client.read_block(block_of(i));
        assert!(block[..512].iter().all(|b| *b == byte(i)), "write {i}");
        assert!(block[512..].iter().all(|b| *b == 0), "write {i}");
    }
}

/// Lone small writes travel inline in metadata. Past the inline journal's soft limit
/// (16 MiB) the oldest are spilled: moved into stripe sets on the nodes, keeping their
/// place in the journal, instead of whole extents being rewritten to absorb them. Spilled
/// entries read back from the nodes after the server is killed (the journal is replayed
/// at attach from their slices; settled, so a FLUSH need not merge them), and again once
/// the detach merged their extents. The age limit of merges is set out of reach, so that
/// nothing is merged before the kill.
#[test]
fn inline_journal_entries_past_the_soft_limit_are_spilled_to_the_nodes() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let no_age_merges = ["--volume-merge-age-s", "3600"];
    let mut dev = Dev::start_in(&data, &no_age_merges);
    volume(&dev, "spilled", "64M");
    let addr = dev.nbd_addr();
    let mut client = RawClient::connect(&addr, "spilled");
    // 320 writes of 64 KiB (20 MiB), one at a time so that each travels inline: every
    // other 64 KiB of extents 0 to 9, none of them covered (a covered extent is merged
    // at once), each write its own byte value.
    let writes: Vec<(u64, u8)> = (0..320u64)
        .map(|i| {
            (
                (i % 10) * (4 << 20) + (i / 10) * (128 << 10),
                (i % 250) as u8 + 1,
            )
        })
        .collect();
    for (i, (offset, byte)) in writes.iter().enumerate() {
        let error = client.request(
            nbd::CMD_WRITE,
            i as u64,
            *offset,
            64 << 10,
            &[*byte; 64 << 10],
        );
        assert_eq!(error, 0, "write {i}");
    }
    let spills = || {
        metrics(
            &dev,
            &[
                "lauscha_volume_journal_spills_total",
                "lauscha_volume_journal_spilled_entries_total",
            ],
        )
    };
    let merges = |dev: &Dev| {
        let m = metrics(
            dev,
            &[
                "lauscha_volume_merges_adopted_total",
                "lauscha_volume_merges_rewritten_total",
            ],
        );
        m[0] + m[1]
    };
    // Spilling goes on until 12 MiB are left inline: at least 4 MiB, 64 entries, the
    // oldest, which are in every one of the ten extents.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while spills()[1] < 64 {
        assert!(
            std::time::Instant::now() < deadline,
            "not spilled after 30 s: {:?}",
            spills()
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let n = spills();
    assert!(n[0] >= 4, "a spill moves up to 1 MiB: {n:?}");
    assert_eq!(merges(&dev), 0, "spilled, not merged");
    let mut reads: Vec<String> = writes
        .iter()
        .map(|(offset, byte)| format!("read -P {byte} {offset} 64k"))
        .collect();
    reads.extend((0..10u64).map(|e| format!("read -P 0 {} 64k", e * (4 << 20) + (64 << 10))));
    let reads: Vec<&str> = reads.iter().map(String::as_str).collect();
    // Killed with the client still connected: nothing is merged at detach.
    dev.kill();
    drop(client);
    let dev = Dev::start_in(&data, &no_age_merges);
    let addr = dev.nbd_addr();
    // The killed server's lease blocks the attach until it lapses (10 s).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let mut client = loop {
        if let Some(client) = RawClient::try_connect(&addr, "spilled") {
            break client;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "attach still refused after 30 s"
        );
        std::thread::sleep(std::time::Duration::from_millis(500));
    };
    // The journal as replayed at attach: spilled entries' bytes come from their slices.
    for (i, (offset, byte)) in writes.iter().enumerate() {
        let block = client.read_block(offset / 4096);
        assert!(block.iter().all(|b| b == byte), "write {i} read back wrong");
    }
    assert_eq!(merges(&dev), 0);
    // A spill is committed only with every shard durable, and recorded as settled;
    // inline entries are in Raft: the FLUSH has nothing to settle, so it merges nothing
    // (before settled marks, it merged the ten extents holding spilled entries).
    assert_eq!(client.request(nbd::CMD_FLUSH, 1, 0, 0, &[]), 0);
    assert_eq!(merges(&dev), 0);
    drop(client);
    qemu_io(&format!("nbd://{addr}/spilled"), &reads);
}

#[test]
fn bad_requests_get_error_replies_and_hurt_no_one_else() {
    let dev = Dev::start(&[]);
    volume(&dev, "raw", "16M");
    let addr = dev.nbd_addr();
    let mut client = RawClient::connect(&addr, "raw");
    assert_eq!(
        client.request(nbd::CMD_READ, 1, 100, 4096, &[]),
        nbd::EINVAL,
        "misaligned"
    );
    assert_eq!(
        client.request(nbd::CMD_READ, 2, 16 << 20, 4096, &[]),
        nbd::EINVAL,
        "past the end"
    );
    assert_eq!(
        client.request(nbd::CMD_WRITE, 3, (16 << 20) - 4096, 8192, &[7u8; 8192]),
        nbd::ENOSPC,
        "write past the end"
    );
    assert_eq!(
        client.request(9, 4, 0, 4096, &[]),
        nbd::EINVAL,
        "unknown command"
    );
    assert_eq!(
        client.request_with_flags(1 << 9, nbd::CMD_WRITE, 41, 0, 4096, &[8u8; 4096]),
        nbd::EINVAL,
        "unknown flag"
    );
    assert_eq!(
        client.request_with_flags(nbd::CMD_FLAG_NO_HOLE, nbd::CMD_TRIM, 42, 0, 4096, &[]),
        nbd::EINVAL,
        "a WRITE_ZEROES flag on TRIM"
    );
    // Zero-length requests change nothing and are answered.
    assert_eq!(client.request(nbd::CMD_WRITE, 43, 4096, 0, &[]), 0);
    assert_eq!(client.request(nbd::CMD_WRITE_ZEROES, 44, 4096, 0, &[]), 0);
    assert_eq!(client.request(nbd::CMD_READ, 45, 4096, 0, &[]), 0);
    assert_eq!(client.request(nbd::CMD_WRITE, 5, 0, 4096, &[9u8; 4096]), 0);
    assert_eq!(
        client.request(nbd::CMD_WRITE, 47, 8192, 4096, &[3u8; 4096]),
        0
    );
    let fast_zero = nbd::CMD_FLAG_FAST_ZERO | nbd::CMD_FLAG_NO_HOLE | nbd::CMD_FLAG_FUA;
    assert_eq!(
        client.request_with_flags(fast_zero, nbd::CMD_WRITE_ZEROES, 46, 8192, 4096, &[]),
        0
    );
    assert_eq!(client.request(nbd::CMD_FLUSH, 6, 0, 0, &[]), 0);
    assert_eq!(client.request(nbd::CMD_READ, 7, 0, 4096, &[]), 0);
    // An unknown export is refused during negotiation, with a reply.
    let mut tcp = TcpStream::connect(&addr).unwrap();
    let mut hello = [0u8; 18];
    tcp.read_exact(&mut hello).unwrap();
    tcp.write_all(&nbd::CLIENT_FIXED_NEWSTYLE.to_be_bytes())
        .unwrap();
    tcp.write_all(&nbd_option(nbd::OPT_LIST, b"xyz")).unwrap();
    assert_eq!(read_nbd_option_reply(&mut tcp).0, nbd::REP_ERR_INVALID);
    tcp.write_all(&nbd_option(nbd::OPT_GO, &nbd_info_request("zzz")))
        .unwrap();
    assert_eq!(read_nbd_option_reply(&mut tcp).0, nbd::REP_ERR_UNKNOWN);
    // Garbage where a request header belongs: that connection is closed ...
    let mut broken = RawClient::connect(&addr, "raw");
    broken.tcp.write_all(&[0xffu8; 28]).unwrap();
    let mut buf = [0u8; 1];
    assert_eq!(broken.tcp.read(&mut buf).unwrap_or(0), 0, "closed");
    // ... and the first client goes on.
    assert_eq!(client.request(nbd::CMD_READ, 8, 0, 4096, &[]), 0);
    qemu_io(
        &format!("nbd://{addr}/raw"),
        &["read -P 9 0 4k", "read -P 0 4k 8k"],
    );
}

/// Bytes of shard files under a dev data directory, while the server runs: a file listed
/// and then deleted (merges and garbage collection go on) counts as gone.
fn shard_bytes(dir: &std::path::Path) -> u64 {
    fn walk(p: &std::path::Path, in_shards: bool) -> u64 {
        let Ok(entries) = std::fs::read_dir(p) else {
            return 0;
        };
        entries
            .flatten()
            .map(|e| {
                let path = e.path();
                let meta = match e.metadata() {
                    Ok(meta) => meta,
                    Err(err) if err.kind() == std::io::ErrorKind::NotFound => return 0,
                    Err(err) => panic!("stat {}: {err}", path.display()),
                };
                let here = in_shards || e.file_name() == "shards";
                if meta.is_dir() {
                    walk(&path, here)
                } else if here {
                    meta.len()
                } else {
                    0
                }
            })
            .sum()
    }
    walk(dir, false)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trim_frees_the_space_on_the_nodes() {
    let dev = Dev::start_env(&[], &[("LAUSCHA__GATEWAY__MAINTENANCE__GC_GRACE_S", "1")]);
    let uri = volume(&dev, "thin", "256M");
    let empty = shard_bytes(&dev.data_dir);
    // Written and detached: the journal is merged into extents.
    qemu_io(&uri, &["write -P 0x3c 0 100M", "flush"]);
    let settled = async |want: &dyn Fn(u64) -> bool| {
        eventually(std::time::Duration::from_secs(60), async || {
            dev.admin(&["repair"]);
            want(shard_bytes(&dev.data_dir))
        })
        .await
    };
    // 100 MiB at 4+2 is 150 MiB of shards once the journal's copies are collected.
    let written = 150 << 20;
    assert!(
        settled(&|b| b >= empty + written && b < empty + written + (40 << 20)).await,
        "after writing: {} bytes of shards",
        shard_bytes(&dev.data_dir)
    );
    qemu_io(&uri, &["discard 0 100M", "read -P 0 0 100M"]);
    assert!(
        settled(&|b| b < empty + (8 << 20)).await,
        "after TRIM: {} bytes of shards, {} before writing",
        shard_bytes(&dev.data_dir),
        empty
    );
}

#[test]
fn flushed_writes_survive_the_loss_of_m_storage_nodes() {
    let dev = Dev::start(&["--cluster"]);
    let uri = volume(&dev, "m-loss", "64M");
    // Generation 1, flushed; the detach merges it into 4+2 extents.
    qemu_io(
        &uri,
        &["write -P 0x01 0 8M", "write -P 0x02 20M 4k", "flush"],
    );
    // m = 2 storage nodes die.
    let nodes = dev.processes("storage");
    for node in &nodes[..2] {
        kill_pid(node["pid"].as_u64().unwrap());
    }
    // Generation 2 while they are gone: journaled on the four that are left, flushed.
    qemu_io(
        &uri,
        &[
            "read -P 0x01 0 8M",
            "read -P 0x02 20M 4k",
            "write -P 0x03 4M 4k",
            "write -P 0x04 30M 1M",
            "flush",
            "read -P 0x03 4M 4k",
        ],
    );
    // Small writes in flight together while they are gone: batches, which cannot be
    // placed at 4+2 on four nodes and fall back to three copies; then a FLUSH.
    let batch: Vec<(u64, Vec<u8>)> = (0..16u64)
        .map(|i| ((44 << 20) + i * (128 << 10), vec![0x10 + i as u8; 32 << 10]))
        .collect();
    let mut client = RawClient::connect(&dev.nbd_addr(), "m-loss");
    let errors = client.pipelined_writes(&batch);
    assert!(errors.iter().all(|e| *e == 0), "{errors:?}");
    assert_eq!(client.request(nbd::CMD_FLUSH, 99, 0, 0, &[]), 0, "FLUSH");
    drop(client);
    let batches = metrics(&dev, &["lauscha_volume_journal_batches_total"]);
    assert!(batches[0] >= 1, "the writes went as a batch: {batches:?}");
    let batch_reads: Vec<String> = batch
        .iter()
        .map(|(offset, bytes)| format!("read -P {} {offset} 32k", bytes[0]))
        .collect();
    // A new attach reads every flushed block back: extents rebuilt from parity, the
    // journal (its merge waits for full redundancy) replayed.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let out = Command::new("qemu-io")
            .args([
                "-f",
                "raw",
                "-c",
                "read -P 0x01 0 4M",
                "-c",
                "read -P 0x03 4M 4k",
                "-c",
                "read -P 0x01 4198400 4190208",
                "-c",
                "read -P 0x02 20M 4k",
                "-c",
                "read -P 0x04 30M 1M",
                "-c",
                "read -P 0 40M 1M",
            ])
            .args(batch_reads.iter().flat_map(|r| ["-c", r.as_str()]))
            .arg(&uri)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        if out.status.success() && !text.contains("can't open") {
            assert!(!text.contains("Pattern verification failed"), "{text}");
            assert!(!text.contains("failed"), "{text}");
            break;
        }
        // Attach waits while the previous connection's detach finishes.
        assert!(std::time::Instant::now() < deadline, "{text}");
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
}

/// Batched writes that were stored with every shard durable stay settled across a crash
/// of the NBD server: after it restarts with m storage nodes gone, a FLUSH succeeds
/// without merging (a merge at full redundancy cannot be placed on the nodes left), as it
/// would have before the crash. Before, entries replayed at attach were not trusted, so
/// the first FLUSH merged every extent with batched entries, and failed with EIO while
/// nodes were down.
#[test]
fn batched_writes_stay_settled_across_a_crash_of_the_server_while_nodes_are_down() {
    let dev = Dev::start(&["--cluster"]);
    volume(&dev, "settled", "64M");
    let batch: Vec<(u64, Vec<u8>)> = (0..32u64)
        .map(|i| (i * (256 << 10), vec![0x20 + i as u8; 32 << 10]))
        .collect();
    let mut client = RawClient::connect(&dev.nbd_addr(), "settled");
    let errors = client.pipelined_writes(&batch);
    assert!(errors.iter().all(|e| *e == 0), "{errors:?}");
    assert_eq!(client.request(nbd::CMD_FLUSH, 99, 0, 0, &[]), 0, "FLUSH");
    let batches = metrics(&dev, &["lauscha_volume_journal_batches_total"]);
    assert!(batches[0] >= 1, "the writes went as batches: {batches:?}");

    // The NBD server crashes with the journal unmerged, and m = 2 storage nodes die.
    let gateway = dev.processes("gateway").remove(0);
    kill_pid(gateway["pid"].as_u64().unwrap());
    drop(client);
    for node in &dev.processes("storage")[..2] {
        kill_pid(node["pid"].as_u64().unwrap());
    }
    let (_gateway, ready) = restart_ready(&gateway);
    let nbd_addr = ready["nbd_listen"].as_str().unwrap().to_string();
    let uri = format!("nbd://{nbd_addr}/settled");
    wait_until_attachable(&uri);
    let mut client = RawClient::connect(&nbd_addr, "settled");
    assert_eq!(
        client.request(nbd::CMD_FLUSH, 1, 0, 0, &[]),
        0,
        "FLUSH after the restart"
    );
    drop(client);
    let reads: Vec<String> = batch
        .iter()
        .map(|(offset, bytes)| format!("read -P {} {offset} 32k", bytes[0]))
        .collect();
    let reads: Vec<&str> = reads.iter().map(String::as_str).collect();
    wait_until_attachable(&uri);
    qemu_io(&uri, &reads);
}

#[test]
fn snapshots_stay_frozen_and_clones_write_apart() {
    let dev = Dev::start(&[]);
    let uri = volume(&dev, "base", "32M");
    let addr = dev.nbd_addr();
    qemu_io(&uri, &["write -P 0x0a 0 1M", "write -P 0x0b 6M 4k"]);
    dev.admin(&["volume", "snapshot", "base", "monday"]);
    // The volume goes on; the snapshot does not move.
    qemu_io(&uri, &["write -P 0x1a 0 1M", "write -z 6M 4k"]);
    let snap = format!("nbd://{addr}/base@monday");
    qemu_io_ro(&snap, &["read -P 0x0a 0 1M", "read -P 0x0b 6M 4k"]);
    let refused = Command::new("qemu-io")
        .args(["-f", "raw", "-c", "write -P 1 0 4k", &snap])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&refused.stdout).to_string()
        + &String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success() || !text.contains("wrote"),
        "a write to a snapshot went through: {text}"
    );
    // A clone starts as the snapshot and is written apart from it.
    dev.admin(&["volume", "clone", "base@monday", "copy"]);
    let clone = format!("nbd://{addr}/copy");
    qemu_io(&clone, &["read -P 0x0a 0 1M", "write -P 0x2c 0 4k"]);
    qemu_io(
        &clone,
        &[
            "read -P 0x2c 0 4k",
            "read -P 0x0a 4k 1020k",
            "read -P 0x0b 6M 4k",
        ],
    );
    qemu_io_ro(&snap, &["read -P 0x0a 0 1M", "read -P 0x0b 6M 4k"]);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let out = Command::new("qemu-io")
            .args([
                "-f",
                "raw",
                "-c",
                "read -P 0x1a 0 1M",
                "-c",
                "read -P 0 6M 4k",
                &uri,
            ])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        if out.status.success() {
            assert!(!text.contains("Pattern verification failed"), "{text}");
            break;
        }
        assert!(std::time::Instant::now() < deadline);
        std::thread::sleep(std::time::Duration::from_millis(300));
    }
    let listed = dev.admin(&["volume", "list"]);
    let names: Vec<&str> = listed["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v["name"].as_str())
        .collect();
    assert_eq!(names, ["base", "base@monday", "copy"]);
}

/// A 4 KiB block stamped with its generation and index in every 8-byte word, so that a
/// read tells which write it came from and whether it is torn.
fn stamped(generation: u64, block: u64) -> Vec<u8> {
    let word = (generation << 32) | block;
    (0..512).flat_map(|_| word.to_be_bytes()).collect()
}

/// (generation, block) of a stamped block; `None` for zeros; panics on a torn block.
fn stamp_of(data: &[u8], block: u64) -> Option<u64> {
    let first = u64::from_be_bytes(data[..8].try_into().unwrap());
    assert!(
        data.chunks(8)
            .all(|w| u64::from_be_bytes(w.try_into().unwrap()) == first),
        "block {block} is torn"
    );
    if first == 0 {
        return None;
    }
    assert_eq!(
        first & 0xffff_ffff,
        block,
        "block {block} holds another block's data"
    );
    Some(first >> 32)
}

#[test]
fn every_write_acknowledged_before_a_kill_reads_back_untorn() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};
    const BLOCKS: u64 = 1024;
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let mut dev = Dev::start_in(&data, &[]);
    volume(&dev, "gen", "4M");
    let addr = dev.nbd_addr();
    let acked: Arc<Mutex<Vec<u64>>> = Arc::new(Mutex::new(vec![0; BLOCKS as usize]));
    let n_acked = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (acked, n_acked, stop) = (acked.clone(), n_acked.clone(), stop.clone());
        let mut client = RawClient::connect(&addr, "gen");
        std::thread::spawn(move || {
            let mut cookie = 0u64;
            for generation in 1u64.. {
                for i in 0..BLOCKS {
                    if stop.load(Ordering::SeqCst) {
                        return;
                    }
                    let block = (i * 2_654_435_761) % BLOCKS;
                    cookie += 1;
                    let body = stamped(generation, block);
                    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        client.request(nbd::CMD_WRITE, cookie, block * 4096, 4096, &body)
                    })) {
                        Ok(0) => {
                            acked.lock().unwrap()[block as usize] = generation;
                            n_acked.fetch_add(1, Ordering::SeqCst);
                        }
                        // The server died mid-request: this write is not acknowledged.
                        _ => return,
                    }
                }
            }
        })
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(300);
    // Every block written at least once, most twice.
    while n_acked.load(Ordering::SeqCst) < 2 * BLOCKS {
        assert!(
            std::time::Instant::now() < deadline,
            "writes too slow: {} acknowledged",
            n_acked.load(Ordering::SeqCst)
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    dev.kill();
    stop.store(true, Ordering::SeqCst);
    writer.join().unwrap();
    let acked = acked.lock().unwrap().clone();
    let dev = Dev::start_in(&data, &[]);
    let addr = dev.nbd_addr();
    // The dead server's lease lapses within 10 s; then the volume attaches here.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let mut client = loop {
        let attempt = std::panic::catch_unwind(|| RawClient::connect(&addr, "gen"));
        if let Ok(c) = attempt {
            break c;
        }
        assert!(std::time::Instant::now() < deadline, "no attach after 30 s");
        std::thread::sleep(std::time::Duration::from_millis(300));
    };
    for block in 0..BLOCKS {
        let data = client.read_block(block);
        let found = stamp_of(&data, block).unwrap_or(0);
        assert!(
            found >= acked[block as usize],
            "block {block}: generation {found} read back, {} was acknowledged",
            acked[block as usize]
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_node_s_volume_shards_are_rebuilt_elsewhere() {
    let _lock = cluster_lock().await;
    let dev = Dev::start_env(
        &["--cluster", "--storage-nodes", "7"],
        &[("LAUSCHA__GATEWAY__MAINTENANCE__NODE_OUT_AFTER_S", "1")],
    );
    let uri = volume(&dev, "healing", "64M");
    // Attached all along: the engine's stripe lists are the ones of before the repair.
    let mut attached = RawClient::connect(&dev.nbd_addr(), "healing");
    let writes = ["write -P 0x31 0 8M", "write -P 0x32 16M 8M", "flush"];
    qemu_io(&uri, &writes);
    // Writes that cover extents whole become extents: their journal stripes adopted, or
    // written again where a journal stripe came out short of a shard (a node slower than
    // the straggler wait, under the load of the tests running beside this one).
    assert!(
        eventually(std::time::Duration::from_secs(60), async || metrics(
            &dev,
            &[
                "lauscha_volume_merges_adopted_total",
                "lauscha_volume_merges_rewritten_total"
            ]
        )
        .iter()
        .sum::<u64>()
            >= 4)
        .await,
        "the four written extents were not merged"
    );
    let referenced = |node: u64| {
        dev.admin(&["node", "shards", &node.to_string()])["referenced_shards"]
            .as_u64()
            .unwrap()
    };
    // The detach merges the journal into extents spread over the seven nodes.
    assert!(
        eventually(std::time::Duration::from_secs(60), async || referenced(2)
            > 0)
        .await,
        "no volume shard on node 2"
    );
    let storage = dev.processes("storage");
    kill_pid(storage[1]["pid"].as_u64().unwrap());
    assert!(
        eventually(std::time::Duration::from_secs(90), async || {
            dev.admin(&["repair"]);
            referenced(2) == 0
        })
        .await,
        "the volume's shards on node 2 were not rebuilt elsewhere"
    );
    let degraded = dev.admin(&["degraded"]);
    assert_eq!(degraded["stripes_degraded"], 0, "{degraded}");
    // Every extent is whole on the other six nodes: two more can go.
    kill_pid(storage[0]["pid"].as_u64().unwrap());
    kill_pid(storage[5]["pid"].as_u64().unwrap());
    // Through the engine attached before the repair moved the shards.
    for block in [0, 1000, 2047, 4096, 5000, 6143] {
        let expected = if block < 2048 { 0x31 } else { 0x32 };
        assert_eq!(
            attached.read_block(block),
            vec![expected; 4096],
            "block {block}"
        );
    }
    qemu_io(
        &uri,
        &[
            "read -P 0x31 0 8M",
            "read -P 0 8M 8M",
            "read -P 0x32 16M 8M",
        ],
    );
}

#[test]
fn a_name_created_again_is_never_served_by_the_engine_of_the_volume_it_replaced() {
    let dev = Dev::start(&[]);
    let addr = dev.nbd_addr();
    for tenant in ["stadt-jena", "stadt-gera"] {
        dev.admin(&["tenant", "create", tenant]);
    }
    let create_v = |tenant: &str| {
        dev.admin(&["volume", "create", "v", "--size", "16M", "--tenant", tenant]);
    };
    create_v("stadt-jena");
    qemu_io(
        &format!("nbd://{addr}/v"),
        &["write -P 0xaa 0 64k", "flush"],
    );
    dev.admin(&["volume", "snapshot", "v", "s", "--tenant", "stadt-jena"]);
    // A reader keeps stadt-jena's snapshot attached on this gateway ...
    let mut reader = RawClient::connect(&addr, "v@s");
    assert!(reader.read_block(0).iter().all(|&b| b == 0xaa));
    // Writes to a snapshot are refused, even those of no bytes.
    assert_eq!(
        reader.request(nbd::CMD_WRITE, 1, 0, 4096, &[1; 4096]),
        nbd::EPERM
    );
    assert_eq!(reader.request(nbd::CMD_WRITE, 2, 0, 0, &[]), nbd::EPERM);
    assert_eq!(reader.request(nbd::CMD_TRIM, 3, 0, 0, &[]), nbd::EPERM);
    assert_eq!(reader.request(nbd::CMD_READ, 4, 0, 0, &[]), 0);
    // ... while both names are deleted and created again by another tenant (once the
    // writer's detach, which follows qemu-io's exit, has released v's lease).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while dev.admin(&["volume", "list"])["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .any(|vol| vol["name"] == "v" && vol["attached"] == true)
    {
        assert!(std::time::Instant::now() < deadline, "v stays attached");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    dev.admin(&["volume", "delete", "v@s", "--tenant", "stadt-jena"]);
    dev.admin(&["volume", "delete", "v", "--tenant", "stadt-jena"]);
    create_v("stadt-gera");
    dev.admin(&["volume", "snapshot", "v", "s", "--tenant", "stadt-gera"]);
    // The new snapshot reads as its own (zeros), not as the attached old one.
    qemu_io_ro(&format!("nbd://{addr}/v@s"), &["read -P 0 0 64k"]);
}

/// A client that goes away during the handshake, right after NBD_OPT_GO (before or after
/// reading the reply), after it without NBD_CMD_DISC, or in the middle of a write's
/// payload, leaves no attachment behind: the
/// gateway detaches and gives the lease back, so another host can attach at once rather
/// than after the lease lapses (10 s), let alone never (an engine left attached renews
/// its lease for as long as the gateway runs).
#[test]
fn a_client_gone_during_or_right_after_the_handshake_leaves_no_lease_behind() {
    let dev = Dev::start(&[]);
    let addr = dev.nbd_addr();
    volume(&dev, "v", "16M");
    let attached = || {
        dev.admin(&["volume", "list"])["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|vol| vol["name"] == "v" && vol["attached"] == true)
    };
    // Under the 10 s lease: only a lease given back ends this soon.
    let wait_detached = |how: &str| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(8);
        while attached() {
            assert!(
                std::time::Instant::now() < deadline,
                "v is still attached 8 s after a client {how}"
            );
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    };
    let handshake_up_to_go = || {
        let mut tcp = TcpStream::connect(&addr).unwrap();
        let mut hello = [0u8; 18];
        tcp.read_exact(&mut hello).unwrap();
        tcp.write_all(&(nbd::CLIENT_FIXED_NEWSTYLE | nbd::CLIENT_NO_ZEROES).to_be_bytes())
            .unwrap();
        tcp.write_all(&nbd_option(nbd::OPT_GO, &nbd_info_request("v")))
            .unwrap();
        tcp
    };

    // Gone without reading the reply: the attach may finish after the socket closed.
    drop(handshake_up_to_go());
    wait_detached("sent NBD_OPT_GO and closed the connection");

    // Gone after the reply, without NBD_CMD_DISC.
    let mut tcp = handshake_up_to_go();
    loop {
        match read_nbd_option_reply(&mut tcp).0 {
            nbd::REP_ACK => break,
            nbd::REP_INFO => {}
            other => panic!("NBD_OPT_GO answered {other:#x}"),
        }
    }
    assert!(attached(), "attached once NBD_OPT_GO is acknowledged");
    drop(tcp);
    wait_detached("attached and closed the connection without NBD_CMD_DISC");

    // Gone in the middle of a write's payload, with whole writes sent before it and their
    // replies never read: the session ends in an error (a short payload), and still
    // detaches, after carrying out every request it received whole.
    let mut client = RawClient::connect(&addr, "v");
    let whole: Vec<(u64, u8)> = (0..8u64)
        .map(|i| (i * (64 << 10), 0x30 + i as u8))
        .collect();
    for (cookie, (offset, byte)) in whole.iter().enumerate() {
        let header = nbd::encode_request(&nbd::Request {
            flags: 0,
            command: nbd::CMD_WRITE,
            cookie: cookie as u64,
            offset: *offset,
            len: 64 << 10,
        });
        client.tcp.write_all(&header).unwrap();
        client.tcp.write_all(&vec![*byte; 64 << 10]).unwrap();
    }
    let cut_short = nbd::encode_request(&nbd::Request {
        flags: 0,
        command: nbd::CMD_WRITE,
        cookie: 99,
        offset: 1 << 20,
        len: 64 << 10,
    });
    client.tcp.write_all(&cut_short).unwrap();
    client.tcp.write_all(&[0xee; 4096]).unwrap();
    // Half-closed: the server meets the end of the stream inside the payload with the
    // whole writes in flight. Their replies are then read to the end, because a socket
    // closed with replies unread is reset, and a reset can drop bytes the server had
    // not read yet (it once lost two of the whole writes in CI).
    client.tcp.shutdown(std::net::Shutdown::Write).unwrap();
    let _ = client.tcp.read_to_end(&mut Vec::new());
    drop(client);
    wait_detached("closed the connection in the middle of a write's payload");
    let reads: Vec<String> = whole
        .iter()
        .map(|(offset, byte)| format!("read -P {byte} {offset} 64k"))
        .chain(std::iter::once("read -P 0 1M 64k".to_string()))
        .collect();
    let reads: Vec<&str> = reads.iter().map(String::as_str).collect();
    qemu_io(&format!("nbd://{addr}/v"), &reads);
    wait_detached("disconnected (qemu-io)");

    // And the volume is as usable as before. An attachment left by the first client (its
    // attach may have run after the first wait looked) would still hold the lease here.
    qemu_io(
        &format!("nbd://{addr}/v"),
        &["write -P 0x5a 0 64k", "read -P 0x5a 0 64k"],
    );
    wait_detached("disconnected (qemu-io)");
}

/// A server told to stop (SIGTERM) ends its NBD sessions as a client's disconnect would,
/// before metadata and the storage nodes of its process stop: every request it received
/// whole is answered, the journal merged and the lease given back. So a restarted server
/// attaches at once (a lease left behind refuses it for up to 10 s, and qemu's guest
/// waits that long), and every acknowledged write reads back. A client stalled in the
/// middle of a write's payload does not hold up the stop. With `--cluster` the
/// supervisor stops its children the last started first, the gateway before the roles it
/// needs.
#[test]
fn a_server_told_to_stop_ends_its_sessions_and_gives_the_leases_back() {
    told_to_stop(&[]);
}

#[test]
fn a_cluster_told_to_stop_ends_its_sessions_and_gives_the_leases_back() {
    told_to_stop(&["--cluster"]);
}

fn told_to_stop(dev_args: &[&str]) {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let mut dev = Dev::start_in(&data, dev_args);
    volume(&dev, "v", "16M");
    let mut client = RawClient::connect(&dev.nbd_addr(), "v");
    let writes: Vec<(u64, u8)> = (0..48u64)
        .map(|i| (i * (64 << 10), 0x10 + i as u8))
        .collect();
    // The first ones surely acknowledged; the rest in flight when the signal comes.
    let (answered, in_flight) = writes.split_at(8);
    for (cookie, (offset, byte)) in answered.iter().enumerate() {
        let error = client.request(
            nbd::CMD_WRITE,
            cookie as u64,
            *offset,
            64 << 10,
            &[*byte; 64 << 10],
        );
        assert_eq!(error, 0, "write at {offset}");
    }
    let mut pipelined = Vec::new();
    for (i, (offset, byte)) in in_flight.iter().enumerate() {
        pipelined.extend_from_slice(&nbd::encode_request(&nbd::Request {
            flags: 0,
            command: nbd::CMD_WRITE,
            cookie: (answered.len() + i) as u64,
            offset: *offset,
            len: 64 << 10,
        }));
        pipelined.extend_from_slice(&[*byte; 64 << 10]);
    }
    client.tcp.write_all(&pipelined).unwrap();
    // A second client stalled in the middle of a write's payload: it must not hold up
    // the stop (the drain would wait 30 s for it, and say so), and its write, never
    // received whole, is not carried out.
    let mut stalled = RawClient::connect(&dev.nbd_addr(), "v");
    stalled
        .tcp
        .write_all(&nbd::encode_request(&nbd::Request {
            flags: 0,
            command: nbd::CMD_WRITE,
            cookie: 7,
            offset: 8 << 20,
            len: 64 << 10,
        }))
        .unwrap();
    stalled.tcp.write_all(&[0xee; 4096]).unwrap();
    signal(u64::from(dev.child.id()), "TERM");

    // Replies until the server ends the session. Requests it had not read are never
    // answered (a reconnecting client sends them again), and if some were still unread
    // in its socket, closing it resets the connection instead of a clean end.
    let mut acknowledged: Vec<(u64, u8)> = answered.to_vec();
    client
        .tcp
        .set_read_timeout(Some(std::time::Duration::from_secs(60)))
        .unwrap();
    loop {
        let mut reply = [0u8; 16];
        match client.tcp.read_exact(&mut reply) {
            Ok(()) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::ConnectionReset
                ) =>
            {
                break;
            }
            Err(e) => panic!("the server neither answered nor ended the session: {e}"),
        }
        assert_eq!(&reply[..4], &nbd::SIMPLE_REPLY_MAGIC.to_be_bytes());
        let error = u32::from_be_bytes(reply[4..8].try_into().unwrap());
        let cookie = u64::from_be_bytes(reply[8..16].try_into().unwrap()) as usize;
        assert_eq!(error, 0, "write {cookie} answered {error} at shutdown");
        acknowledged.push(writes[cookie]);
    }
    let status = dev.child.wait().unwrap();
    assert!(status.success(), "lauscha dev ended with {status}");
    drop(stalled);
    // The gateway logs to dev.log, or with --cluster to logs/gateway.log.
    let mut log = std::fs::read_to_string(data.join("dev.log")).unwrap();
    if let Ok(gateway_log) = std::fs::read_to_string(data.join("logs/gateway.log")) {
        log.push_str(&gateway_log);
    }
    for complaint in [
        "merging the journal failed",
        "releasing the lease failed",
        "still open at the drain timeout",
        // The supervisor of --cluster, of a child that did not stop in time.
        "killing it",
    ] {
        assert!(
            !log.contains(complaint),
            "the shutdown logged {complaint:?}:\n{log}"
        );
    }

    let dev = Dev::start_in(&data, dev_args);
    let attached = dev.admin(&["volume", "list"])["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .any(|vol| vol["name"] == "v" && vol["attached"] == true);
    assert!(
        !attached,
        "the lease outlived the server that was told to stop"
    );
    let reads: Vec<String> = acknowledged
        .iter()
        .map(|(offset, byte)| format!("read -P {byte} {offset} 64k"))
        .chain(std::iter::once("read -P 0 8M 64k".to_string()))
        .collect();
    let reads: Vec<&str> = reads.iter().map(String::as_str).collect();
    // At once: no lease stands in the way (wait_until_attachable is for crashed servers).
    qemu_io(&format!("nbd://{}/v", dev.nbd_addr()), &reads);
}

/// A second stop signal during the graceful stop means "now". With metadata paused, a
/// gateway told to stop cannot end its session (the detach merges the journal and gives
/// the lease back through metadata) and would wait out its metadata timeouts; a second
/// SIGTERM ends it at once. So for the `--cluster` supervisor, which then kills its
/// children instead of giving each its patience. Nothing acknowledged is lost: the write
/// reads back once the lease has expired.
#[test]
fn a_second_stop_signal_ends_the_graceful_stop_at_once() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let mut dev = Dev::start_in(&data, &["--cluster"]);
    volume(&dev, "v", "16M");
    let mut client = RawClient::connect(&dev.nbd_addr(), "v");
    assert_eq!(client.request(nbd::CMD_WRITE, 1, 0, 4096, &[0x5a; 4096]), 0);
    let pid = |process: &serde_json::Value| process["pid"].as_u64().unwrap();
    let meta = pid(&dev.processes("metadata")[0]);
    let gateway = pid(&dev.processes("gateway")[0]);
    let storage: Vec<u64> = dev.processes("storage").iter().map(pid).collect();
    signal(meta, "STOP");

    // Told to stop, the gateway stops accepting connections, then waits for its session.
    signal(gateway, "TERM");
    let nbd_addr = dev.nbd_addr();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while TcpStream::connect(&nbd_addr).is_ok() {
        assert!(
            std::time::Instant::now() < deadline,
            "the gateway still accepts connections 30 s after SIGTERM"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    signal(gateway, "TERM");
    assert!(
        dies_within(gateway, std::time::Duration::from_secs(10)),
        "the gateway outlived a second SIGTERM by 10 s"
    );
    let gateway_log = std::fs::read_to_string(data.join("logs/gateway.log")).unwrap();
    assert!(
        gateway_log.contains("second stop signal: exiting now"),
        "the gateway did not say why it ended:\n{gateway_log}"
    );
    drop(client);

    // The supervisor stops the children the last started first: the gateway (gone), the
    // storage nodes, then metadata, which is paused and would get 10 s.
    signal(u64::from(dev.child.id()), "TERM");
    assert!(
        dies_within(*storage.last().unwrap(), std::time::Duration::from_secs(30)),
        "the supervisor did not stop the last storage node"
    );
    signal(u64::from(dev.child.id()), "TERM");
    let status = dev.child.wait().unwrap();
    assert!(
        !status.success(),
        "a forced stop must not look like a clean one"
    );
    assert!(
        dies_within(meta, std::time::Duration::from_secs(10)),
        "the paused metadata process outlived its supervisor"
    );
    let dev_log = std::fs::read_to_string(data.join("dev.log")).unwrap();
    assert!(
        dev_log.contains("second stop signal: killing the children"),
        "the supervisor did not say why it ended:\n{dev_log}"
    );
    for node in storage {
        assert!(dies_within(node, std::time::Duration::from_secs(10)));
    }

    let dev = Dev::start_in(&data, &["--cluster"]);
    let uri = format!("nbd://{}/v", dev.nbd_addr());
    wait_until_attachable(&uri);
    qemu_io(&uri, &["read -P 0x5a 0 4k"]);
}

/// Counters from the gateway's `/metrics`, in the order of `names`.
fn metrics(dev: &Dev, names: &[&str]) -> Vec<u64> {
    let admin = dev.cluster["admin_endpoint"]
        .as_str()
        .expect("admin endpoint");
    metrics_at(admin, names)
}

/// The named counters of the gateway whose admin API is at `admin`.
fn metrics_at(admin: &str, names: &[&str]) -> Vec<u64> {
    let (status, _, body) = raw_http(admin, "GET", "/metrics", &[], b"");
    assert_eq!(status, 200);
    let text = String::from_utf8(body).unwrap();
    names
        .iter()
        .map(|name| {
            text.lines()
                .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
                .unwrap_or_else(|| panic!("{name} missing from /metrics:\n{text}"))
        })
        .collect()
}

/// The gateway's block cache (`/metrics`): (hits, misses).
fn read_cache_counts(dev: &Dev) -> (u64, u64) {
    let v = metrics(
        dev,
        &[
            "lauscha_read_cache_hits_total",
            "lauscha_read_cache_misses_total",
        ],
    );
    (v[0], v[1])
}

/// Shard reads answered as verified slices (`/metrics`).
fn slice_reads(dev: &Dev) -> u64 {
    metrics(dev, &["lauscha_read_slices_total"])[0]
}

/// Files anywhere below a directory named `dir_name` (`shards`, `quarantine`) under `dir`
/// whose names end with `suffix`.
fn files_under(dir: &std::path::Path, dir_name: &str, suffix: &str) -> Vec<std::path::PathBuf> {
    fn walk(
        p: &std::path::Path,
        inside: bool,
        dir_name: &str,
        suffix: &str,
        out: &mut Vec<std::path::PathBuf>,
    ) {
        for e in std::fs::read_dir(p).into_iter().flatten().flatten() {
            let path = e.path();
            let here = inside || e.file_name() == dir_name;
            if path.is_dir() {
                walk(&path, here, dir_name, suffix, out);
            } else if here && e.file_name().to_string_lossy().ends_with(suffix) {
                out.push(path);
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, false, dir_name, suffix, &mut out);
    out
}

/// A 4 KiB read that misses the cache is a verified slice (`ReadShardSlice`). A byte
/// flipped on disk in the block it comes from is found by the node, which checks the
/// block in the pass that computes the proof: the read is answered from parity with the
/// right bytes, and the node quarantines the shard.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_byte_flipped_under_a_small_read_is_read_around_and_quarantined() {
    let dev = Dev::start(&["--read-cache-bytes", "0"]);
    let uri = volume(&dev, "rot", "4M");
    qemu_io(&uri, &["write -P 0x21 0 4M"]);
    // One stripe (4 data shards of 1 MiB): data shard 1 holds volume bytes [1M, 2M).
    let shard1 = files_under(&dev.data_dir, "shards", ".1");
    assert_eq!(shard1.len(), 1, "one stripe: {shard1:?}");
    let name = shard1[0].file_name().unwrap().to_string_lossy().to_string();
    let mut bytes = std::fs::read(&shard1[0]).unwrap();
    let shard_len = u64::from_le_bytes(bytes[8..16].try_into().unwrap());
    assert_eq!(shard_len, 1 << 20);
    let header = 56 + 32 * shard_len.div_ceil(65536);
    let flipped_at = 300_000u64;
    bytes[(header + flipped_at) as usize] ^= 0x5a;
    std::fs::write(&shard1[0], bytes).unwrap();

    let slices_before = slice_reads(&dev);
    let block_start = ((1 << 20) + flipped_at) / 4096 * 4096;
    qemu_io(&uri, &[&format!("read -P 0x21 {block_start} 4k")]);
    assert!(slice_reads(&dev) > slices_before, "the read went as slices");
    let quarantined = eventually(std::time::Duration::from_secs(30), async || {
        files_under(&dev.data_dir, "shards", ".1").is_empty()
            && files_under(&dev.data_dir, "quarantine", "")
                .iter()
                .any(|q| {
                    q.file_name()
                        .unwrap()
                        .to_string_lossy()
                        .starts_with(&format!("{name}."))
                })
    })
    .await;
    assert!(quarantined, "{name} was not quarantined");
}

/// Sequential writes smaller than an extent become the extent as they were written: the
/// merge adopts their stripes instead of writing the extent again. The adopted stripes
/// must then belong to the extent: garbage collection of the merged journal leaves them,
/// and a new attach reads them back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sequential_writes_become_extents_without_being_written_again() {
    // The read cache off: the last reads must come from the nodes.
    let dev = Dev::start_env(
        &["--read-cache-bytes", "0"],
        &[("LAUSCHA__GATEWAY__MAINTENANCE__GC_GRACE_S", "1")],
    );
    let uri = volume(&dev, "seq", "8M");
    let empty = shard_bytes(&dev.data_dir);
    let merges = || {
        metrics(
            &dev,
            &[
                "lauscha_volume_merges_adopted_total",
                "lauscha_volume_merges_rewritten_total",
            ],
        )
    };
    assert_eq!(merges(), [0, 0]);
    // Extent 0: the first 1 MiB piece written twice, then the others out of order. It is
    // covered (so due) with the last one, and the visible pieces then tile it: its final
    // version is the adopted one. Extent 1: two halves, then a 4 KiB block inside one of
    // them, which no tiling can take: written again, whenever the merges run.
    qemu_io(
        &uri,
        &[
            "write -P 0x50 0 1M",
            "write -P 0x54 0 1M",
            "write -P 0x52 2M 1M",
            "write -P 0x51 1M 1M",
            "write -P 0x53 3M 1M",
            "write -P 0x60 4M 2M",
            "write -P 0x61 6M 2M",
            "write -P 0x62 5M 4k",
        ],
    );
    // The server merges what is left when the client has gone, after qemu-io exits.
    let both = eventually(std::time::Duration::from_secs(30), async || {
        merges().iter().all(|n| *n >= 1)
    })
    .await;
    assert!(both, "merges adopted and rewritten: {:?}", merges());
    let expected = [
        "read -P 0x54 0 1M",
        "read -P 0x51 1M 1M",
        "read -P 0x52 2M 1M",
        "read -P 0x53 3M 1M",
        "read -P 0x60 4M 1M",
        "read -P 0x62 5M 4k",
        "read -P 0x60 5124k 1020k",
        "read -P 0x61 6M 2M",
    ];
    qemu_io(&uri, &expected);
    // Once the journal's leftovers are collected, 8 MiB at 4+2 is 12 MiB of shards (and
    // their headers).
    let written: u64 = 12 << 20;
    let settled = eventually(std::time::Duration::from_secs(60), async || {
        dev.admin(&["repair"]);
        let b = shard_bytes(&dev.data_dir);
        b >= empty + written && b < empty + written + (1 << 20)
    })
    .await;
    assert!(
        settled,
        "{} bytes of shards, {empty} before writing",
        shard_bytes(&dev.data_dir)
    );
    qemu_io(&uri, &expected);
}

/// Small reads come from the block cache once read, and a rewritten block is never
/// answered from the cache with its old bytes (each qemu-io run attaches and, when it
/// detaches, merges its writes into a new extent version).
#[test]
fn the_read_cache_answers_repeated_reads_and_never_with_old_bytes() {
    let dev = Dev::start(&[]);
    let uri = volume(&dev, "cached", "64M");
    // 1 MiB of other bytes: shards are content-addressed in the cache, so equal shards
    // would answer for each other.
    qemu_io(&uri, &["write -P 0x11 0 8M", "write -P 0x12 1M 1M"]);
    let before = read_cache_counts(&dev);
    qemu_io(
        &uri,
        &[
            "read -P 0x11 4k 4k",
            "read -P 0x11 4k 4k",
            "read -P 0x11 5M 4k",
        ],
    );
    let after = read_cache_counts(&dev);
    assert!(
        after.1 > before.1,
        "the first reads went to the nodes: {after:?}"
    );
    assert!(after.0 > before.0, "the repeated read was a hit: {after:?}");
    // Until the cache has seen whether prefetching pays, a miss reads its whole 64 KiB
    // block and the reads of the rest of it hit. (1 MiB is where a shard begins.)
    let (cache_before, slices_before) = (read_cache_counts(&dev), slice_reads(&dev));
    qemu_io(
        &uri,
        &[
            "read -P 0x12 1M 4k",
            "read -P 0x12 1040k 4k",
            "read -P 0x12 1032k 4k",
        ],
    );
    let (cache_after, slices_after) = (read_cache_counts(&dev), slice_reads(&dev));
    assert_eq!(
        (
            cache_after.0 - cache_before.0,
            cache_after.1 - cache_before.1,
            slices_after - slices_before
        ),
        (2, 1, 0),
        "(hits, misses, slices): a block read and two hits"
    );
    // Rewritten and merged: the same offsets now hold other bytes in another stripe.
    qemu_io(&uri, &["write -P 0x22 4k 4k", "write -P 0x33 5M 1M"]);
    qemu_io(
        &uri,
        &[
            "read -P 0x22 4k 4k",
            "read -P 0x11 0 4k",
            "read -P 0x11 8k 4k",
            "read -P 0x33 5M 4k",
            "read -P 0x22 4k 4k",
        ],
    );
    // With the cache off every read goes to the nodes, and the bytes are the same.
    drop(dev);
    let dev = Dev::start(&["--read-cache-bytes", "0"]);
    let uri = volume(&dev, "uncached", "64M");
    qemu_io(&uri, &["write -P 0x44 0 4M"]);
    qemu_io(&uri, &["read -P 0x44 4k 4k", "read -P 0x44 4k 4k"]);
    assert_eq!(read_cache_counts(&dev), (0, 0));
    assert_eq!(slice_reads(&dev), 2, "uncached small reads are slices");
}

/// A TCP proxy to `upstream` that passes what clients send at once, and holds back what
/// comes back while `held` is true: a metadata leader that applies a command but whose
/// answer never arrives in time. Returns its address.
async fn reply_holding_proxy(
    upstream: String,
    held: tokio::sync::watch::Receiver<bool>,
) -> std::net::SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let (upstream, mut held) = (upstream.clone(), held.clone());
            tokio::spawn(async move {
                let Ok(server) = tokio::net::TcpStream::connect(&upstream).await else {
                    return;
                };
                let (mut from_client, mut to_client) = client.into_split();
                let (mut from_server, mut to_server) = server.into_split();
                tokio::spawn(async move {
                    let _ = tokio::io::copy(&mut from_client, &mut to_server).await;
                    let _ = to_server.shutdown().await;
                });
                let mut buf = vec![0u8; 64 << 10];
                loop {
                    let n = match from_server.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    };
                    // Read, then held: a reply already on its way when the hold began
                    // waits too.
                    if held.wait_for(|h| !*h).await.is_err()
                        || to_client.write_all(&buf[..n]).await.is_err()
                    {
                        return;
                    }
                }
            });
        }
    });
    addr
}

/// A second gateway whose only way to metadata is a [`reply_holding_proxy`], which holds
/// metadata's replies while `hold` says so.
struct HeldGateway {
    hold: tokio::sync::watch::Sender<bool>,
    nbd_addr: String,
    admin: String,
    _gateway: Restarted,
    /// Runs the proxy.
    _rt: tokio::runtime::Runtime,
}

fn held_gateway(dev: &Dev, name: &str) -> HeldGateway {
    let meta = dev.processes("metadata")[0]["listen"]
        .as_str()
        .unwrap()
        .to_string();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (hold, held) = tokio::sync::watch::channel(false);
    let proxy = rt.block_on(reply_holding_proxy(meta, held));
    let toml = format!(
        "[gateway]\ns3_listen = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\nnbd_listen = \"127.0.0.1:0\"\nmetadata_endpoints = [\"http://{proxy}\"]\n"
    );
    let (gateway, ready) = start_server(&dev.data_dir.join(name), name, &toml);
    let listen = |key: &str| ready[key].as_str().expect(key).to_string();
    HeldGateway {
        hold,
        nbd_addr: listen("nbd_listen"),
        admin: listen("admin_listen"),
        _gateway: gateway,
        _rt: rt,
    }
}

/// Issue 6, point 3, for a failure that is not a crash: writes whose journal commits
/// metadata applied, but whose answers never reached the NBD server in time (held back by
/// a proxy), are answered EIO. The client then writes one of those blocks again and is
/// acknowledged. That later write must be what the block holds: when the journal is
/// merged at detach, and when the volume is attached again elsewhere. Without a new
/// epoch and a fresh read of the journal, the entry of the failed write stays in the
/// journal below the merged one and is replayed over it at the next attach. The other
/// failed write (1 MiB: its bytes are a stripe set on the nodes, not inline) landed, so
/// its stripes must have been kept: it reads back whole.
#[test]
fn a_write_answered_eio_that_landed_anyway_never_replays_over_a_later_one() {
    let dev = Dev::start(&["--cluster"]);
    dev.admin(&["volume", "create", "held", "--size", "64M"]);
    let HeldGateway {
        hold,
        nbd_addr,
        admin,
        ..
    } = &held_gateway(&dev, "held-gateway");

    let mut client = RawClient::connect(nbd_addr, "held");
    assert_eq!(client.request(nbd::CMD_WRITE, 1, 0, 4096, &[0x11; 4096]), 0);
    // A large write just before the hold: the gateway has a cluster map (fetched through
    // metadata; a stale one is used while a refresh goes unanswered) for the large write
    // under the hold, which then stores its stripes and only its commit goes unanswered.
    assert_eq!(
        client.request(nbd::CMD_WRITE, 2, 2 << 20, 1 << 20, &[0x22; 1 << 20]),
        0
    );
    hold.send(true).unwrap();
    // Applied by metadata, unanswered until the server gives up on them.
    assert_eq!(
        client.pipelined_writes(&[(0, vec![0xaa; 4096]), (1 << 20, vec![0xcc; 1 << 20])]),
        [nbd::EIO, nbd::EIO]
    );
    hold.send(false).unwrap();
    assert_eq!(client.request(nbd::CMD_WRITE, 3, 0, 4096, &[0xbb; 4096]), 0);
    assert_eq!(client.read_block(0), vec![0xbb; 4096]);
    // The last connection goes: the server merges the whole journal and detaches.
    drop(client);
    let uri = format!("nbd://{}/held", dev.nbd_addr());
    wait_until_attachable(&uri);
    qemu_io(
        &uri,
        &[
            "read -P 0xbb 0 4k",
            "read -P 0xcc 1M 1M",
            "read -P 0x22 2M 1M",
        ],
    );
    let [unknown, new_epochs, found] = metrics_at(
        admin,
        &[
            "lauscha_volume_unknown_outcomes_total",
            "lauscha_volume_new_epochs_total",
            "lauscha_volume_journal_entries_found_total",
        ],
    )[..] else {
        unreachable!()
    };
    assert!(unknown >= 1, "no unknown outcome: the test did not test");
    assert!(new_epochs >= 1, "no new epoch after the unknown outcome");
    assert_eq!(
        found, 2,
        "the writes answered EIO were applied and must be found"
    );
}

/// Reads of an attached volume need the cluster map (where the shards are), not metadata:
/// while metadata does not answer (held back by a proxy here, as during a leader
/// election), a gateway whose map has gone stale reads with the map it has. Before, the
/// first read after the map's 2 s of freshness waited for metadata, and failed with EIO
/// when it did not answer. They go on only while the lease surely holds: once no renewal
/// sent in the last 8 s (the 10 s lease less a margin for clock skew) was granted, another
/// server may have taken the volume over, and reads are refused (EIO) until metadata
/// answers again.
#[test]
fn reads_go_on_with_the_cached_cluster_map_while_metadata_does_not_answer() {
    let dev = Dev::start(&["--cluster"]);
    dev.admin(&["volume", "create", "mapped", "--size", "64M"]);
    // Merged into extents when qemu-io detaches: reads of it go to the storage nodes.
    // A byte value per extent: the read cache is keyed by content, and extents alike
    // would answer each other's reads.
    let writes: Vec<String> = (0..5u64)
        .map(|e| format!("write -P {} {}M 4M", 0x50 + e, e * 4))
        .collect();
    let mut commands: Vec<&str> = writes.iter().map(String::as_str).collect();
    commands.push("flush");
    qemu_io(&format!("nbd://{}/mapped", dev.nbd_addr()), &commands);
    let pattern = |block: u64| vec![0x50 + (block / 1024) as u8; 4096];
    let HeldGateway {
        hold,
        nbd_addr,
        admin,
        ..
    } = &held_gateway(&dev, "mapped-gateway");
    wait_until_attachable(&format!("nbd://{nbd_addr}/mapped"));
    let mut client = RawClient::connect(nbd_addr, "mapped");
    assert_eq!(client.read_block(0), pattern(0));
    let misses = "lauscha_read_cache_misses_total";
    let misses_before = metrics_at(admin, &[misses])[0];

    hold.send(true).unwrap();
    // Not a race being waited out: the map must age past its 2 s of freshness. Not much
    // more: the lease, last renewed up to 3.3 s before the hold, lets reads go on for 8 s
    // after that renewal was sent.
    std::thread::sleep(std::time::Duration::from_millis(2100));
    // Blocks in three other extents: none is in the read cache.
    for block in [1024 + 3, 2048 + 17, 3072 + 200] {
        assert_eq!(client.read_block(block), pattern(block), "block {block}");
    }
    // Each a read of the extent's shards (the extents were merged at qemu-io's detach),
    // not of journal bytes kept in memory.
    assert!(
        metrics_at(admin, &[misses])[0] >= misses_before + 3,
        "the reads did not go to the storage nodes"
    );
    // Still held: the lease runs out, and reads are refused.
    let read_error = |client: &mut RawClient, block: u64| {
        client.request(nbd::CMD_READ, block, block * 4096, 4096, &[])
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while read_error(&mut client, 3072 + 200) == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "reads still served 20 s after metadata stopped answering"
        );
        std::thread::sleep(std::time::Duration::from_millis(250));
    }
    hold.send(false).unwrap();
    // A renewal granted, and reads again, in an extent not read before.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while read_error(&mut client, 4096 + 33) != 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "reads still refused 30 s after metadata answered again"
        );
        std::thread::sleep(std::time::Duration::from_millis(250));
    }
    assert_eq!(client.read_block(4096 + 34), pattern(4096 + 34));
}

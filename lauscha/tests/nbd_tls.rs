//! NBD over TLS with client certificates, through real GnuTLS clients (nbdinfo, nbdcopy,
//! qemu-io): a certificate's CN names a tenant, and a connection sees and attaches that
//! tenant's volumes only; without TLS, or with a certificate from another CA, nothing.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::*;
use lauscha_core::nbd;
use lauscha_gateway::MAX_UNAUTHENTICATED_PER_ADDRESS;
use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, CertifiedIssuer, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, RevocationReason, RevokedCertParams, SerialNumber,
};

/// A test PKI: a CA, the server's certificate for 127.0.0.1, and client certificate
/// directories in the layout libnbd and qemu read (`ca-cert.pem`, `client-cert.pem`,
/// `client-key.pem`).
struct Pki {
    dir: tempfile::TempDir,
    ca: CertifiedIssuer<'static, KeyPair>,
}

impl Pki {
    fn new() -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let ca = ca("Lauscha test CA");
        std::fs::write(dir.path().join("ca-cert.pem"), ca.pem()).unwrap();
        let key = KeyPair::generate().unwrap();
        let mut server =
            CertificateParams::new(vec!["127.0.0.1".into(), "localhost".into()]).unwrap();
        server
            .distinguished_name
            .push(DnType::CommonName, "lauscha-gateway");
        server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let cert = server.signed_by(&key, &ca).unwrap();
        std::fs::write(dir.path().join("server-cert.pem"), cert.pem()).unwrap();
        std::fs::write(dir.path().join("server-key.pem"), key.serialize_pem()).unwrap();
        Pki { dir, ca }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The `lauscha dev` flags serving NBD only over TLS with this PKI.
    fn dev_flags(&self) -> Vec<String> {
        let p = |n: &str| self.path(n).display().to_string();
        vec![
            "--nbd-tls-cert".into(),
            p("server-cert.pem"),
            "--nbd-tls-key".into(),
            p("server-key.pem"),
            "--nbd-tls-client-ca".into(),
            p("ca-cert.pem"),
        ]
    }

    /// A client directory whose certificate says `CN=common_name`, signed by `issuer`
    /// (this PKI's CA unless given another).
    fn client(
        &self,
        dir_name: &str,
        common_name: &str,
        issuer: Option<&CertifiedIssuer<'static, KeyPair>>,
    ) -> PathBuf {
        let issuer = issuer.unwrap_or(&self.ca);
        let dir = self.path(dir_name);
        std::fs::create_dir_all(&dir).unwrap();
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.serial_number = Some(serial_of(dir_name));
        let cert = params.signed_by(&key, issuer).unwrap();
        // The client verifies the server against our CA, whoever signed its own.
        std::fs::write(dir.join("ca-cert.pem"), self.ca.pem()).unwrap();
        std::fs::write(dir.join("client-cert.pem"), cert.pem()).unwrap();
        std::fs::write(dir.join("client-key.pem"), key.serialize_pem()).unwrap();
        dir
    }
}

impl Pki {
    /// Writes this CA's CRL revoking the client certificates of `dir_names` to `path`.
    fn write_crl(&self, path: &Path, dir_names: &[&str]) {
        let params = CertificateRevocationListParams {
            this_update: rcgen::date_time_ymd(2025, 1, 1),
            next_update: rcgen::date_time_ymd(2099, 1, 1),
            crl_number: SerialNumber::from(dir_names.len() as u64 + 1),
            issuing_distribution_point: None,
            revoked_certs: dir_names
                .iter()
                .map(|name| RevokedCertParams {
                    serial_number: serial_of(name),
                    revocation_time: rcgen::date_time_ymd(2025, 6, 1),
                    reason_code: Some(RevocationReason::KeyCompromise),
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: rcgen::KeyIdMethod::Sha256,
        };
        let crl = params.signed_by(&self.ca).unwrap();
        std::fs::write(path, crl.pem().unwrap()).unwrap();
    }
}

/// A client certificate's serial number, from its directory name (unique in a test).
fn serial_of(dir_name: &str) -> SerialNumber {
    SerialNumber::from_slice(dir_name.as_bytes())
}

fn ca(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap()
}

#[track_caller]
fn must_fail(program: &str, args: &[&str]) -> String {
    let out = tool_output(program, args);
    assert!(
        !out.status.success(),
        "{program} {args:?} succeeded:\n{}",
        output_text(&out)
    );
    output_text(&out)
}

/// libnbd's URI for `export` with the certificates in `certs`.
fn uri(addr: &str, export: &str, certs: &Path) -> String {
    format!(
        "nbds://{addr}/{export}?tls-certificates={}",
        certs.display()
    )
}

/// qemu-io on `export` over TLS with the certificates in `certs`.
fn qemu_io(addr: &str, export: &str, certs: &Path, commands: &[&str]) -> Output {
    let (host, port) = addr.rsplit_once(':').unwrap();
    let object = format!(
        "tls-creds-x509,id=tls0,dir={},endpoint=client",
        certs.display()
    );
    let image = format!(
        "driver=nbd,server.type=inet,server.host={host},server.port={port},export={export},tls-creds=tls0"
    );
    let mut args = vec!["--object", &object, "--image-opts"];
    if export.contains('@') {
        args.push("-r"); // a snapshot is served read-only
    }
    for c in commands {
        args.extend(["-c", c]);
    }
    args.push(&image);
    tool_output("qemu-io", &args)
}

#[test]
fn each_tenant_s_certificate_reaches_its_volumes_only() {
    let pki = Pki::new();
    let flags = pki.dev_flags();
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let dev = Dev::start(&flags);
    assert!(
        dev.cluster["nbd_endpoint"]
            .as_str()
            .unwrap()
            .starts_with("nbds://"),
        "{}",
        dev.cluster
    );
    let addr = dev.nbd_addr();
    for tenant in ["stadt-jena", "stadt-gera"] {
        dev.admin(&["tenant", "create", tenant]);
    }
    dev.admin(&[
        "volume",
        "create",
        "jena-disk",
        "--size",
        "64M",
        "--tenant",
        "stadt-jena",
    ]);
    dev.admin(&[
        "volume",
        "create",
        "jena-backup",
        "--size",
        "16M",
        "--tenant",
        "stadt-jena",
    ]);
    dev.admin(&[
        "volume",
        "create",
        "gera-disk",
        "--size",
        "32M",
        "--tenant",
        "stadt-gera",
    ]);
    let jena = pki.client("jena", "stadt-jena", None);
    let gera = pki.client("gera", "stadt-gera", None);

    // LIST shows the certificate's tenant's volumes, and only those.
    assert_eq!(export_names(&addr, &jena), ["jena-backup", "jena-disk"]);
    let info = run("nbdinfo", &["--json", &uri(&addr, "jena-disk", &jena)]);
    let info: serde_json::Value = serde_json::from_str(&info).unwrap();
    assert_eq!(info["exports"][0]["export-size"], 64 << 20, "{info}");
    assert_eq!(info["exports"][0]["can_flush"], true, "{info}");

    // Data through TLS: qemu-io patterns, and nbdcopy both ways.
    let out = qemu_io(
        &addr,
        "jena-disk",
        &jena,
        &[
            "write -P 0xab 0 1M",
            "write -P 0xcd -f 8M 64k",
            "flush",
            "read -P 0xab 0 1M",
            "read -P 0xcd 8M 64k",
        ],
    );
    assert!(out.status.success(), "{}", output_text(&out));
    assert!(
        !output_text(&out).contains("Pattern verification failed"),
        "{}",
        output_text(&out)
    );
    let image = pki.path("random.img");
    let data = payload(7, 4 << 20);
    std::fs::write(&image, &data).unwrap();
    run(
        "nbdcopy",
        &[image.to_str().unwrap(), &uri(&addr, "jena-backup", &jena)],
    );
    let back = pki.path("back.img");
    run(
        "nbdcopy",
        &[&uri(&addr, "jena-backup", &jena), back.to_str().unwrap()],
    );
    let back = std::fs::read(&back).unwrap();
    assert_eq!(back.len(), 16 << 20);
    assert!(
        back[..data.len()] == data[..],
        "nbdcopy round trip over TLS differs"
    );
    assert!(back[data.len()..].iter().all(|&b| b == 0));

    // Another tenant's certificate: the volume does not exist for it, in every client.
    let refused = must_fail("nbdinfo", &["--json", &uri(&addr, "jena-disk", &gera)]);
    // NBD_REP_ERR_UNKNOWN, which libnbd reports as ENOENT: the same as a missing volume.
    assert!(refused.contains("No such file"), "{refused}");
    let missing = must_fail("nbdinfo", &["--json", &uri(&addr, "no-such-disk", &gera)]);
    assert!(missing.contains("No such file"), "{missing}");
    let out = qemu_io(&addr, "jena-disk", &gera, &["read -P 0xab 0 4k"]);
    assert!(!out.status.success(), "{}", output_text(&out));
    assert!(
        output_text(&out).contains("no volume \"jena-disk\" for tenant stadt-gera"),
        "{}",
        output_text(&out)
    );
    assert_eq!(export_names(&addr, &gera), ["gera-disk"]);
    let out = qemu_io(&addr, "gera-disk", &gera, &["read -P 0 0 1M"]);
    assert!(out.status.success(), "{}", output_text(&out));
    // Snapshots belong to their volume's tenant.
    dev.admin(&[
        "volume",
        "snapshot",
        "jena-disk",
        "mon",
        "--tenant",
        "stadt-jena",
    ]);
    let refused = must_fail("nbdinfo", &["--json", &uri(&addr, "jena-disk@mon", &gera)]);
    assert!(refused.contains("No such file"), "{refused}");
    let out = qemu_io(&addr, "jena-disk@mon", &jena, &["read -P 0xab 0 1M"]);
    assert!(
        out.status.success() && !output_text(&out).contains("Pattern verification failed"),
        "{}",
        output_text(&out)
    );

    // A certificate from another CA fails the handshake; one whose CN names no tenant
    // is refused by policy with the reason.
    let rogue_ca = ca("Rogue CA");
    let rogue = pki.client("rogue", "stadt-jena", Some(&rogue_ca));
    must_fail("nbdinfo", &["--json", &uri(&addr, "jena-disk", &rogue)]);
    let nameless = pki.client("nameless", "Stadt Jena", None);
    let refused = must_fail("nbdinfo", &["--json", &uri(&addr, "jena-disk", &nameless)]);
    assert!(!refused.contains("No such file"), "{refused}");
    // NBD_REP_ERR_POLICY; qemu shows the server's reason.
    let out = qemu_io(&addr, "jena-disk", &nameless, &["read 0 4k"]);
    assert!(!out.status.success(), "{}", output_text(&out));
    assert!(
        output_text(&out).contains("not a tenant name"),
        "{}",
        output_text(&out)
    );

    // Plain NBD gets nothing: every client refuses or is refused.
    let refused = must_fail("nbdinfo", &["--json", &format!("nbd://{addr}/jena-disk")]);
    assert!(refused.contains("TLS"), "{refused}");
    // A client that cannot negotiate TLS (no fixed newstyle) is dropped at once.
    let mut tcp = raw_connect(&addr, 0);
    assert_closed(&mut tcp);
    // Plaintext sent behind STARTTLS never reaches negotiation: the server hangs up.
    let mut tcp = raw_connect(&addr, nbd::CLIENT_FIXED_NEWSTYLE);
    let mut smuggled = nbd_option(nbd::OPT_STARTTLS, &[]);
    smuggled.extend(nbd_option(nbd::OPT_LIST, &[]));
    tcp.write_all(&smuggled).unwrap();
    assert_eq!(read_nbd_option_reply(&mut tcp).0, nbd::REP_ACK);
    // Refused before the handshake (bytes already buffered), or by the handshake itself
    // (a TLS alert at most): never an NBD reply.
    let mut rest = Vec::new();
    tcp.read_to_end(&mut rest)
        .or_else(|e| match e.kind() {
            std::io::ErrorKind::ConnectionReset => Ok(0),
            _ => Err(e),
        })
        .expect("the server closes the connection");
    assert!(
        !rest.starts_with(&nbd::OPT_REPLY_MAGIC.to_be_bytes()),
        "{rest:?}"
    );

    let mut tcp = raw_connect(&addr, nbd::CLIENT_FIXED_NEWSTYLE | nbd::CLIENT_NO_ZEROES);
    let go = nbd_info_request("jena-disk");
    for (option, data) in [
        (nbd::OPT_GO, &go[..]),
        (nbd::OPT_INFO, &go[..]),
        (nbd::OPT_LIST, &[][..]),
    ] {
        send_option(&mut tcp, option, data);
        let (reply, message) = read_nbd_option_reply(&mut tcp);
        assert_eq!(reply, nbd::REP_ERR_TLS_REQD, "option {option}");
        assert!(String::from_utf8_lossy(&message).contains("requires TLS"));
    }
    send_option(&mut tcp, nbd::OPT_STARTTLS, b"junk");
    assert_eq!(read_nbd_option_reply(&mut tcp).0, nbd::REP_ERR_INVALID);
    // EXPORT_NAME has no error reply: the server hangs up.
    send_option(&mut tcp, nbd::OPT_EXPORT_NAME, b"jena-disk");
    assert_closed(&mut tcp);

    // Through all of that the owner's data stayed as written.
    let out = qemu_io(
        &addr,
        "jena-disk",
        &jena,
        &["read -P 0xab 0 1M", "read -P 0 1M 1M"],
    );
    assert!(
        out.status.success() && !output_text(&out).contains("Pattern verification failed"),
        "{}",
        output_text(&out)
    );

    // A flood of connections from one address that never start TLS holds at most
    // MAX_UNAUTHENTICATED_PER_ADDRESS places: one more is closed without a greeting, and
    // a place is free again once one of them leaves. (Last, so that no client above
    // depends on when the server notices a departure. The limit in all is unit-tested.)
    let connect = || {
        let tcp = TcpStream::connect(&addr).unwrap();
        tcp.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        tcp
    };
    let greeted = |tcp: &mut TcpStream| {
        let mut hello = [0u8; 18];
        tcp.read_exact(&mut hello).is_ok() && hello[..8] == nbd::NBD_MAGIC.to_be_bytes()
    };
    let mut waiting = Vec::new();
    for i in 0..MAX_UNAUTHENTICATED_PER_ADDRESS {
        let mut tcp = connect();
        assert!(
            greeted(&mut tcp),
            "connection {i} under the limit got no greeting"
        );
        waiting.push(tcp);
    }
    assert_closed(&mut connect());
    drop(waiting.pop());
    let deadline = Instant::now() + Duration::from_secs(10);
    while !greeted(&mut connect()) {
        assert!(
            Instant::now() < deadline,
            "no place came free 10 s after a waiting client left"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// With a CRL file, a revoked client certificate is refused at the handshake, and a new
/// list takes effect at the next handshake without a restart; a file that is not a CRL
/// in its place leaves the last good list in force.
#[test]
fn revoked_certificates_are_refused_from_the_next_handshake() {
    let pki = Pki::new();
    let crl = pki.path("crl.pem");
    pki.write_crl(&crl, &[]);
    let mut flags = pki.dev_flags();
    flags.extend(["--nbd-tls-client-crl".into(), crl.display().to_string()]);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let dev = Dev::start(&flags);
    let addr = dev.nbd_addr();
    dev.admin(&["tenant", "create", "stadt-jena"]);
    dev.admin(&[
        "volume",
        "create",
        "jena-disk",
        "--size",
        "16M",
        "--tenant",
        "stadt-jena",
    ]);
    let laptop = pki.client("laptop", "stadt-jena", None);
    let host = pki.client("host", "stadt-jena", None);
    assert_eq!(export_names(&addr, &laptop), ["jena-disk"]);
    assert_eq!(export_names(&addr, &host), ["jena-disk"]);

    // The laptop is lost: its certificate is revoked, and the next handshake fails.
    pki.write_crl(&crl, &["laptop"]);
    let refused = must_fail("nbdinfo", &["--json", &uri(&addr, "jena-disk", &laptop)]);
    assert!(!refused.contains("No such file"), "{refused}");
    let out = qemu_io(&addr, "jena-disk", &laptop, &["read 0 4k"]);
    assert!(!out.status.success(), "{}", output_text(&out));
    assert_eq!(export_names(&addr, &host), ["jena-disk"]);

    // Garbage in the file's place, or no file: the last good list stays in force.
    std::fs::write(&crl, "not a CRL").unwrap();
    must_fail("nbdinfo", &["--json", &uri(&addr, "jena-disk", &laptop)]);
    assert_eq!(export_names(&addr, &host), ["jena-disk"]);
    std::fs::remove_file(&crl).unwrap();
    must_fail("nbdinfo", &["--json", &uri(&addr, "jena-disk", &laptop)]);
    assert_eq!(export_names(&addr, &host), ["jena-disk"]);

    // A list from a CA that issued neither: the clients' issuer has no CRL, so nobody
    // gets in (an unknown revocation status is not trusted).
    let other = Pki::new();
    other.write_crl(&crl, &[]);
    must_fail("nbdinfo", &["--json", &uri(&addr, "jena-disk", &host)]);
    // The CA's own list again, revoking nothing: both are back.
    pki.write_crl(&crl, &[]);
    assert_eq!(export_names(&addr, &laptop), ["jena-disk"]);
    assert_eq!(export_names(&addr, &host), ["jena-disk"]);
}

#[test]
fn unusable_tls_files_stop_the_start_with_the_setting_named() {
    let pki = Pki::new();
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("missing.pem");
    let out = Command::new(env!("CARGO_BIN_EXE_lauscha"))
        .args(["dev", "--data-dir"])
        .arg(tmp.path().join("data"))
        .args([
            "--s3-listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
        ])
        .args(["--nbd-listen", "127.0.0.1:0", "--nbd-tls-cert"])
        .arg(&missing)
        .arg("--nbd-tls-key")
        .arg(pki.path("server-key.pem"))
        .arg("--nbd-tls-client-ca")
        .arg(pki.path("ca-cert.pem"))
        .env("RUST_BACKTRACE", "0")
        .output()
        .unwrap();
    let text = output_text(&out);
    assert!(!out.status.success(), "{text}");
    assert!(
        text.contains("gateway.nbd_tls.cert") && text.contains("missing.pem"),
        "{text}"
    );
    // Half the flags is a usage error from the command line itself.
    let out = Command::new(env!("CARGO_BIN_EXE_lauscha"))
        .args(["dev", "--nbd-tls-cert", "x.pem"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--nbd-tls-key"));
}

/// The names `nbdinfo --list` shows with the certificates in `certs`, sorted.
fn export_names(addr: &str, certs: &Path) -> Vec<String> {
    let list = run("nbdinfo", &["--list", "--json", &uri(addr, "", certs)]);
    let list: serde_json::Value = serde_json::from_str(&list).unwrap();
    let mut names: Vec<String> = list["exports"]
        .as_array()
        .unwrap_or_else(|| panic!("{list}"))
        .iter()
        .map(|e| e["export-name"].as_str().unwrap().to_string())
        .collect();
    names.sort();
    names
}

/// The server closed the connection (end of stream or reset; a timeout fails).
#[track_caller]
fn assert_closed(tcp: &mut TcpStream) {
    let mut buf = [0u8; 64];
    match tcp.read(&mut buf) {
        Ok(0) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        other => panic!("expected the server to close the connection, got {other:?}"),
    }
}

/// A plain TCP connection past the server's greeting, having sent `client_flags`; reads
/// time out after 30 s, so a server that neither answers nor hangs up fails the test.
fn raw_connect(addr: &str, client_flags: u32) -> TcpStream {
    let mut tcp = TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(std::time::Duration::from_secs(30)))
        .unwrap();
    let mut hello = [0u8; 18];
    tcp.read_exact(&mut hello).unwrap();
    assert_eq!(&hello[..8], &nbd::NBD_MAGIC.to_be_bytes());
    tcp.write_all(&client_flags.to_be_bytes()).unwrap();
    tcp
}

fn send_option(tcp: &mut TcpStream, option: u32, data: &[u8]) {
    tcp.write_all(&nbd_option(option, data)).unwrap();
}

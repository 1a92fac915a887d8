//! NBD over TLS: the server side of NBD_OPT_STARTTLS, with client certificates that name
//! a tenant.
//!
//! Trust model with `gateway.nbd_tls` set: the server presents `cert`; a client must
//! present a certificate that chains to `client_ca` (verified by rustls/webpki, with its
//! validity period and the clientAuth purpose), and the subject common name of that
//! certificate is the tenant whose volumes the connection may list and attach. The
//! operator's CA is the whole authority: whoever holds a key certified for `CN=stadt-jena`
//! acts for stadt-jena on the NBD port. With `client_crl`, a certificate its issuer has
//! revoked is refused, and so is one whose issuer has no CRL there (fail closed); the file
//! is read again when it changes, so a revocation takes effect at the next handshake
//! without a restart. Without it, revocation means replacing `client_ca` and restarting.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use std::os::unix::fs::MetadataExt;

use lauscha_core::TenantId;
use lauscha_core::config::NbdTlsConfig;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{
    CertificateDer, CertificateRevocationListDer, PrivateKeyDer,
};
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{self, RootCertStore, ServerConfig};

use tracing::{info, warn};

use crate::GatewayError;

/// Longest a client may take for the TLS handshake before the connection is closed.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The TLS side of the NBD server, loaded when the gateway starts (and again when the
/// client CRL file changes).
pub struct NbdTls {
    /// Server certificate, key and client CAs, read at start.
    identity: Identity,
    /// `gateway.nbd_tls.client_crl`.
    crl_path: Option<std::path::PathBuf>,
    current: Mutex<Loaded>,
}

struct Identity {
    config: NbdTlsConfig,
    certs: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    roots: Arc<RootCertStore>,
}

/// The acceptor in force, and the CRL file version it was built from.
struct Loaded {
    acceptor: TlsAcceptor,
    /// The CRL file's version when it was read (`None`: no CRL configured).
    crl_version: Option<FileVersion>,
    /// The last version that could not be used (`Some(None)`: the file could not be
    /// looked at), logged once and not tried again until the file changes.
    crl_failed: Option<Option<FileVersion>>,
}

/// What tells one version of a file from the next: modification time (a coarse clock:
/// two writes in one tick share it), length, and inode (a file renamed into place).
type FileVersion = (SystemTime, u64, u64);

fn file_version(path: &Path) -> std::io::Result<FileVersion> {
    let meta = std::fs::metadata(path)?;
    Ok((meta.modified()?, meta.len(), meta.ino()))
}

/// Who the client is after the handshake: the tenant its certificate names, or why the
/// certificate names none (the connection then gets NBD_REP_ERR_POLICY with that reason).
pub type ClientTenant = Result<TenantId, String>;

impl NbdTls {
    /// Reads the PEM files of `config`; every error names the setting and the file.
    pub fn load(config: &NbdTlsConfig) -> Result<NbdTls, GatewayError> {
        let identity = Identity::read(config)?;
        let crl_path = config.client_crl.clone();
        let (acceptor, crl_version) = identity.acceptor(crl_path.as_deref())?;
        Ok(NbdTls {
            identity,
            crl_path,
            current: Mutex::new(Loaded {
                acceptor,
                crl_version,
                crl_failed: None,
            }),
        })
    }

    /// The acceptor for a new handshake, rebuilt first if the CRL file changed. A changed
    /// file that cannot be used (or a file gone) leaves the last good lists in force: a
    /// revocation list half-copied into place must not drop every revocation, nor lock
    /// every client out. It is logged once per version.
    fn acceptor(&self) -> TlsAcceptor {
        let mut current = self.current.lock().expect("nbd tls lock");
        if let Some(crl) = &self.crl_path {
            let version = file_version(crl).ok();
            if version != current.crl_version && Some(version) != current.crl_failed {
                match self.identity.acceptor(Some(crl)) {
                    Ok((acceptor, crl_version)) => {
                        info!(file = %crl.display(), "client CRL file changed: read again");
                        *current = Loaded {
                            acceptor,
                            crl_version,
                            crl_failed: None,
                        };
                    }
                    Err(e) => {
                        warn!(error = %e, "client CRL file changed but cannot be used; the previous lists stay in force");
                        current.crl_failed = Some(version);
                    }
                }
            }
        }
        current.acceptor.clone()
    }

    /// Runs the server side of the handshake on `stream` (right after the ACK to
    /// NBD_OPT_STARTTLS) and says which tenant the client certificate names.
    pub async fn accept<S>(
        &self,
        stream: S,
    ) -> std::io::Result<(tokio_rustls::server::TlsStream<S>, ClientTenant)>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let acceptor = self.acceptor();
        let tls = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream))
            .await
            .map_err(|_| std::io::Error::other("TLS handshake timed out"))??;
        let tenant = match tls.get_ref().1.peer_certificates() {
            Some([leaf, ..]) => tenant_of(leaf),
            // The verifier requires a certificate; this is only reached if that changes.
            _ => Err("no client certificate".to_string()),
        };
        Ok((tls, tenant))
    }
}

impl Identity {
    fn read(config: &NbdTlsConfig) -> Result<Identity, GatewayError> {
        let certs = read_certs("gateway.nbd_tls.cert", &config.cert)?;
        let key = PrivateKeyDer::from_pem_file(&config.key).map_err(|e| {
            GatewayError::NbdTls(format!(
                "gateway.nbd_tls.key {}: {e} (expected a PEM private key)",
                config.key.display()
            ))
        })?;
        let mut roots = RootCertStore::empty();
        for ca in read_certs("gateway.nbd_tls.client_ca", &config.client_ca)? {
            roots.add(ca).map_err(|e| {
                GatewayError::NbdTls(format!(
                    "gateway.nbd_tls.client_ca {}: {e}",
                    config.client_ca.display()
                ))
            })?;
        }
        Ok(Identity {
            config: config.clone(),
            certs,
            key,
            roots: Arc::new(roots),
        })
    }

    /// An acceptor with this identity and the CRLs in `crl_path`, and the CRL file's
    /// version, taken before the file is read (a change while it is read is seen at the
    /// next handshake).
    fn acceptor(
        &self,
        crl_path: Option<&Path>,
    ) -> Result<(TlsAcceptor, Option<FileVersion>), GatewayError> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut verifier =
            WebPkiClientVerifier::builder_with_provider(self.roots.clone(), provider.clone());
        let mut crl_version = None;
        if let Some(path) = crl_path {
            let setting = "gateway.nbd_tls.client_crl";
            let named = |e: &dyn std::fmt::Display| {
                GatewayError::NbdTls(format!("{setting} {}: {e}", path.display()))
            };
            crl_version = Some(file_version(path).map_err(|e| named(&e))?);
            let crls = CertificateRevocationListDer::pem_file_iter(path)
                .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
                .map_err(|e| named(&e))?;
            if crls.is_empty() {
                return Err(named(&"no PEM X509 CRL in the file"));
            }
            // Only the client's own certificate is checked: its issuer must have a CRL
            // in the file, or the client is refused (unknown status is not trusted). A
            // CRL past its next update is still used (rustls' default): refresh the file.
            verifier = verifier.with_crls(crls).only_check_end_entity_revocation();
        }
        let verifier = verifier
            .build()
            .map_err(|e| GatewayError::NbdTls(format!("client certificate verifier: {e}")))?;
        let config = &self.config;
        let server = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| GatewayError::NbdTls(format!("TLS versions: {e}")))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(self.certs.clone(), self.key.clone_key())
            .map_err(|e| {
                GatewayError::NbdTls(format!(
                    "gateway.nbd_tls.cert {} and key {} do not make a server identity: {e}",
                    config.cert.display(),
                    config.key.display()
                ))
            })?;
        Ok((TlsAcceptor::from(Arc::new(server)), crl_version))
    }
}

fn read_certs(setting: &str, path: &Path) -> Result<Vec<CertificateDer<'static>>, GatewayError> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
        .map_err(|e| GatewayError::NbdTls(format!("{setting} {}: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(GatewayError::NbdTls(format!(
            "{setting} {}: no PEM certificate in the file",
            path.display()
        )));
    }
    Ok(certs)
}

/// The tenant a client certificate (DER) names: its one subject common name, which must
/// be a valid tenant name.
pub fn tenant_of(cert_der: &[u8]) -> ClientTenant {
    let (_, cert) = x509_parser::parse_x509_certificate(cert_der)
        .map_err(|e| format!("client certificate unreadable: {e}"))?;
    let mut names = cert.subject().iter_common_name();
    let cn = names
        .next()
        .ok_or("the client certificate has no subject CN naming a tenant")?;
    if names.next().is_some() {
        return Err("the client certificate has more than one subject CN".into());
    }
    let cn = cn
        .as_str()
        .map_err(|e| format!("the client certificate's CN is not a string: {e}"))?;
    TenantId::parse(cn).map_err(|_| {
        format!("the client certificate's CN {cn:?} is not a tenant name ([a-z0-9-], 1 to 64)")
    })
}

/// Connections that have not finished the TLS handshake, at once: a port that may face
/// tenant networks must not let a flood hold unbounded connections. With the 30 s limit
/// on negotiating before TLS, a flood costs at most this many connections for that long.
pub const MAX_UNAUTHENTICATED_CONNECTIONS: usize = 256;
/// Of those, from one address: so that one flooding machine cannot take every place and
/// lock out the others (a VM host reconnecting all its volumes at once needs each place
/// for only its handshake's milliseconds).
pub const MAX_UNAUTHENTICATED_PER_ADDRESS: usize = 64;

/// The places for connections that have not finished the TLS handshake (pure counting;
/// the server takes one at accept and drops it after the handshake).
#[derive(Debug, Default)]
pub struct UnauthenticatedPlaces {
    state: Mutex<PlacesState>,
}

#[derive(Debug, Default)]
struct PlacesState {
    total: usize,
    by_address: HashMap<IpAddr, usize>,
}

/// Why a connection got no place.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NoPlace {
    /// [`MAX_UNAUTHENTICATED_CONNECTIONS`] are taken.
    InAll,
    /// [`MAX_UNAUTHENTICATED_PER_ADDRESS`] are taken by connections from this address.
    FromThisAddress,
}

/// One connection's place, given back when dropped.
#[derive(Debug)]
pub struct UnauthenticatedPlace {
    places: Arc<UnauthenticatedPlaces>,
    address: IpAddr,
}

impl UnauthenticatedPlaces {
    /// A place for a connection from `address`, if both limits allow one.
    pub fn take(self: &Arc<Self>, address: IpAddr) -> Result<UnauthenticatedPlace, NoPlace> {
        let mut state = self.state.lock().expect("places lock");
        if state.total >= MAX_UNAUTHENTICATED_CONNECTIONS {
            return Err(NoPlace::InAll);
        }
        let from_address = state.by_address.entry(address).or_default();
        if *from_address >= MAX_UNAUTHENTICATED_PER_ADDRESS {
            return Err(NoPlace::FromThisAddress);
        }
        *from_address += 1;
        state.total += 1;
        Ok(UnauthenticatedPlace {
            places: self.clone(),
            address,
        })
    }

    #[cfg(test)]
    fn taken(&self) -> usize {
        self.state.lock().expect("places lock").total
    }
}

impl Drop for UnauthenticatedPlace {
    fn drop(&mut self) {
        let mut state = self.places.state.lock().expect("places lock");
        state.total -= 1;
        let from_address = state
            .by_address
            .get_mut(&self.address)
            .expect("a taken place is counted under its address");
        *from_address -= 1;
        if *from_address == 0 {
            state.by_address.remove(&self.address);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert_with(names: &[&str]) -> Vec<u8> {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::OrganizationName, "Landesrechenzentrum");
        for n in names {
            params
                .distinguished_name
                .push(rcgen::DnType::CommonName, *n);
        }
        params.self_signed(&key).unwrap().der().to_vec()
    }

    #[test]
    fn the_common_name_is_the_tenant() {
        assert_eq!(
            tenant_of(&cert_with(&["stadt-jena"])),
            Ok(TenantId("stadt-jena".into()))
        );
        assert!(
            tenant_of(&cert_with(&[]))
                .unwrap_err()
                .contains("no subject CN")
        );
        assert!(
            tenant_of(&cert_with(&["Stadt Jena"]))
                .unwrap_err()
                .contains("not a tenant name")
        );
        assert!(
            tenant_of(b"not a certificate")
                .unwrap_err()
                .contains("unreadable")
        );
    }

    #[test]
    fn missing_or_wrong_files_are_named_in_the_error() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let config = NbdTlsConfig {
            cert: dir.join("server.pem"),
            key: dir.join("server.key"),
            client_ca: dir.join("ca.pem"),
            client_crl: None,
        };
        let err = NbdTls::load(&config).err().unwrap().to_string();
        assert!(
            err.contains("gateway.nbd_tls.cert") && err.contains("server.pem"),
            "{err}"
        );
        std::fs::write(&config.cert, "not pem").unwrap();
        let err = NbdTls::load(&config).err().unwrap().to_string();
        assert!(err.contains("no PEM certificate"), "{err}");
    }

    #[test]
    fn an_unusable_crl_file_stops_the_start_with_the_setting_named() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        std::fs::write(dir.join("server.pem"), cert.pem()).unwrap();
        std::fs::write(dir.join("server.key"), key.serialize_pem()).unwrap();
        let mut config = NbdTlsConfig {
            cert: dir.join("server.pem"),
            key: dir.join("server.key"),
            client_ca: dir.join("server.pem"),
            client_crl: None,
        };
        assert!(NbdTls::load(&config).is_ok());
        config.client_crl = Some(dir.join("crl.pem"));
        let err = NbdTls::load(&config).err().unwrap().to_string();
        assert!(
            err.contains("gateway.nbd_tls.client_crl") && err.contains("crl.pem"),
            "{err}"
        );
        std::fs::write(dir.join("crl.pem"), cert.pem()).unwrap();
        let err = NbdTls::load(&config).err().unwrap().to_string();
        assert!(err.contains("no PEM X509 CRL"), "{err}");
    }

    #[test]
    fn places_are_limited_in_all_and_per_address_and_given_back() {
        let places = Arc::new(UnauthenticatedPlaces::default());
        let address = |i: usize| IpAddr::from([10, 0, (i >> 8) as u8, i as u8]);
        let mut held: Vec<UnauthenticatedPlace> = (0..MAX_UNAUTHENTICATED_PER_ADDRESS)
            .map(|_| places.take(address(0)).unwrap())
            .collect();
        assert_eq!(
            places.take(address(0)).unwrap_err(),
            NoPlace::FromThisAddress
        );
        // Another address still gets in, until all places are taken.
        let mut i = 1;
        while places.taken() < MAX_UNAUTHENTICATED_CONNECTIONS {
            held.push(places.take(address(i)).unwrap());
            i += 1;
        }
        assert_eq!(places.take(address(i)).unwrap_err(), NoPlace::InAll);
        // A place given back is free again, for its own address too.
        drop(held.swap_remove(0));
        assert_eq!(places.taken(), MAX_UNAUTHENTICATED_CONNECTIONS - 1);
        held.push(places.take(address(0)).unwrap());
        drop(held);
        assert_eq!(places.taken(), 0);
        assert!(places.state.lock().unwrap().by_address.is_empty());
    }
}

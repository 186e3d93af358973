//! HTTPS and WSS: the server's rustls configuration, from PEM files (`--tls-cert`,
//! `--tls-key`) or from a certificate made at start for a LAN test (`--tls-self-signed`).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use thiserror::Error;

/// Why a TLS configuration could not be made.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A certificate or key file could not be read or holds no usable PEM.
    #[error("{path}: {reason}")]
    File {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        reason: String,
    },
    /// rustls refused the certificate and key (for example, they do not match).
    #[error("certificate and key not usable: {0}")]
    Config(#[from] rustls::Error),
    /// The self-signed certificate could not be made.
    #[error("cannot make a self-signed certificate: {0}")]
    Generate(#[from] rcgen::Error),
}

/// A server's TLS settings, and what to tell clients about its certificate.
#[derive(Debug, Clone)]
pub struct TlsSetup {
    /// For the listener.
    pub config: Arc<rustls::ServerConfig>,
    /// The leaf certificate, DER.
    pub certificate: CertificateDer<'static>,
}

impl TlsSetup {
    /// The SHA-256 fingerprint of the leaf certificate, as browsers show it (`AB:CD:...`).
    pub fn fingerprint(&self) -> String {
        fingerprint(&self.certificate)
    }

    /// The leaf certificate in PEM, for a client's `--ca-cert` (self-signed: it is its own CA).
    pub fn certificate_pem(&self) -> String {
        let b64 = base64_encode(&self.certificate);
        let mut pem = String::from("-----BEGIN CERTIFICATE-----\n");
        for line in b64.as_bytes().chunks(64) {
            pem.push_str(&String::from_utf8_lossy(line));
            pem.push('\n');
        }
        pem.push_str("-----END CERTIFICATE-----\n");
        pem
    }
}

/// SHA-256 of `der` in upper-case hex pairs joined by colons.
pub fn fingerprint(der: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, der);
    let hex = hex::encode_upper(digest.as_ref());
    let pairs: Vec<&str> = hex
        .as_bytes()
        .chunks(2)
        .map(|p| std::str::from_utf8(p).unwrap_or("??"))
        .collect();
    pairs.join(":")
}

fn base64_encode(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn server_config(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    // The server speaks HTTP/1.1 only (the WebSocket upgrade is an HTTP/1.1 request).
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Loads a certificate chain (PEM, leaf first) and its private key (PEM: PKCS#8, PKCS#1 or
/// SEC1).
pub fn from_pem_files(cert: &Path, key: &Path) -> Result<TlsSetup, TlsError> {
    let file_error = |path: &Path, reason: String| TlsError::File {
        path: path.to_path_buf(),
        reason,
    };
    let chain = CertificateDer::pem_file_iter(cert)
        .map_err(|e| file_error(cert, e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_error(cert, e.to_string()))?;
    let Some(leaf) = chain.first().cloned() else {
        return Err(file_error(cert, "no CERTIFICATE in the file".into()));
    };
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| match e {
        rustls_pki_types::pem::Error::NoItemsFound => {
            file_error(key, "no PRIVATE KEY in the file".into())
        }
        e => file_error(key, e.to_string()),
    })?;
    Ok(TlsSetup {
        config: server_config(chain, key)?,
        certificate: leaf,
    })
}

/// Makes a self-signed certificate (ECDSA P-256, valid from yesterday for 90 days) for
/// `names` (DNS names or IP addresses), for tests on a LAN: browsers warn until it is
/// accepted, and native clients trust it with `--ca-cert`.
pub fn self_signed(names: &[String]) -> Result<TlsSetup, TlsError> {
    let key = rcgen::KeyPair::generate()?;
    let mut params = rcgen::CertificateParams::new(names.to_vec())?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "sotto-signaling self-signed");
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::days(1);
    params.not_after = now + time::Duration::days(90);
    let cert = params.self_signed(&key)?;
    let der = cert.der().clone();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    Ok(TlsSetup {
        config: server_config(vec![der.clone()], key)?,
        certificate: der,
    })
}

/// The names a self-signed certificate for a server on `listen` should carry: `localhost`,
/// the host name, and the listening address, or every address of the host if it listens on
/// all of them.
pub fn host_names(listen: IpAddr) -> Vec<String> {
    let mut names = vec!["localhost".to_string()];
    if let Some(host) = hostname().filter(|h| is_dns_name(h)) {
        names.push(host);
    }
    let mut addrs = Vec::new();
    if listen.is_unspecified() {
        addrs.extend([
            IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(Ipv6Addr::LOCALHOST),
        ]);
        addrs.extend(interface_addresses());
    } else {
        addrs.push(listen);
    }
    for addr in addrs {
        let addr = addr.to_string();
        if !names.contains(&addr) {
            names.push(addr);
        }
    }
    names
}

fn is_dns_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}

fn hostname() -> Option<String> {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is writable for its length; gethostname NUL-terminates within it or
    // truncates, and we stop at the first NUL or the end.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return None;
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8(buf[..end].to_vec()).ok()
}

/// Every IPv4 and IPv6 address of the host's interfaces (IPv6 link-local left out: it needs a
/// zone, which certificates cannot name).
fn interface_addresses() -> Vec<IpAddr> {
    let mut out = Vec::new();
    let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `list` with a linked list we free with freeifaddrs below; each
    // `ifa_addr` is null or points to a sockaddr of the family it names.
    unsafe {
        if libc::getifaddrs(&mut list) != 0 {
            return out;
        }
        let mut at = list;
        while !at.is_null() {
            let ifa = &*at;
            at = ifa.ifa_next;
            if ifa.ifa_addr.is_null() {
                continue;
            }
            match i32::from((*ifa.ifa_addr).sa_family) {
                libc::AF_INET => {
                    let sin = &*ifa.ifa_addr.cast::<libc::sockaddr_in>();
                    out.push(IpAddr::V4(Ipv4Addr::from(u32::from_be(
                        sin.sin_addr.s_addr,
                    ))));
                }
                libc::AF_INET6 => {
                    let sin6 = &*ifa.ifa_addr.cast::<libc::sockaddr_in6>();
                    let v6 = Ipv6Addr::from(sin6.sin6_addr.s6_addr);
                    if !v6.is_unicast_link_local() {
                        out.push(IpAddr::V6(v6));
                    }
                }
                _ => {}
            }
        }
        libc::freeifaddrs(list);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_the_rfc_vectors() {
        for (input, expected) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64_encode(input.as_bytes()), expected);
        }
    }

    #[test]
    fn fingerprints_are_colon_separated_upper_hex() {
        // SHA-256 of "abc" (FIPS 180-2).
        assert_eq!(
            fingerprint(b"abc"),
            "BA:78:16:BF:8F:01:CF:EA:41:41:40:DE:5D:AE:22:23:B0:03:61:A3:96:17:7A:9C:B4:10:FF:61:F2:00:15:AD"
        );
    }

    #[test]
    fn unusable_pem_files_are_refused_with_the_file_named() {
        let dir = std::env::temp_dir().join(format!("sotto-tls-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let cert = dir.join("cert.pem");
        let setup = self_signed(&["localhost".into()]).unwrap();
        std::fs::write(&cert, setup.certificate_pem()).unwrap();
        // A certificate where the key should be, and a file that is missing.
        let err = from_pem_files(&cert, &cert).unwrap_err().to_string();
        assert!(
            err.contains("cert.pem") && err.contains("no PRIVATE KEY"),
            "{err}"
        );
        let err = from_pem_files(&dir.join("none.pem"), &cert)
            .unwrap_err()
            .to_string();
        assert!(err.contains("none.pem"), "{err}");
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "").unwrap();
        let err = from_pem_files(&empty, &cert).unwrap_err().to_string();
        assert!(err.contains("no CERTIFICATE"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_certificate_and_its_key_load_and_a_foreign_key_does_not() {
        let dir = std::env::temp_dir().join(format!("sotto-tls-load-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let (cert_file, key_file) = (dir.join("cert.pem"), dir.join("key.pem"));
        std::fs::write(&cert_file, cert.pem()).unwrap();
        std::fs::write(&key_file, key.serialize_pem()).unwrap();
        let loaded = from_pem_files(&cert_file, &key_file).unwrap();
        assert_eq!(loaded.fingerprint(), fingerprint(cert.der()));
        let foreign = dir.join("foreign.pem");
        std::fs::write(
            &foreign,
            rcgen::KeyPair::generate().unwrap().serialize_pem(),
        )
        .unwrap();
        assert!(matches!(
            from_pem_files(&cert_file, &foreign),
            Err(TlsError::Config(_))
        ));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn self_signed_pem_round_trips_and_names_the_host() {
        let names = host_names(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
        assert!(names.contains(&"localhost".to_string()));
        assert!(names.contains(&"127.0.0.1".to_string()));
        let setup = self_signed(&names).unwrap();
        let back = CertificateDer::from_pem_slice(setup.certificate_pem().as_bytes()).unwrap();
        assert_eq!(back, setup.certificate);
        assert_eq!(setup.fingerprint().len(), 32 * 3 - 1);
    }
}

//! `wss://` for the signaling client: TCP, then TLS (rustls) with Mozilla's root certificates
//! (`webpki-roots`), or only the certificates of a private CA file (`--ca-cert`).

use std::path::Path;
use std::sync::Arc;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

/// A connection to the server: plain TCP (`ws://`) or TLS over TCP (`wss://`).
pub(crate) trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// Why a connection attempt failed; [`ConnectError::is_fatal`] ones are not retried.
#[derive(Debug)]
pub(crate) enum ConnectError {
    /// Retrying may help (refused, unreachable, reset).
    Transient(String),
    /// Retrying cannot help: a bad URL, an unreadable CA file, an untrusted certificate.
    Fatal(String),
}

/// The TLS settings for `wss://` URLs: trust `ca_cert`'s certificates (PEM) only, or
/// Mozilla's roots without it.
pub(crate) fn client_config(ca_cert: Option<&Path>) -> Result<Arc<rustls::ClientConfig>, String> {
    let mut roots = rustls::RootCertStore::empty();
    match ca_cert {
        Some(path) => {
            let certs = CertificateDer::pem_file_iter(path)
                .map_err(|e| format!("--ca-cert {}: {e}", path.display()))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| format!("--ca-cert {}: {e}", path.display()))?;
            if certs.is_empty() {
                return Err(format!(
                    "--ca-cert {}: no CERTIFICATE in the file",
                    path.display()
                ));
            }
            for cert in certs {
                roots
                    .add(cert)
                    .map_err(|e| format!("--ca-cert {}: {e}", path.display()))?;
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// Opens the byte stream a WebSocket to `host:port` runs on: TLS verified with `tls` when
/// given, plain TCP otherwise.
pub(crate) async fn open(
    host: &str,
    port: u16,
    tls: Option<&Arc<rustls::ClientConfig>>,
) -> Result<Box<dyn Io>, ConnectError> {
    // `[::1]` in a URL is `::1` to the resolver and in the certificate check.
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let tcp = TcpStream::connect((bare, port))
        .await
        .map_err(|e| ConnectError::Transient(format!("connect failed: {e}")))?;
    // Signaling messages are small and latency-bound.
    let _ = tcp.set_nodelay(true);
    let Some(tls) = tls else {
        return Ok(Box::new(tcp));
    };
    let name = ServerName::try_from(bare.to_string())
        .map_err(|e| ConnectError::Fatal(format!("{host:?} is not a TLS server name: {e}")))?;
    match tokio_rustls::TlsConnector::from(tls.clone())
        .connect(name, tcp)
        .await
    {
        Ok(stream) => Ok(Box::new(stream)),
        Err(e) => match e
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        {
            Some(rustls::Error::InvalidCertificate(why)) => Err(ConnectError::Fatal(format!(
                "the signaling server's certificate is not trusted ({why:?}); for a private \
                 CA or a self-signed server, pass its certificate with --ca-cert"
            ))),
            _ => Err(ConnectError::Transient(format!(
                "TLS handshake failed: {e}"
            ))),
        },
    }
}

//! TLS for tests: a certificate authority, server and client certificates made with the
//! `openssl` command (Debian's, in the base image), and servers on tokio-rustls: a TLS
//! terminator in front of a plaintext broker (Tansu accepts `--cert` but never performs a TLS
//! handshake: its acceptor is built and unused), and a one-shot HTTPS receiver.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls;

/// The files of a test PKI.
#[derive(Debug, Clone)]
pub struct Pki {
    pub dir: PathBuf,
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    /// The client's key, encrypted with the password in `client_key_password`.
    pub client_key: PathBuf,
    pub client_key_password: PathBuf,
    /// The password itself, to check it never reaches a log.
    pub password: String,
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl").current_dir(dir).args(args).output().expect("run openssl (Debian's openssl)");
    assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

impl Pki {
    /// A CA, a server certificate for 127.0.0.1/localhost and a client certificate, in `dir`.
    pub fn new(dir: &Path) -> Pki {
        let password = format!("pw-{}-secret", std::process::id());
        std::fs::write(dir.join("client.key.password"), &password).unwrap();
        std::fs::write(dir.join("san.ext"), "subjectAltName=DNS:localhost,IP:127.0.0.1\n").unwrap();
        openssl(
            dir,
            &[
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                "ca.key",
                "-out",
                "ca.pem",
                "-days",
                "2",
                "-subj",
                "/CN=warroom test CA",
            ],
        );
        for who in ["server", "client"] {
            openssl(
                dir,
                &[
                    "req",
                    "-newkey",
                    "rsa:2048",
                    "-nodes",
                    "-keyout",
                    &format!("{who}.key"),
                    "-out",
                    &format!("{who}.csr"),
                    "-subj",
                    &format!("/CN={who}"),
                ],
            );
            openssl(
                dir,
                &[
                    "x509",
                    "-req",
                    "-in",
                    &format!("{who}.csr"),
                    "-CA",
                    "ca.pem",
                    "-CAkey",
                    "ca.key",
                    "-CAcreateserial",
                    "-out",
                    &format!("{who}.pem"),
                    "-days",
                    "2",
                    "-extfile",
                    "san.ext",
                ],
            );
        }
        openssl(
            dir,
            &[
                "pkcs8",
                "-topk8",
                "-v2",
                "aes-256-cbc",
                "-in",
                "client.key",
                "-out",
                "client.enc.key",
                "-passout",
                "file:client.key.password",
            ],
        );
        Pki {
            dir: dir.to_path_buf(),
            ca: dir.join("ca.pem"),
            server_cert: dir.join("server.pem"),
            server_key: dir.join("server.key"),
            client_cert: dir.join("client.pem"),
            client_key: dir.join("client.enc.key"),
            client_key_password: dir.join("client.key.password"),
            password,
        }
    }

    /// A rustls server configuration with the server certificate; with `client_auth`, clients
    /// must present a certificate of this CA (mutual TLS).
    pub fn server_config(&self, client_auth: bool) -> Arc<rustls::ServerConfig> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let certs: Vec<CertificateDer<'static>> =
            CertificateDer::pem_file_iter(&self.server_cert).unwrap().collect::<Result<_, _>>().unwrap();
        let key = PrivateKeyDer::from_pem_file(&self.server_key).unwrap();
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap();
        let builder = if client_auth {
            let mut roots = rustls::RootCertStore::empty();
            for c in CertificateDer::pem_file_iter(&self.ca).unwrap() {
                roots.add(c.unwrap()).unwrap();
            }
            let verifier =
                rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider).build().unwrap();
            builder.with_client_cert_verifier(verifier)
        } else {
            builder.with_no_client_auth()
        };
        Arc::new(builder.with_single_cert(certs, key).unwrap())
    }
}

/// A TLS terminator on `port` forwarding to plaintext `upstream`: clients speak TLS to it as
/// they would to a TLS broker. Counts the handshakes that succeeded and failed.
pub struct TlsTerminator {
    pub port: u16,
    pub handshakes: Arc<std::sync::atomic::AtomicU64>,
    pub refused: Arc<std::sync::atomic::AtomicU64>,
    _rt: Background,
}

/// A test server's runtime, shut down without waiting when its server is dropped.
pub struct Background(pub Option<tokio::runtime::Runtime>);

impl Drop for Background {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

impl TlsTerminator {
    pub fn start(port: u16, upstream: u16, config: Arc<rustls::ServerConfig>) -> TlsTerminator {
        use std::sync::atomic::Ordering::Relaxed;
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        let handshakes: Arc<std::sync::atomic::AtomicU64> = Arc::default();
        let refused: Arc<std::sync::atomic::AtomicU64> = Arc::default();
        let std_listener = std::net::TcpListener::bind(("127.0.0.1", port)).expect("bind the TLS port");
        std_listener.set_nonblocking(true).unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(config);
        let (h, r) = (handshakes.clone(), refused.clone());
        rt.spawn(async move {
            let listener = tokio::net::TcpListener::from_std(std_listener).unwrap();
            loop {
                let Ok((tcp, _)) = listener.accept().await else { continue };
                let (acceptor, h, r) = (acceptor.clone(), h.clone(), r.clone());
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        r.fetch_add(1, Relaxed);
                        return;
                    };
                    h.fetch_add(1, Relaxed);
                    let Ok(mut up) = tokio::net::TcpStream::connect(("127.0.0.1", upstream)).await else { return };
                    let _ = tokio::io::copy_bidirectional(&mut tls, &mut up).await;
                });
            }
        });
        TlsTerminator { port, handshakes, refused, _rt: Background(Some(rt)) }
    }
}

/// One HTTP request as an HTTPS receiver got it.
#[derive(Debug, Clone)]
pub struct Received {
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Received {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

/// An HTTPS server that records every request and answers each with `respond(path)` (a status
/// line and headers, e.g. "200 OK" or "302 Found\r\nLocation: /elsewhere").
pub struct HttpsReceiver {
    pub port: u16,
    pub got: Arc<std::sync::Mutex<Vec<Received>>>,
    _rt: Background,
}

impl HttpsReceiver {
    pub fn start(config: Arc<rustls::ServerConfig>, respond: fn(&str) -> &'static str) -> HttpsReceiver {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        std_listener.set_nonblocking(true).unwrap();
        let port = std_listener.local_addr().unwrap().port();
        let got: Arc<std::sync::Mutex<Vec<Received>>> = Arc::default();
        let acceptor = tokio_rustls::TlsAcceptor::from(config);
        let g = got.clone();
        rt.spawn(async move {
            let listener = tokio::net::TcpListener::from_std(std_listener).unwrap();
            loop {
                let Ok((tcp, _)) = listener.accept().await else { continue };
                let (acceptor, g) = (acceptor.clone(), g.clone());
                tokio::spawn(async move {
                    let Ok(mut s) = acceptor.accept(tcp).await else { return };
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    // Headers, then Content-Length bytes of body.
                    let (head_end, len) = loop {
                        let Ok(n) = s.read(&mut chunk).await else { return };
                        if n == 0 {
                            return;
                        }
                        buf.extend_from_slice(&chunk[..n]);
                        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            let head = String::from_utf8_lossy(&buf[..i]).to_string();
                            let len = head
                                .lines()
                                .find_map(|l| {
                                    l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_string())
                                })
                                .and_then(|v| v.parse::<usize>().ok())
                                .unwrap_or(0);
                            break (i + 4, len);
                        }
                    };
                    while buf.len() < head_end + len {
                        let Ok(n) = s.read(&mut chunk).await else { return };
                        if n == 0 {
                            break;
                        }
                        buf.extend_from_slice(&chunk[..n]);
                    }
                    let head = String::from_utf8_lossy(&buf[..head_end - 4]).to_string();
                    let mut lines = head.lines();
                    let path = lines.next().and_then(|l| l.split_whitespace().nth(1)).unwrap_or("").to_string();
                    let headers = lines
                        .filter_map(|l| l.split_once(':').map(|(k, v)| (k.trim().to_string(), v.trim().to_string())))
                        .collect();
                    let body = buf[head_end..].to_vec();
                    let status = respond(&path);
                    g.lock().unwrap().push(Received { path, headers, body });
                    let _ = s
                        .write_all(
                            format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").as_bytes(),
                        )
                        .await;
                    let _ = s.shutdown().await;
                });
            }
        });
        HttpsReceiver { port, got, _rt: Background(Some(rt)) }
    }

    pub fn received(&self) -> Vec<Received> {
        self.got.lock().unwrap().clone()
    }
}

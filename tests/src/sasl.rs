//! A SASL/SCRAM-SHA-512 front for a plaintext broker. Tansu can require authentication
//! (`--authentication`) but, with the memory storage the tests use, no SCRAM user can be
//! created for it (`tansu user create` must itself authenticate), so a client's successful
//! SCRAM exchange cannot be tried against it. This front plays the broker's side of Kafka's
//! SASL (SaslHandshake, SaslAuthenticate; RFC 5802 SCRAM, written here from the RFC and
//! independent of librdkafka's client side) and, once a client has proved its password,
//! passes its connection through to the broker, which advertises the front's port.
//!
//! Before authentication only ApiVersions is forwarded; any other request closes the
//! connection, as a broker requiring SASL does.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use ring::{digest, hmac, pbkdf2};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::tls::Background;

const SASL_HANDSHAKE: i16 = 17;
const API_VERSIONS: i16 = 18;
const SASL_AUTHENTICATE: i16 = 36;
const UNSUPPORTED_SASL_MECHANISM: i16 = 33;
const SASL_AUTHENTICATION_FAILED: i16 = 58;
const ITERATIONS: u32 = 4096;

/// The front: `port` in front of plaintext `upstream`, knowing one user. Counts the clients
/// that authenticated and those refused.
pub struct ScramTerminator {
    pub port: u16,
    pub authenticated: Arc<AtomicU64>,
    pub refused: Arc<AtomicU64>,
    _rt: Background,
}

struct User {
    name: String,
    salt: Vec<u8>,
    salted: [u8; 64],
}

impl ScramTerminator {
    pub fn start(port: u16, upstream: u16, user: &str, password: &str) -> ScramTerminator {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        let (authenticated, refused): (Arc<AtomicU64>, Arc<AtomicU64>) = Default::default();
        let salt = format!("warroom-salt-{port}").into_bytes();
        let mut salted = [0u8; 64];
        pbkdf2::derive(
            pbkdf2::PBKDF2_HMAC_SHA512,
            std::num::NonZeroU32::new(ITERATIONS).unwrap(),
            &salt,
            password.as_bytes(),
            &mut salted,
        );
        let user = Arc::new(User { name: user.to_string(), salt, salted });
        let std_listener = std::net::TcpListener::bind(("127.0.0.1", port)).expect("bind the SASL port");
        std_listener.set_nonblocking(true).unwrap();
        let (a, r) = (authenticated.clone(), refused.clone());
        rt.spawn(async move {
            let listener = tokio::net::TcpListener::from_std(std_listener).unwrap();
            loop {
                let Ok((client, _)) = listener.accept().await else { continue };
                let (user, a, r) = (user.clone(), a.clone(), r.clone());
                tokio::spawn(async move {
                    if let Ok(false) = serve(client, upstream, &user, &a).await {
                        r.fetch_add(1, Relaxed);
                    }
                });
            }
        });
        ScramTerminator { port, authenticated, refused, _rt: Background(Some(rt)) }
    }
}

async fn read_frame(s: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    let n = s.read_i32().await?;
    if !(0..=64 << 20).contains(&n) {
        return Err(std::io::Error::other("bad frame size"));
    }
    let mut buf = vec![0u8; n as usize];
    s.read_exact(&mut buf).await?;
    Ok(buf)
}

async fn write_frame(s: &mut TcpStream, body: &[u8]) -> std::io::Result<()> {
    s.write_i32(body.len() as i32).await?;
    s.write_all(body).await
}

/// A Kafka request header (v1: api key, version, correlation id, client id) and what follows.
struct Request<'a> {
    key: i16,
    version: i16,
    correlation: i32,
    body: &'a [u8],
}

fn parse(frame: &[u8]) -> Option<Request<'_>> {
    let key = i16::from_be_bytes(frame.get(0..2)?.try_into().ok()?);
    let version = i16::from_be_bytes(frame.get(2..4)?.try_into().ok()?);
    let correlation = i32::from_be_bytes(frame.get(4..8)?.try_into().ok()?);
    let id_len = i16::from_be_bytes(frame.get(8..10)?.try_into().ok()?);
    let body = frame.get(10 + id_len.max(0) as usize..)?;
    Some(Request { key, version, correlation, body })
}

fn string(b: &[u8]) -> Option<(&str, &[u8])> {
    let n = i16::from_be_bytes(b.get(0..2)?.try_into().ok()?).max(0) as usize;
    Some((std::str::from_utf8(b.get(2..2 + n)?).ok()?, &b[2 + n..]))
}

fn bytes(b: &[u8]) -> Option<&[u8]> {
    let n = i32::from_be_bytes(b.get(0..4)?.try_into().ok()?).max(0) as usize;
    b.get(4..4 + n)
}

/// A SaslAuthenticate (v0, v1) response.
fn authenticate_response(r: &Request<'_>, error: i16, message: Option<&str>, auth: &[u8]) -> Vec<u8> {
    let mut out = r.correlation.to_be_bytes().to_vec();
    out.extend(error.to_be_bytes());
    match message {
        Some(m) => {
            out.extend((m.len() as i16).to_be_bytes());
            out.extend(m.as_bytes());
        }
        None => out.extend((-1i16).to_be_bytes()),
    }
    out.extend((auth.len() as i32).to_be_bytes());
    out.extend(auth);
    if r.version >= 1 {
        out.extend(0i64.to_be_bytes()); // session lifetime: none
    }
    out
}

fn hmac512(key: &[u8], data: &[u8]) -> Vec<u8> {
    hmac::sign(&hmac::Key::new(hmac::HMAC_SHA512, key), data).as_ref().to_vec()
}

/// Serves one client: Ok(true) once it authenticated (counted in `authenticated`, then its
/// connection is passed through until closed), Ok(false) if it was refused.
async fn serve(mut client: TcpStream, upstream: u16, user: &User, authenticated: &AtomicU64) -> std::io::Result<bool> {
    let mut up: Option<TcpStream> = None;
    // SCRAM state: (client-first-bare, server-first, the full nonce).
    let mut first: Option<(String, String, String)> = None;
    loop {
        let frame = read_frame(&mut client).await?;
        let Some(r) = parse(&frame) else { return Ok(false) };
        match r.key {
            API_VERSIONS => {
                if up.is_none() {
                    up = Some(TcpStream::connect(("127.0.0.1", upstream)).await?);
                }
                let u = up.as_mut().unwrap();
                write_frame(u, &frame).await?;
                let answer = read_frame(u).await?;
                write_frame(&mut client, &answer).await?;
            }
            SASL_HANDSHAKE => {
                let mechanism = string(r.body).map(|(m, _)| m).unwrap_or("");
                let mut out = r.correlation.to_be_bytes().to_vec();
                let error = if mechanism == "SCRAM-SHA-512" { 0i16 } else { UNSUPPORTED_SASL_MECHANISM };
                out.extend(error.to_be_bytes());
                out.extend(1i32.to_be_bytes());
                out.extend(13i16.to_be_bytes());
                out.extend(b"SCRAM-SHA-512");
                write_frame(&mut client, &out).await?;
                if error != 0 {
                    return Ok(false);
                }
            }
            SASL_AUTHENTICATE if r.version <= 1 => {
                let Some(msg) = bytes(r.body).and_then(|b| std::str::from_utf8(b).ok()) else { return Ok(false) };
                match first.take() {
                    None => {
                        // client-first: "n,,n=USER,r=CNONCE"
                        let bare = msg.splitn(3, ',').nth(2).unwrap_or("").to_string();
                        let name = bare.split(',').find_map(|p| p.strip_prefix("n=")).unwrap_or("");
                        let cnonce = bare.split(',').find_map(|p| p.strip_prefix("r=")).unwrap_or("");
                        if name != user.name || cnonce.is_empty() {
                            let out = authenticate_response(&r, SASL_AUTHENTICATION_FAILED, Some("unknown user"), &[]);
                            write_frame(&mut client, &out).await?;
                            return Ok(false);
                        }
                        let nonce = format!("{cnonce}{:016x}", std::process::id() as u64 * 7919 + upstream as u64);
                        let server_first = format!("r={nonce},s={},i={ITERATIONS}", B64.encode(&user.salt));
                        let out = authenticate_response(&r, 0, None, server_first.as_bytes());
                        write_frame(&mut client, &out).await?;
                        first = Some((bare, server_first, nonce));
                    }
                    Some((bare, server_first, nonce)) => {
                        // client-final: "c=biws,r=NONCE,p=PROOF"
                        let Some((without_proof, proof)) = msg.rsplit_once(",p=") else { return Ok(false) };
                        let given_nonce = without_proof.split(',').find_map(|p| p.strip_prefix("r=")).unwrap_or("");
                        let auth_message = format!("{bare},{server_first},{without_proof}");
                        let client_key = hmac512(&user.salted, b"Client Key");
                        let stored_key = digest::digest(&digest::SHA512, &client_key);
                        let signature = hmac512(stored_key.as_ref(), auth_message.as_bytes());
                        let proof = B64.decode(proof).unwrap_or_default();
                        let proved = given_nonce == nonce
                            && proof.len() == signature.len()
                            && digest::digest(
                                &digest::SHA512,
                                &proof.iter().zip(&signature).map(|(p, s)| p ^ s).collect::<Vec<u8>>(),
                            )
                            .as_ref()
                                == stored_key.as_ref();
                        if !proved {
                            let out = authenticate_response(
                                &r,
                                SASL_AUTHENTICATION_FAILED,
                                Some("Authentication failed during authentication due to invalid credentials with SASL mechanism SCRAM-SHA-512"),
                                &[],
                            );
                            write_frame(&mut client, &out).await?;
                            return Ok(false);
                        }
                        let server_key = hmac512(&user.salted, b"Server Key");
                        let server_final = format!("v={}", B64.encode(hmac512(&server_key, auth_message.as_bytes())));
                        let out = authenticate_response(&r, 0, None, server_final.as_bytes());
                        write_frame(&mut client, &out).await?;
                        authenticated.fetch_add(1, Relaxed);
                        let mut u = match up.take() {
                            Some(u) => u,
                            None => TcpStream::connect(("127.0.0.1", upstream)).await?,
                        };
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut u).await;
                        return Ok(true);
                    }
                }
            }
            _ => return Ok(false),
        }
    }
}

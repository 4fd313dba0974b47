//! The alert webhook: every alert that fires or resolves is POSTed as JSON to
//! `[alerts] webhook`, in order, over HTTPS (rustls; `webhook_ca_file` adds a private CA) or
//! plain HTTP on a trusted network.
//!
//! - Signed: with `webhook_secret_file`, each request carries `X-Warroom-Timestamp` (ms) and
//!   `X-Warroom-Signature: sha256=HEX`, the HMAC-SHA256 of `TIMESTAMP.BODY` under the secret.
//!   The receiver recomputes it and checks the timestamp is recent (no replays).
//! - No redirects are followed: a 3xx is a failure naming where it pointed (fix the URL).
//! - Retried up to 5 times with backoff (0.5, 1, 2, 4 s); one that still fails is dropped,
//!   logged and counted. The queue in front of it is bounded ([`crate::WEBHOOK_QUEUE`]).
//! - The secret is read from its file at each send (a rotated secret needs no restart) and
//!   never logged.

use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::alerts::{Alert, AlertsConfig};
use crate::{lock, now_ms, AppState};

/// The signature header's value for `body` sent at `timestamp_ms` under `secret`.
pub fn signature(secret: &[u8], timestamp_ms: i64, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(timestamp_ms.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    let digest = mac.finalize().into_bytes();
    let mut hex = String::with_capacity(7 + 64);
    hex.push_str("sha256=");
    for b in digest {
        hex.push_str(&format!("{b:02x}"));
    }
    hex
}

/// An HTTP client for the webhook as configured now: rustls, no redirects, 5 s timeout, the
/// configured CA trusted besides the usual roots.
fn client(cfg: &AlertsConfig) -> Result<reqwest::Client, String> {
    let mut b = reqwest::Client::builder()
        .use_rustls_tls()
        .timeout(Duration::from_secs(5))
        .redirect(reqwest::redirect::Policy::none());
    if let Some(p) = &cfg.webhook_ca_file {
        let pem = std::fs::read(p).map_err(|e| format!("cannot read alerts.webhook_ca_file {}: {e}", p.display()))?;
        let cert = reqwest::Certificate::from_pem(&pem)
            .map_err(|e| format!("alerts.webhook_ca_file {} is not a PEM certificate: {e}", p.display()))?;
        b = b.add_root_certificate(cert);
    }
    b.build().map_err(|e| format!("webhook client: {e}"))
}

/// Sends alert changes until the queue closes.
pub(crate) async fn run(st: std::sync::Arc<AppState>, mut rx: tokio::sync::mpsc::Receiver<Alert>) {
    // (config, client) as last built: rebuilt when the alert config is reloaded.
    let mut cached: Option<(AlertsConfig, reqwest::Client)> = None;
    while let Some(alert) = rx.recv().await {
        warroom_status::parts::fault::hit("webhook");
        let cfg = lock(&st.alerts).config().clone();
        let Some(url) = cfg.webhook.clone() else { continue };
        if let Some(claims) = st.claims.clone() {
            let (id, state) = (alert.id.clone(), format!("{:?}", alert.state));
            let mine = tokio::task::spawn_blocking(move || claims.claim(&id, &state)).await.unwrap_or(true);
            if !mine {
                st.webhook_stats.claimed_elsewhere.fetch_add(1, Relaxed);
                continue;
            }
        }
        if cached.as_ref().is_none_or(|(c, _)| c.webhook_ca_file != cfg.webhook_ca_file) {
            match client(&cfg) {
                Ok(c) => cached = Some((cfg.clone(), c)),
                Err(e) => {
                    st.webhook_stats.failed.fetch_add(1, Relaxed);
                    tracing::error!(alert = %alert.id, error = %e, "alert webhook not sent; fix [alerts]");
                    continue;
                }
            }
        }
        let client = &cached.as_ref().expect("built").1;
        let body = serde_json::to_vec(&alert).expect("alerts serialise");
        let mut delay = Duration::from_millis(500);
        for attempt in 1..=5 {
            let ts = now_ms();
            let mut req = client
                .post(&url)
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .header("X-Warroom-Timestamp", ts.to_string());
            if let Some(p) = &cfg.webhook_secret_file {
                match std::fs::read(p) {
                    Ok(secret) => {
                        let secret: &[u8] = secret.strip_suffix(b"\n").unwrap_or(&secret);
                        req = req.header("X-Warroom-Signature", signature(secret, ts, &body));
                    }
                    Err(e) => {
                        tracing::error!(path = %p.display(), error = %e, "cannot read alerts.webhook_secret_file; the alert is not sent unsigned");
                        st.webhook_stats.failed.fetch_add(1, Relaxed);
                        break;
                    }
                }
            }
            let why = match req.body(body.clone()).send().await {
                Ok(r) if r.status().is_success() => {
                    st.webhook_stats.sent.fetch_add(1, Relaxed);
                    break;
                }
                Ok(r) if r.status().is_redirection() => {
                    let to = r.headers().get(reqwest::header::LOCATION).and_then(|l| l.to_str().ok()).unwrap_or("?");
                    format!("status {} redirecting to {to}: redirects are not followed, point alerts.webhook at the final URL", r.status())
                }
                Ok(r) => format!("status {}", r.status()),
                Err(e) => e.to_string(),
            };
            st.webhook_stats.retries.fetch_add(1, Relaxed);
            if attempt == 5 {
                st.webhook_stats.failed.fetch_add(1, Relaxed);
                tracing::error!(alert = %alert.id, error = %why, "alert webhook failed 5 times; dropped. Check [alerts] webhook");
            } else {
                tracing::warn!(alert = %alert.id, attempt, error = %why, "alert webhook failed; retrying");
                tokio::time::sleep(delay).await;
                delay *= 2;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_is_hmac_sha256_of_timestamp_dot_body() {
        // Computed independently: python3 -c 'import hmac,hashlib;
        // print(hmac.new(b"key", b"1700000000000.{}", hashlib.sha256).hexdigest())'
        assert_eq!(
            signature(b"key", 1_700_000_000_000, b"{}"),
            "sha256=36a72f4525d3323bd0f238fe82098164fb77b1e42288ff8e07b074c686178ad3"
        );
    }
}

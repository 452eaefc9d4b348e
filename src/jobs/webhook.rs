//! Webhooks: the allow list that guards against server-side request forgery, the HMAC
//! signature, and the delivery loop with its retries.
//!
//! - A URL is accepted at submission only for a host named in `--webhook-allow-hosts`, over
//!   `https`, or plain `http` where the entry says `http://`.
//! - A hostname entry allows that name on any port (or the entry's port), and only while it
//!   resolves to public addresses: at delivery a private, loopback, link-local or otherwise
//!   non-public address is refused, whatever else the list names.
//! - An IP address entry allows only URLs that name that address literally, on the entry's
//!   port or else the scheme's default; such an address may be non-public.
//! - The request goes to the address that was checked (no second lookup) and follows no
//!   redirect.
//! - Deliveries run concurrently, at most [`MAX_IN_FLIGHT`] at once and [`PER_HOST`] to any
//!   one host: a receiver that never answers holds only its own slots, and the deliveries it
//!   cannot take yet wait in the store, so other receivers are not delayed behind it.
//! - The body is signed: `X-VirtualFit-Signature: t=UNIX_SECONDS,v1=HEX`, where `HEX` is the
//!   HMAC-SHA256, keyed with `--webhook-secret`, of `UNIX_SECONDS.BODY`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use hmac::{Hmac, Mac};
use reqwest::Url;
use sha2::Sha256;
use tokio_util::sync::CancellationToken;

use super::{now_ms, Delivery, JobStore, WEBHOOK_ATTEMPTS};
use crate::metrics::Metrics;

/// The signature header.
pub const SIGNATURE_HEADER: &str = "x-virtualfit-signature";
/// The job id header of a delivery.
pub const JOB_ID_HEADER: &str = "x-virtualfit-job-id";
/// Longest accepted webhook URL.
pub const MAX_URL_BYTES: usize = 2048;
/// How long one delivery attempt may take.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a worker holds a delivery it is sending.
const DELIVERY_LEASE: Duration = Duration::from_secs(60);
/// How often the loop looks for due deliveries.
const POLL: Duration = Duration::from_millis(250);
/// Deliveries read from the store at a time.
const BATCH: usize = 16;
/// Deliveries in flight at once, all hosts together.
pub const MAX_IN_FLIGHT: usize = 64;
/// Deliveries in flight at once to one host.
pub const PER_HOST: usize = 4;
/// How long a delivery whose host has all its slots busy waits before it is read again (no
/// attempt is counted).
const HOST_BUSY_DEFER: Duration = Duration::from_secs(1);

/// One `--webhook-allow-hosts` entry: `host`, `host:port`, `http://host[:port]` (plain http
/// allowed) or an IP address (which also allows it when it is not public, but only when a URL
/// names it, on its port or the scheme's default).
#[derive(Debug, Clone, PartialEq)]
pub struct AllowEntry {
    host: String,
    port: Option<u16>,
    http: bool,
}

impl std::str::FromStr for AllowEntry {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let (http, rest) = if let Some(r) = s.strip_prefix("http://") {
            (true, r)
        } else {
            (false, s.strip_prefix("https://").unwrap_or(s))
        };
        let rest = rest.trim_end_matches('/');
        let url = Url::parse(&format!("https://{rest}/"))
            .map_err(|e| format!("`{s}` is not a host or host:port: {e}"))?;
        let host = url
            .host_str()
            .ok_or_else(|| format!("`{s}` names no host"))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_ascii_lowercase();
        if url.path() != "/" || !url.username().is_empty() {
            return Err(format!("`{s}` must be a host or host:port, nothing more"));
        }
        Ok(AllowEntry {
            host,
            port: url.port(),
            http,
        })
    }
}

/// What webhooks need: the key, the allow list and the retry schedule.
#[derive(Debug, Clone)]
pub struct WebhookConfig {
    pub secret: Option<String>,
    pub allow: Vec<AllowEntry>,
    /// The first retry's delay; each later one doubles it.
    pub retry_base: Duration,
}

/// The host of a URL as the allow list spells it (IPv6 without brackets, lower case).
fn host_of(url: &Url) -> Option<String> {
    url.host_str().map(|h| {
        h.trim_start_matches('[')
            .trim_end_matches(']')
            .to_ascii_lowercase()
    })
}

impl WebhookConfig {
    /// Checks a client's webhook URL at submission; the error is a sentence for the client.
    pub fn check_url(&self, raw: &str) -> Result<Url, String> {
        if raw.len() > MAX_URL_BYTES {
            return Err(format!("webhook_url is longer than {MAX_URL_BYTES} bytes"));
        }
        if self.secret.is_none() {
            return Err("this server sends no webhooks (no --webhook-secret is set)".into());
        }
        let url = Url::parse(raw).map_err(|e| format!("webhook_url is not a URL: {e}"))?;
        if !url.username().is_empty() || url.password().is_some() {
            return Err("webhook_url must not carry credentials".into());
        }
        let http = match url.scheme() {
            "https" => false,
            "http" => true,
            _ => return Err("webhook_url must be https".into()),
        };
        let host = host_of(&url).ok_or("webhook_url names no host")?;
        let port = url.port_or_known_default();
        let listed = self.allow.iter().any(|e| e.permits(&host, port, http));
        if !listed {
            return Err(if http {
                "webhook_url must be https, or its host listed as http:// in --webhook-allow-hosts"
                    .into()
            } else {
                "webhook_url's host is not in this server's --webhook-allow-hosts".into()
            });
        }
        Ok(url)
    }

    /// A regular expression of the URLs [`WebhookConfig::check_url`] accepts (visible ASCII
    /// after the host, a plausible port), for the OpenAPI document; `None` when webhooks are
    /// off.
    pub fn url_pattern(&self) -> Option<String> {
        self.secret.as_ref()?;
        let entries: Vec<String> = self.allow.iter().map(AllowEntry::url_pattern).collect();
        let any = if entries.is_empty() {
            // Nothing is allowed: a pattern no URL matches.
            "[^\\s\\S]".to_string()
        } else {
            entries.join("|")
        };
        Some(format!("^({any})([/?#][!-~]*)?$"))
    }

    /// Resolves the URL's host and returns the first address it may be sent to: a public
    /// one, or the URL's own literal address when an address entry allows it.
    async fn resolve(&self, url: &Url) -> Result<SocketAddr, String> {
        let host = host_of(url).ok_or("no host")?;
        let port = url.port_or_known_default().ok_or("no port")?;
        let http = url.scheme() == "http";
        if let Ok(ip) = host.parse::<IpAddr>() {
            let allowed = is_public(ip)
                || self
                    .allow
                    .iter()
                    .any(|e| e.is_address() && e.permits(&host, Some(port), http));
            return if allowed {
                Ok(SocketAddr::new(ip, port))
            } else {
                Err(format!("{host} is not a public address"))
            };
        }
        // A name: only public addresses, even when the list names an address it resolves to.
        let mut addrs = tokio::net::lookup_host((host.as_str(), port))
            .await
            .map_err(|e| format!("cannot resolve {host}: {e}"))?;
        let public = addrs.find(|a| is_public(a.ip()));
        public.ok_or_else(|| format!("{host} resolves only to addresses that are not public"))
    }
}

impl AllowEntry {
    fn is_address(&self) -> bool {
        self.host.parse::<IpAddr>().is_ok()
    }

    /// A regular expression of the scheme, host and port of the URLs this entry permits.
    fn url_pattern(&self) -> String {
        let host = match self.host.parse::<IpAddr>() {
            Ok(IpAddr::V6(_)) => format!("\\[{}\\]", escape(&self.host)),
            _ => escape(&self.host),
        };
        let schemes: &[(&str, u16)] = if self.http {
            &[("https", 443), ("http", 80)]
        } else {
            &[("https", 443)]
        };
        schemes
            .iter()
            .map(|(scheme, default)| {
                let port = match (self.port, self.is_address()) {
                    (Some(p), _) if p == *default => format!("(:{p})?"),
                    (Some(p), _) => format!(":{p}"),
                    (None, true) => format!("(:{default})?"),
                    (None, false) => "(:[1-9][0-9]{0,3})?".to_string(),
                };
                format!("{scheme}://{host}{port}")
            })
            .collect::<Vec<_>>()
            .join("|")
    }

    /// Whether this entry lets a URL with this host, port and scheme through. A hostname
    /// entry without a port allows any port; an address entry without one allows only the
    /// scheme's default.
    fn permits(&self, host: &str, port: Option<u16>, http: bool) -> bool {
        let default_port = if http { 80 } else { 443 };
        let port_ok = match (self.port, self.is_address()) {
            (Some(p), _) => Some(p) == port,
            (None, true) => port == Some(default_port),
            (None, false) => true,
        };
        self.host == host && port_ok && (self.http || !http)
    }
}

/// `s` with the regular expression metacharacters it may hold escaped.
fn escape(s: &str) -> String {
    s.chars()
        .flat_map(|c| {
            let special = matches!(
                c,
                '.' | '[' | ']' | '(' | ')' | '*' | '+' | '?' | '^' | '$' | '|' | '\\' | '{' | '}'
            );
            special.then_some('\\').into_iter().chain([c])
        })
        .collect()
}

/// Whether an address is on the public internet (not private, loopback, link-local, shared,
/// documentation, multicast or reserved).
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => is_public_v4(v4),
            None => is_public_v6(v6),
        },
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    !(ip.is_private()
        || ip.is_loopback()
        || ip.is_link_local()
        || ip.is_unspecified()
        || ip.is_broadcast()
        || ip.is_documentation()
        || ip.is_multicast()
        || a == 0
        || (a == 100 && (64..128).contains(&b))
        || (a == 192 && b == 0 && c == 0)
        || (a == 198 && (18..20).contains(&b))
        || a >= 240)
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    let seg = ip.segments();
    let octets = ip.octets();
    let v4_at = |i: usize| Ipv4Addr::new(octets[i], octets[i + 1], octets[i + 2], octets[i + 3]);
    // Addresses that carry an IPv4 address are as public as it is: IPv4-compatible
    // (::a.b.c.d), NAT64 (64:ff9b::a.b.c.d) and 6to4 (2002:AABB:CCDD::).
    if seg[..6] == [0; 6] && !ip.is_loopback() && !ip.is_unspecified() {
        return is_public_v4(v4_at(12));
    }
    if seg[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        return is_public_v4(v4_at(12));
    }
    if seg[0] == 0x2002 {
        return is_public_v4(v4_at(2));
    }
    !(ip.is_loopback()
        || ip.is_unspecified()
        || ip.is_multicast()
        || (seg[0] & 0xfe00) == 0xfc00
        || (seg[0] & 0xffc0) == 0xfe80
        || (seg[0] & 0xffc0) == 0xfec0
        || seg[0] == 0x2001 && seg[1] == 0x0db8
        || seg[0] == 0x0064 && seg[1] == 0xff9b)
}

/// The signature header's value for `body` at `unix_s`.
pub fn sign(secret: &str, unix_s: i64, body: &str) -> String {
    let mut mac =
        Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes keys of any length");
    mac.update(unix_s.to_string().as_bytes());
    mac.update(b".");
    mac.update(body.as_bytes());
    format!("t={unix_s},v1={}", hex::encode(mac.finalize().into_bytes()))
}

/// When the attempt after `attempts` failed ones is due, from now: the base, doubled each time.
pub fn retry_delay(base: Duration, attempts: u32) -> Duration {
    base.saturating_mul(1 << attempts.saturating_sub(1).min(20))
}

/// Deliveries in flight, in all and by host.
#[derive(Default)]
struct InFlight {
    total: usize,
    by_host: std::collections::HashMap<String, usize>,
}

/// The host a delivery's slot is counted against (the whole URL when it does not parse: it
/// fails at once anyway).
fn host_key(url: &str) -> String {
    Url::parse(url)
        .ok()
        .and_then(|u| host_of(&u))
        .unwrap_or_else(|| url.to_string())
}

/// Sends what is due until `shutdown`, retrying failures on the schedule.
pub async fn run_deliveries(
    store: Arc<dyn JobStore>,
    config: WebhookConfig,
    metrics: Metrics,
    shutdown: CancellationToken,
) {
    let Some(secret) = config.secret.clone() else {
        return;
    };
    let config = Arc::new(config);
    let secret: Arc<str> = secret.into();
    let in_flight: Arc<std::sync::Mutex<InFlight>> = Arc::default();
    let finished = Arc::new(tokio::sync::Notify::new());
    let mut sends = tokio::task::JoinSet::new();
    loop {
        while sends.try_join_next().is_some() {}
        let free = MAX_IN_FLIGHT.saturating_sub(lock(&in_flight).total);
        let due = if free == 0 {
            Vec::new()
        } else {
            let store = store.clone();
            let max = free.min(BATCH);
            let read = tokio::task::spawn_blocking(move || {
                store.due_deliveries(now_ms(), max, DELIVERY_LEASE)
            })
            .await;
            match read {
                Ok(Ok(d)) => d,
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "cannot read the webhook deliveries");
                    Vec::new()
                }
                Err(e) => {
                    tracing::error!(error = %e, "the webhook reader panicked");
                    Vec::new()
                }
            }
        };
        let mut started = 0;
        let mut deferred = Vec::new();
        for delivery in due {
            let host = host_key(&delivery.url);
            {
                let mut slots = lock(&in_flight);
                let busy = slots.by_host.get(&host).copied().unwrap_or(0);
                if busy >= PER_HOST {
                    deferred.push(delivery);
                    continue;
                }
                slots.total += 1;
                *slots.by_host.entry(host.clone()).or_default() += 1;
            }
            started += 1;
            let (store, config, secret, metrics) = (
                store.clone(),
                config.clone(),
                secret.clone(),
                metrics.clone(),
            );
            let (in_flight, finished) = (in_flight.clone(), finished.clone());
            sends.spawn(async move {
                deliver_once(store, &config, &secret, &metrics, delivery).await;
                let mut slots = lock(&in_flight);
                slots.total -= 1;
                if let Some(n) = slots.by_host.get_mut(&host) {
                    *n -= 1;
                    if *n == 0 {
                        slots.by_host.remove(&host);
                    }
                }
                drop(slots);
                finished.notify_one();
            });
        }
        let deferred_any = !deferred.is_empty();
        if deferred_any {
            // Back to the store, due again shortly, its attempts unchanged: it waits there,
            // not in a slot another receiver needs.
            let store = store.clone();
            let due_ms = now_ms() + HOST_BUSY_DEFER.as_millis() as i64;
            let put_back = tokio::task::spawn_blocking(move || {
                for d in deferred {
                    store.delivery_retry(&d.job_id, d.attempts, due_ms)?;
                }
                Ok::<(), super::StoreError>(())
            })
            .await;
            if !matches!(put_back, Ok(Ok(()))) {
                tracing::warn!(
                    "cannot put back the webhooks of a busy host; they are due after the lease"
                );
            }
        }
        if shutdown.is_cancelled() {
            // What is still in flight is sent again after its lease, by this server or the next.
            sends.shutdown().await;
            return;
        }
        if started == 0 && !deferred_any {
            tokio::select! {
                _ = tokio::time::sleep(POLL) => {}
                _ = finished.notified() => {}
                _ = shutdown.cancelled() => {
                    sends.shutdown().await;
                    return;
                }
            }
        }
    }
}

fn lock(in_flight: &std::sync::Mutex<InFlight>) -> std::sync::MutexGuard<'_, InFlight> {
    in_flight.lock().unwrap_or_else(|p| p.into_inner())
}

async fn deliver_once(
    store: Arc<dyn JobStore>,
    config: &WebhookConfig,
    secret: &str,
    metrics: &Metrics,
    delivery: Delivery,
) {
    let attempts = delivery.attempts + 1;
    // The lookup too: the whole attempt ends well within the delivery's lease.
    let sent = tokio::time::timeout(ATTEMPT_TIMEOUT, send(config, secret, &delivery))
        .await
        .unwrap_or_else(|_| Err(format!("no answer within {} s", ATTEMPT_TIMEOUT.as_secs())));
    let job = delivery.job_id.clone();
    let outcome = match &sent {
        Ok(()) => "delivered",
        Err(_) if attempts >= WEBHOOK_ATTEMPTS => "failed",
        Err(_) => "retried",
    };
    metrics
        .webhook_deliveries_total
        .with_label_values(&[outcome])
        .inc();
    match &sent {
        Ok(()) => tracing::info!(job = %job, attempts, "webhook delivered"),
        Err(e) if attempts >= WEBHOOK_ATTEMPTS => {
            tracing::warn!(job = %job, attempts, error = %e, "webhook failed; giving up")
        }
        Err(e) => tracing::info!(job = %job, attempts, error = %e, "webhook failed; will retry"),
    }
    let retry_at = now_ms() + retry_delay(config.retry_base, attempts).as_millis() as i64;
    let done = sent.is_ok() || attempts >= WEBHOOK_ATTEMPTS;
    let stored = tokio::task::spawn_blocking(move || {
        if done {
            store.delivery_done(&job)
        } else {
            store.delivery_retry(&job, attempts, retry_at)
        }
    })
    .await;
    if !matches!(stored, Ok(Ok(()))) {
        tracing::warn!(job = %delivery.job_id, "cannot record the webhook attempt");
    }
}

async fn send(config: &WebhookConfig, secret: &str, delivery: &Delivery) -> Result<(), String> {
    // The URL was checked at submission; the allow list may have changed since.
    let url = config.check_url(&delivery.url)?;
    let addr = config.resolve(&url).await?;
    let mut client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(ATTEMPT_TIMEOUT)
        .no_proxy();
    if let Some(host) = url.host_str() {
        if host.parse::<IpAddr>().is_err() {
            client = client.resolve(host, addr);
        }
    }
    let client = client.build().map_err(|e| e.to_string())?;
    let unix_s = now_ms() / 1000;
    let response = client
        .post(url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .header(SIGNATURE_HEADER, sign(secret, unix_s, &delivery.body))
        .header(JOB_ID_HEADER, &delivery.job_id)
        .body(delivery.body.clone())
        .send()
        .await
        .map_err(|e| format!("cannot reach the receiver: {e}"))?;
    if response.status().is_success() {
        Ok(())
    } else {
        Err(format!("the receiver answered {}", response.status()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(allow: &[&str]) -> WebhookConfig {
        WebhookConfig {
            secret: Some("k".into()),
            allow: allow.iter().map(|a| a.parse().expect("entry")).collect(),
            retry_base: Duration::from_secs(20),
        }
    }

    #[test]
    fn only_listed_hosts_over_https_unless_listed_as_http() {
        let c = config(&["hooks.example.com", "http://127.0.0.1:9000", "[::1]"]);
        assert!(c.check_url("https://hooks.example.com/a?b=c").is_ok());
        assert!(c.check_url("https://HOOKS.example.com:8443/").is_ok());
        assert!(c.check_url("http://hooks.example.com/").is_err());
        assert!(c.check_url("https://evil.example.com/").is_err());
        assert!(c.check_url("https://hooks.example.com.evil.net/").is_err());
        assert!(c.check_url("http://127.0.0.1:9000/hook").is_ok());
        assert!(c.check_url("http://127.0.0.1:9001/hook").is_err());
        assert!(c.check_url("https://[::1]/x").is_ok());
        assert!(c.check_url("https://user:pw@hooks.example.com/").is_err());
        assert!(c.check_url("ftp://hooks.example.com/").is_err());
        assert!(c.check_url("file:///etc/passwd").is_err());
        let unsigned = WebhookConfig {
            secret: None,
            ..c.clone()
        };
        assert!(unsigned.check_url("https://hooks.example.com/").is_err());
        assert!("hooks.example.com/path".parse::<AllowEntry>().is_err());
    }

    #[test]
    fn non_public_addresses_are_recognised() {
        for private in [
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "127.0.0.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "::1",
            "fe80::1",
            "fd00::1",
            "::ffff:10.0.0.1",
            "::ffff:169.254.169.254",
            "::7f00:1",
            "::a9fe:a9fe",
            "64:ff9b::10.0.0.1",
            "64:ff9b:1::1",
            "2002:a00:1::",
            "2002:7f00:1::1",
            "fec0::1",
        ] {
            assert!(!is_public(private.parse().expect("ip")), "{private}");
        }
        for public in [
            "1.1.1.1",
            "8.8.8.8",
            "2606:4700:4700::1111",
            "64:ff9b::808:808",
            "2002:808:808::1",
        ] {
            assert!(is_public(public.parse().expect("ip")), "{public}");
        }
    }

    /// The bypass: with an address on the list, names that resolve to it were delivered to,
    /// on any port. Each kind of entry against each kind of URL.
    #[tokio::test]
    async fn an_address_entry_allows_only_urls_naming_it_on_its_port() {
        let c = config(&[
            "http://localhost:18100",
            "http://vm",
            "http://127.0.0.1:18101",
            "http://127.0.0.2",
        ]);
        // Names never reach a non-public address, whatever the list holds.
        for url in ["http://localhost:18100/hook", "http://localhost:18100/"] {
            let u = c.check_url(url).expect("listed by name");
            assert!(c.resolve(&u).await.is_err(), "{url}");
        }
        let vm = Url::parse("http://vm:18102/x").expect("url");
        assert!(c.resolve(&vm).await.is_err(), "an unknown or private name");
        // An address: only itself, on its port (or the default when none is listed).
        let ok = c.check_url("http://127.0.0.1:18101/hook").expect("listed");
        assert_eq!(
            c.resolve(&ok).await,
            Ok("127.0.0.1:18101".parse().expect("addr"))
        );
        assert!(c.check_url("http://127.0.0.1:18102/hook").is_err());
        assert!(c.check_url("http://127.0.0.1/hook").is_err());
        let default = c.check_url("http://127.0.0.2/hook").expect("default port");
        assert_eq!(
            c.resolve(&default).await,
            Ok("127.0.0.2:80".parse().expect("addr"))
        );
        assert!(c.check_url("http://127.0.0.2:8080/hook").is_err());
        assert!(c.check_url("https://127.0.0.2/hook").is_ok(), "https too");
        assert!(c
            .check_url("https://127.0.0.2:443/hook")
            .is_ok_and(|u| u.port_or_known_default() == Some(443)));
        // Another address is not allowed by an entry for one.
        let other = Url::parse("http://127.0.0.3:18101/").expect("url");
        assert!(c.resolve(&other).await.is_err());
        // A public literal address needs no address entry, but must be listed to be sent.
        assert!(c.check_url("http://1.1.1.1/").is_err());
    }

    #[tokio::test]
    async fn a_private_address_is_refused_unless_listed_by_address() {
        let by_name = config(&["http://localhost:9000"]);
        let url = by_name.check_url("http://localhost:9000/").expect("listed");
        assert!(
            by_name.resolve(&url).await.is_err(),
            "localhost is loopback"
        );
        let by_ip = config(&["http://127.0.0.1:9000"]);
        let url = by_ip.check_url("http://127.0.0.1:9000/").expect("listed");
        assert_eq!(
            by_ip.resolve(&url).await,
            Ok("127.0.0.1:9000".parse().expect("addr"))
        );
    }

    #[test]
    fn signatures_match_a_known_hmac_and_retries_double() {
        // HMAC-SHA256(key = "secret", "1700000000.{}"), computed independently with Python's hmac.
        assert_eq!(
            sign("secret", 1_700_000_000, "{}"),
            "t=1700000000,v1=b8569b78799ff9e3cbff0fc2d63a33a2b57f3282abd07c37ae5e8e7d79a5f163"
        );
        let base = Duration::from_secs(20);
        let total: Duration = (1..WEBHOOK_ATTEMPTS).map(|a| retry_delay(base, a)).sum();
        assert_eq!(retry_delay(base, 1), base);
        assert_eq!(
            total,
            Duration::from_secs(620),
            "about 10 minutes over 6 attempts"
        );
    }
}

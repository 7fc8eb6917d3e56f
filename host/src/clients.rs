//! Limits per client address, so one client cannot take what everyone
//! shares: at most `server.max_connections_per_ip` open sockets (WebSocket
//! connections and long-poll sessions together), twice that many HTTP
//! connections (a long-poll session holds a waiting GET and a POST), and at
//! most
//! `server.connections_per_ip_per_second` new sockets a second (a burst of
//! twice that). nginx's `limit_conn` and `limit_req`, keyed the same way.
//!
//! The address is the TCP peer's, or — behind a proxy — the last address
//! of the header named by `server.client_ip_header` (the one the trusted
//! proxy appended). With a proxy the TCP limit is off: every connection
//! comes from the proxy, which guards its own.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};

use axum::http::HeaderMap;
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

use crate::config::ServerConfig;

/// Cheap to clone; clones share the counts.
#[derive(Clone)]
pub struct Clients {
    shared: Arc<Shared>,
}

struct Shared {
    max_per_ip: usize,
    /// The header a trusted proxy puts the client's address in.
    ip_header: Option<String>,
    /// New sockets per address, a GCRA bucket each (governor).
    rate: DefaultKeyedRateLimiter<IpAddr>,
    counts: Mutex<Counts>,
}

#[derive(Default)]
struct Counts {
    /// Open sockets per address.
    sockets: HashMap<IpAddr, usize>,
    /// HTTP connections per address (an upgraded WebSocket leaves these
    /// for `sockets`).
    tcp: HashMap<IpAddr, usize>,
    /// Sockets admitted since the rate table was last pruned.
    since_prune: usize,
}

/// Why a client was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("the client address has {0} open connections, the per-address limit")]
    TooMany(usize),
    #[error("the client address opens connections faster than the per-address rate")]
    TooFast,
}

/// One counted connection of an address; uncounted when dropped.
pub struct ClientPermit {
    clients: Clients,
    ip: IpAddr,
    kind: Kind,
}

#[derive(Clone, Copy)]
enum Kind {
    Socket,
    Tcp,
}

impl Clients {
    pub fn new(config: &ServerConfig) -> Self {
        let per_second =
            NonZeroU32::new(config.connections_per_ip_per_second).unwrap_or(NonZeroU32::MIN);
        let burst = per_second.saturating_mul(NonZeroU32::new(2).unwrap_or(NonZeroU32::MIN));
        Self {
            shared: Arc::new(Shared {
                max_per_ip: config.max_connections_per_ip,
                ip_header: config.client_ip_header.clone(),
                rate: RateLimiter::keyed(Quota::per_second(per_second).allow_burst(burst)),
                counts: Mutex::new(Counts::default()),
            }),
        }
    }

    /// The client's address: the trusted proxy's header if configured and
    /// present, else the TCP peer's.
    pub fn address(&self, headers: &HeaderMap, peer: Option<SocketAddr>) -> Option<IpAddr> {
        if let Some(name) = &self.shared.ip_header
            && let Some(ip) = headers
                .get_all(name.as_str())
                .iter()
                .filter_map(|value| value.to_str().ok())
                .flat_map(|value| value.split(','))
                .filter_map(|part| part.trim().parse::<IpAddr>().ok())
                .next_back()
        {
            return Some(ip);
        }
        peer.map(|peer| peer.ip())
    }

    /// Counts a new socket of `ip`, unless the address is over its count or
    /// its rate.
    pub fn socket(&self, ip: IpAddr) -> Result<ClientPermit, Refusal> {
        let mut counts = self.lock();
        let open = counts.sockets.get(&ip).copied().unwrap_or(0);
        if open >= self.shared.max_per_ip {
            return Err(Refusal::TooMany(open));
        }
        if self.shared.rate.check_key(&ip).is_err() {
            return Err(Refusal::TooFast);
        }
        // The rate table keeps an entry per address ever seen: drop the
        // ones whose buckets are full again, now and then.
        counts.since_prune += 1;
        if counts.since_prune >= 10_000 {
            counts.since_prune = 0;
            self.shared.rate.retain_recent();
        }
        *counts.sockets.entry(ip).or_default() += 1;
        Ok(self.permit(ip, Kind::Socket))
    }

    /// Counts an HTTP connection of `peer`; `None` past twice the
    /// per-address socket limit. Off behind a proxy.
    pub fn tcp(&self, peer: IpAddr) -> Option<Option<ClientPermit>> {
        if self.shared.ip_header.is_some() {
            return Some(None);
        }
        let mut counts = self.lock();
        let open = counts.tcp.entry(peer).or_default();
        if *open >= self.shared.max_per_ip.saturating_mul(2) {
            return None;
        }
        *open += 1;
        Some(Some(self.permit(peer, Kind::Tcp)))
    }

    /// Open sockets of `ip`.
    pub fn sockets_of(&self, ip: IpAddr) -> usize {
        self.lock().sockets.get(&ip).copied().unwrap_or(0)
    }

    fn permit(&self, ip: IpAddr, kind: Kind) -> ClientPermit {
        ClientPermit {
            clients: self.clone(),
            ip,
            kind,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Counts> {
        // Single-step updates: a poisoned map is still consistent.
        self.shared.counts.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Drop for ClientPermit {
    fn drop(&mut self) {
        let mut counts = self.clients.lock();
        let map = match self.kind {
            Kind::Socket => &mut counts.sockets,
            Kind::Tcp => &mut counts.tcp,
        };
        if let Some(open) = map.get_mut(&self.ip) {
            *open -= 1;
            if *open == 0 {
                map.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn clients(max: usize, rate: u32, header: Option<&str>) -> Clients {
        Clients::new(&ServerConfig {
            max_connections_per_ip: max,
            connections_per_ip_per_second: rate,
            client_ip_header: header.map(str::to_owned),
            ..ServerConfig::default()
        })
    }

    #[test]
    fn an_address_is_capped_and_others_are_not() {
        let c = clients(2, 1000, None);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let first = c.socket(a).unwrap();
        let _second = c.socket(a).unwrap();
        assert_eq!(c.socket(a).err(), Some(Refusal::TooMany(2)));
        assert!(c.socket(b).is_ok(), "another address is unaffected");
        drop(first);
        assert!(c.socket(a).is_ok(), "a closed socket frees its place");
    }

    #[test]
    fn an_address_opening_too_fast_is_refused() {
        let c = clients(1000, 5, None);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        // A burst of twice the rate passes, then the bucket is empty.
        let burst: Vec<_> = (0..10).map(|_| c.socket(a)).collect();
        assert!(burst.iter().all(Result::is_ok));
        assert_eq!(c.socket(a).err(), Some(Refusal::TooFast));
    }

    #[test]
    fn behind_a_proxy_the_header_names_the_client_and_tcp_is_not_capped() {
        let c = clients(1, 1000, Some("x-forwarded-for"));
        let mut headers = HeaderMap::new();
        headers.insert("x-forwarded-for", "1.2.3.4, 5.6.7.8".parse().unwrap());
        let peer: SocketAddr = "127.0.0.1:9".parse().unwrap();
        assert_eq!(
            c.address(&headers, Some(peer)),
            Some("5.6.7.8".parse().unwrap())
        );
        assert_eq!(c.address(&HeaderMap::new(), Some(peer)), Some(peer.ip()));
        let held: Vec<_> = (0..3).map(|_| c.tcp(peer.ip())).collect();
        assert!(held.iter().all(|p| matches!(p, Some(None))));
        let direct = clients(1, 1000, None);
        let _two = [
            direct.tcp(peer.ip()).unwrap(),
            direct.tcp(peer.ip()).unwrap(),
        ];
        assert!(direct.tcp(peer.ip()).is_none());
    }
}

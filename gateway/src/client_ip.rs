//! Whose address a request comes from, behind proxies the operator names.
//!
//! `X-Forwarded-For` is read only when the connection comes from a trusted
//! proxy (`[gateway] trusted_proxies`, addresses or CIDR blocks;
//! `trust_forwarded_for = true` trusts loopback). Each proxy appends the
//! address it got the request from, so the list is read from the right:
//! the first address that is not a trusted proxy is the client. Anything a
//! client writes into the header itself sits left of that and is ignored.
//! A header from an untrusted peer is ignored entirely.

use std::net::IpAddr;

/// An address block: `10.0.0.0/8`, `2001:db8::/32`, or one address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Block {
    network: IpAddr,
    prefix: u8,
}

impl Block {
    pub fn parse(text: &str) -> Result<Block, String> {
        let (address, prefix) = match text.split_once('/') {
            Some((address, prefix)) => (address, Some(prefix)),
            None => (text, None),
        };
        let network: IpAddr = address.trim().parse().map_err(|_| format!("`{text}` is not an address or CIDR block (say 10.0.0.0/8)"))?;
        let bits = if network.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(prefix) => {
                prefix.trim().parse::<u8>().ok().filter(|prefix| *prefix <= bits).ok_or_else(|| format!("`{text}`: the prefix must be 0 to {bits}"))?
            }
            None => bits,
        };
        Ok(Block { network, prefix })
    }

    pub fn contains(&self, address: IpAddr) -> bool {
        let address = match address {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(address),
            v4 => v4,
        };
        match (self.network, address) {
            (IpAddr::V4(network), IpAddr::V4(address)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.prefix)).unwrap_or(0);
                u32::from(network) & mask == u32::from(address) & mask
            }
            (IpAddr::V6(network), IpAddr::V6(address)) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(self.prefix)).unwrap_or(0);
                u128::from(network) & mask == u128::from(address) & mask
            }
            _ => false,
        }
    }
}

/// The trusted proxies of a config: its blocks, plus loopback when
/// `trust_forwarded_for` is set. Every bad entry is reported.
pub fn trusted_proxies(entries: &[String], trust_loopback: bool) -> Result<Vec<Block>, Vec<String>> {
    let mut blocks = Vec::new();
    let mut problems = Vec::new();
    for entry in entries {
        match Block::parse(entry) {
            Ok(block) => blocks.push(block),
            Err(problem) => problems.push(format!("[gateway] trusted_proxies: {problem}")),
        }
    }
    if trust_loopback {
        blocks.extend([Block::parse("127.0.0.0/8").expect("valid"), Block::parse("::1").expect("valid")]);
    }
    if problems.is_empty() {
        Ok(blocks)
    } else {
        Err(problems)
    }
}

/// Every `X-Forwarded-For` line, joined in order: a proxy may add a line of
/// its own rather than append to the client's.
pub fn forwarded_for(headers: &axum::http::HeaderMap) -> Option<String> {
    let lines: Vec<&str> = headers.get_all("x-forwarded-for").iter().filter_map(|value| value.to_str().ok()).collect();
    (!lines.is_empty()).then(|| lines.join(","))
}

/// The client's address: the peer, or (from a trusted proxy) the rightmost
/// untrusted hop of `X-Forwarded-For`.
pub fn client_address(peer: Option<IpAddr>, forwarded_for: Option<&str>, trusted: &[Block]) -> Option<IpAddr> {
    let is_trusted = |address: IpAddr| trusted.iter().any(|block| block.contains(address));
    let peer = peer?;
    if !is_trusted(peer) {
        return Some(peer);
    }
    let Some(header) = forwarded_for else { return Some(peer) };
    let mut client = peer;
    for hop in header.rsplit(',') {
        let Ok(address) = hop.trim().parse::<IpAddr>() else {
            // A hop that is not an address: stop at what we know.
            return Some(client);
        };
        client = address;
        if !is_trusted(address) {
            return Some(address);
        }
    }
    Some(client)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn the_rightmost_untrusted_hop_is_the_client() {
        let trusted = trusted_proxies(&["10.0.0.0/8".to_string()], true).unwrap();
        // Straight from a client: the header is the client's own words, ignored.
        assert_eq!(client_address(Some(ip("203.0.113.9")), Some("1.2.3.4"), &trusted), Some(ip("203.0.113.9")));
        // Through our proxy: the hop it appended.
        assert_eq!(client_address(Some(ip("10.0.0.5")), Some("203.0.113.9"), &trusted), Some(ip("203.0.113.9")));
        // A client that forges a left part gains nothing.
        assert_eq!(client_address(Some(ip("10.0.0.5")), Some("1.2.3.4, 203.0.113.9"), &trusted), Some(ip("203.0.113.9")));
        // Two proxies of ours in a row are both skipped.
        assert_eq!(client_address(Some(ip("127.0.0.1")), Some("203.0.113.9, 10.1.1.1"), &trusted), Some(ip("203.0.113.9")));
        // No header, or junk in it: the last address known.
        assert_eq!(client_address(Some(ip("10.0.0.5")), None, &trusted), Some(ip("10.0.0.5")));
        assert_eq!(client_address(Some(ip("10.0.0.5")), Some("nonsense"), &trusted), Some(ip("10.0.0.5")));
        // IPv4 peers seen as IPv6-mapped addresses still match.
        assert_eq!(client_address(Some(ip("::ffff:10.0.0.5")), Some("203.0.113.9"), &trusted), Some(ip("203.0.113.9")));
    }

    #[test]
    fn bad_blocks_are_reported_each() {
        let problems = trusted_proxies(&["10.0.0.0/33".to_string(), "proxy.local".to_string(), "::1".to_string()], false).unwrap_err();
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(Block::parse("2001:db8::/32").unwrap().contains(ip("2001:db8::1")));
        assert!(!Block::parse("2001:db8::/32").unwrap().contains(ip("2001:db9::1")));
        assert!(Block::parse("0.0.0.0/0").unwrap().contains(ip("8.8.8.8")));
    }
}

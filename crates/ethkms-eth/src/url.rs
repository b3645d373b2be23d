//! [`NodeUrl`]: a node's JSON-RPC URL that never shows its secrets, and [`redact_urls`] for text (a
//! transport error, say) that may quote one.
//!
//! Providers put API keys in the path (`https://eth-mainnet.example/v2/KEY`), the query (`?apikey=KEY`) or
//! the userinfo (`https://user:KEY@host/`). A `NodeUrl` shows only its scheme, host and port in
//! `Display` and `Debug`, so it can be logged, kept in a `Debug` configuration or put in an error;
//! [`NodeUrl::expose`] gives the whole URL to the one place that connects.
//!
//! ```
//! use ethkms_eth::NodeUrl;
//!
//! let url: NodeUrl = "https://user:pw@eth.example:8443/v3/SECRET?key=SECRET".parse()?;
//! assert_eq!(url.to_string(), "https://eth.example:8443/…");
//! assert_eq!(format!("{url:?}"), "NodeUrl(https://eth.example:8443/…)");
//! assert!(url.expose().as_str().contains("SECRET"));
//! assert_eq!(ethkms_eth::redact_urls("error sending request for url (https://x/KEY): refused"),
//!            "error sending request for url (<url>): refused");
//! # Ok::<(), ethkms_eth::InvalidNodeUrl>(())
//! ```

use std::fmt;
use std::str::FromStr;

pub use url::Url;

/// A node URL that is not `http(s)://` or `ws(s)://` with a host, or does not parse.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid node URL: {reason} (expected http://, https://, ws:// or wss:// and a host)")]
pub struct InvalidNodeUrl {
    /// What is wrong; never the URL itself, which may hold a secret.
    pub reason: String,
}

/// A node's JSON-RPC URL whose userinfo, path and query (where API keys live) are hidden everywhere but
/// [`expose`](Self::expose).
#[derive(Clone, PartialEq, Eq)]
pub struct NodeUrl(Url);

impl NodeUrl {
    /// The whole URL, secrets included: for connecting, never for logs.
    #[must_use]
    pub fn expose(&self) -> &Url {
        &self.0
    }

    /// Whether the URL carries anything that is hidden (userinfo, a path other than `/`, a query or a
    /// fragment).
    #[must_use]
    pub fn has_hidden_parts(&self) -> bool {
        !self.0.username().is_empty()
            || self.0.password().is_some()
            || !matches!(self.0.path(), "" | "/")
            || self.0.query().is_some()
            || self.0.fragment().is_some()
    }
}

impl FromStr for NodeUrl {
    type Err = InvalidNodeUrl;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        // The parser's messages name the problem, not the input, so they can be shown.
        let url = Url::parse(text.trim()).map_err(|error| InvalidNodeUrl { reason: error.to_string() })?;
        Self::try_from(url)
    }
}

impl TryFrom<Url> for NodeUrl {
    type Error = InvalidNodeUrl;

    fn try_from(url: Url) -> Result<Self, Self::Error> {
        if !matches!(url.scheme(), "http" | "https" | "ws" | "wss") {
            return Err(InvalidNodeUrl { reason: format!("scheme `{}` is not supported", url.scheme()) });
        }
        if url.host_str().is_none_or(str::is_empty) {
            return Err(InvalidNodeUrl { reason: "no host".into() });
        }
        Ok(Self(url))
    }
}

impl fmt::Display for NodeUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}", self.0.scheme(), self.0.host_str().unwrap_or_default())?;
        if let Some(port) = self.0.port() {
            write!(f, ":{port}")?;
        }
        f.write_str(if self.has_hidden_parts() { "/…" } else { "/" })
    }
}

impl fmt::Debug for NodeUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NodeUrl({self})")
    }
}

/// `text` with every URL in it (`http://`, `https://`, `ws://`, `wss://`, up to the next space, quote,
/// bracket or comma) replaced by `<url>`: for transport errors, whose text quotes the URL they were
/// sending to, before they reach a log, an error or a client.
#[must_use]
pub fn redact_urls(text: &str) -> String {
    const SCHEMES: [&str; 4] = ["https://", "http://", "wss://", "ws://"];
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some((at, scheme)) =
        SCHEMES.iter().filter_map(|scheme| rest.find(scheme).map(|at| (at, *scheme))).min_by_key(|(at, _)| *at)
    {
        out.push_str(&rest[..at]);
        out.push_str("<url>");
        let after = &rest[at + scheme.len()..];
        let end = after
            .find(|c: char| c.is_whitespace() || matches!(c, ')' | '"' | '\'' | ',' | ']' | '>'))
            .unwrap_or(after.len());
        rest = &after[end..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_in_any_part_are_hidden() {
        for (input, shown) in [
            ("https://mainnet.example/v3/SECRET", "https://mainnet.example/…"),
            ("https://mainnet.example/?apikey=SECRET", "https://mainnet.example/…"),
            ("http://user:SECRET@127.0.0.1:8545", "http://127.0.0.1:8545/…"),
            ("http://127.0.0.1:8545", "http://127.0.0.1:8545/"),
            ("wss://node.example/ws#SECRET", "wss://node.example/…"),
        ] {
            let url: NodeUrl = input.parse().unwrap();
            assert_eq!(url.to_string(), shown, "{input}");
            assert!(!format!("{url:?}").contains("SECRET"));
            assert!(!format!("{:?}", Some(&url)).contains("SECRET"));
            assert_eq!(url.expose().as_str().trim_end_matches('/'), input.trim_end_matches('/'));
        }
    }

    #[test]
    fn bad_urls_are_refused_without_quoting_them() {
        for input in ["ftp://x/SECRET", "SECRET", "http://", "unix:/SECRET"] {
            let error = input.parse::<NodeUrl>().unwrap_err();
            assert!(!error.to_string().contains("SECRET"), "{error}");
            assert!(error.to_string().starts_with("invalid node URL"), "{error}");
        }
    }

    #[test]
    fn urls_in_text_are_hidden_whatever_they_carry() {
        let error = "error sending request for url (https://mainnet.example/v3/SECRETKEY?x=1): connection refused";
        assert_eq!(redact_urls(error), "error sending request for url (<url>): connection refused");
        assert_eq!(redact_urls("http://user:pw@a/ then wss://b/key, done"), "<url> then <url>, done");
        assert_eq!(redact_urls("no url here"), "no url here");
        assert_eq!(redact_urls("https://"), "<url>");
        assert!(!redact_urls("…é https://x/ü ok").contains('x'));
    }
}

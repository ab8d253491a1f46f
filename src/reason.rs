//! The stable reason codes (a contract: header, JSON body, logs and metrics all use these exact strings).

use std::fmt;

/// Why a request failed, as far as keyproxy can tell. The snake_case strings never change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    MissingKey,
    MalformedKey,
    InvalidKey,
    RevokedKey,
    ExpiredKey,
    WrongProviderKey,
    OrgMismatch,
    ProjectMismatch,
    InsufficientPermissions,
    IpNotAllowed,
    AccountInactive,
    RegionUnsupported,
    QuotaExhausted,
    RateLimited,
    WrongEndpoint,
    UnknownAuthError,
    ClientUnauthorized,
    UpstreamUnreachable,
    UpstreamTimeout,
    NoRoute,
    /// The request's `Host` is not one keyproxy answers to (DNS rebinding, a misdirected request).
    HostNotAllowed,
    /// A web page on another origin (or a cross-site request) tried to use the proxy.
    OriginNotAllowed,
    /// Every key of an upstream's pool is quarantined, cooling or unloaded.
    KeysExhausted,
    /// A short-lived credential (OAuth2, Entra ID, Google service account) could not be minted
    /// or refreshed: the token endpoint refused it or could not be reached.
    CredentialRefreshFailed,
}

impl Reason {
    pub const ALL: [Reason; 24] = [
        Reason::MissingKey,
        Reason::MalformedKey,
        Reason::InvalidKey,
        Reason::RevokedKey,
        Reason::ExpiredKey,
        Reason::WrongProviderKey,
        Reason::OrgMismatch,
        Reason::ProjectMismatch,
        Reason::InsufficientPermissions,
        Reason::IpNotAllowed,
        Reason::AccountInactive,
        Reason::RegionUnsupported,
        Reason::QuotaExhausted,
        Reason::RateLimited,
        Reason::WrongEndpoint,
        Reason::UnknownAuthError,
        Reason::ClientUnauthorized,
        Reason::UpstreamUnreachable,
        Reason::UpstreamTimeout,
        Reason::NoRoute,
        Reason::HostNotAllowed,
        Reason::OriginNotAllowed,
        Reason::KeysExhausted,
        Reason::CredentialRefreshFailed,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            Reason::MissingKey => "missing_key",
            Reason::MalformedKey => "malformed_key",
            Reason::InvalidKey => "invalid_key",
            Reason::RevokedKey => "revoked_key",
            Reason::ExpiredKey => "expired_key",
            Reason::WrongProviderKey => "wrong_provider_key",
            Reason::OrgMismatch => "org_mismatch",
            Reason::ProjectMismatch => "project_mismatch",
            Reason::InsufficientPermissions => "insufficient_permissions",
            Reason::IpNotAllowed => "ip_not_allowed",
            Reason::AccountInactive => "account_inactive",
            Reason::RegionUnsupported => "region_unsupported",
            Reason::QuotaExhausted => "quota_exhausted",
            Reason::RateLimited => "rate_limited",
            Reason::WrongEndpoint => "wrong_endpoint",
            Reason::UnknownAuthError => "unknown_auth_error",
            Reason::ClientUnauthorized => "client_unauthorized",
            Reason::UpstreamUnreachable => "upstream_unreachable",
            Reason::UpstreamTimeout => "upstream_timeout",
            Reason::NoRoute => "no_route",
            Reason::HostNotAllowed => "host_not_allowed",
            Reason::OriginNotAllowed => "origin_not_allowed",
            Reason::KeysExhausted => "keys_exhausted",
            Reason::CredentialRefreshFailed => "credential_refresh_failed",
        }
    }

    /// A reason the diagnosis gives to a provider's refusal of the key or the account (the series
    /// of `keyproxy_auth_failures_total`), as opposed to a refusal of keyproxy's own.
    pub const fn is_provider_refusal(self) -> bool {
        !matches!(
            self,
            Reason::ClientUnauthorized
                | Reason::UpstreamUnreachable
                | Reason::UpstreamTimeout
                | Reason::NoRoute
                | Reason::HostNotAllowed
                | Reason::OriginNotAllowed
                | Reason::KeysExhausted
                | Reason::CredentialRefreshFailed
        )
    }

    /// What an SDK should do with an answer that carries this reason, sent as `x-should-retry`
    /// (the official OpenAI and Anthropic SDKs obey it before their own status rules): `false`
    /// where no retry can help (a key, account or configuration problem waits for a person),
    /// `true` for a rate limit, `None` where a retry may well work and the SDK's default is right.
    pub const fn should_retry(self) -> Option<bool> {
        match self {
            Reason::RateLimited => Some(true),
            Reason::UpstreamUnreachable
            | Reason::UpstreamTimeout
            | Reason::UnknownAuthError
            | Reason::KeysExhausted
            | Reason::CredentialRefreshFailed => None,
            _ => Some(false),
        }
    }

    /// The reasons a provider's refusal can be given, in contract order.
    pub fn provider_refusals() -> impl Iterator<Item = Reason> {
        Reason::ALL.into_iter().filter(|r| r.is_provider_refusal())
    }

    pub fn parse(code: &str) -> Option<Reason> {
        Reason::ALL.into_iter().find(|r| r.as_str() == code)
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_are_snake_case() {
        for r in Reason::ALL {
            assert_eq!(Reason::parse(r.as_str()), Some(r));
            assert!(r
                .as_str()
                .chars()
                .all(|c| c.is_ascii_lowercase() || c == '_'));
        }
        assert_eq!(Reason::parse("nope"), None);
    }

    #[test]
    fn the_provider_refusals_are_the_sixteen_diagnosis_reasons() {
        let codes: Vec<_> = Reason::provider_refusals().map(Reason::as_str).collect();
        assert_eq!(codes.len(), 16);
        assert_eq!(codes.first(), Some(&"missing_key"));
        assert_eq!(codes.last(), Some(&"unknown_auth_error"));
        assert!(!Reason::HostNotAllowed.is_provider_refusal());
    }
}

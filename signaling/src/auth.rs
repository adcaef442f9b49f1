//! Invitation tokens: HS256 JWTs that name the room, the display name and the role.
//!
//! A hospital sends each specialist a link carrying such a token; the server admits only
//! what the token says. Without a configured secret there is no authority and the server
//! runs in open demo mode (the binary says so loudly at start-up).

use crate::{Role, SignalingError};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation, errors::ErrorKind};
use serde::{Deserialize, Serialize};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The longest `sub` claim accepted.
pub const MAX_SUB_BYTES: usize = 128;

/// Refuses a `sub` claim the server would not accept: it is copied into every annotation the
/// person draws, so it stays small and plain. (An empty one names nobody and is ignored.)
pub fn check_sub(sub: &str) -> Result<(), SignalingError> {
    if sub.len() > MAX_SUB_BYTES || sub.chars().any(char::is_control) {
        return Err(SignalingError::Unauthorized(format!(
            "the token's sub is at most {MAX_SUB_BYTES} bytes without control characters"
        )));
    }
    Ok(())
}

/// The claims of an invitation token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub room: String,
    pub name: String,
    pub role: Role,
    /// Expiry, seconds since the Unix epoch.
    pub exp: u64,
    /// Issued at, seconds since the Unix epoch.
    #[serde(default)]
    pub iat: u64,
    /// The hospital's own id for the person (e.g. a directory account), when the issuer
    /// knows it: what makes them the same author on every join, whatever name they show.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub: Option<String>,
}

impl Claims {
    /// The stable key of what this person authors (annotations): the same on every join
    /// with a token for the same person, and different for anyone a token names otherwise.
    /// `sub:` when the issuer named the person, else the signed role and display name.
    pub fn author_key(&self) -> String {
        match self.sub.as_deref().filter(|s| !s.is_empty()) {
            Some(sub) => format!("sub:{sub}"),
            None => format!("signed:{}:{}", self.role.as_str(), self.name),
        }
    }
}

/// Issues and verifies invitation tokens with one shared secret.
#[derive(Clone)]
pub struct TokenAuthority {
    encoding: EncodingKey,
    decoding: DecodingKey,
}

impl std::fmt::Debug for TokenAuthority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenAuthority(..)")
    }
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl TokenAuthority {
    pub fn new(secret: &[u8]) -> Self {
        Self {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
        }
    }

    /// A token for `name` in `room` with `role`, valid for `ttl` from now.
    pub fn issue(&self, room: &str, name: &str, role: Role, ttl: Duration) -> String {
        self.issue_for(room, name, role, None, ttl)
    }

    /// As [`TokenAuthority::issue`], naming the person by the issuer's id (`sub`).
    pub fn issue_for(
        &self,
        room: &str,
        name: &str,
        role: Role,
        sub: Option<&str>,
        ttl: Duration,
    ) -> String {
        let iat = now_secs();
        let claims = Claims {
            room: room.to_owned(),
            name: name.to_owned(),
            role,
            exp: iat + ttl.as_secs(),
            iat,
            sub: sub.map(str::to_owned),
        };
        self.sign(&claims)
    }

    /// Signs arbitrary claims (tests use it for expired tokens).
    pub fn sign(&self, claims: &Claims) -> String {
        // Encoding HS256 with a plain struct cannot fail.
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &self.encoding)
            .unwrap_or_default()
    }

    /// Checks signature and expiry, then that the token is for this room and name.
    pub fn verify(&self, token: &str, room: &str, name: &str) -> Result<Claims, SignalingError> {
        let claims = self.verify_claims(token)?;
        if claims.room != room {
            return Err(SignalingError::Forbidden("room"));
        }
        if claims.name != name {
            return Err(SignalingError::Forbidden("display name"));
        }
        Ok(claims)
    }

    /// Checks only signature and expiry and returns the claims: for requests that are not a
    /// join (the study store checks the room itself against the study asked for).
    pub fn verify_claims(&self, token: &str) -> Result<Claims, SignalingError> {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 5;
        validation.set_required_spec_claims(&["exp"]);
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &validation).map_err(
            |e| match e.kind() {
                ErrorKind::ExpiredSignature => SignalingError::TokenExpired,
                ErrorKind::InvalidSignature => {
                    SignalingError::Unauthorized("the token's signature is not valid".into())
                }
                _ => SignalingError::Unauthorized(format!("the token is not valid ({e})")),
            },
        )?;
        if let Some(sub) = &data.claims.sub {
            check_sub(sub)?;
        }
        Ok(data.claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_refusals() {
        let auth = TokenAuthority::new(b"secret");
        let t = auth.issue("board", "Dr A", Role::Host, Duration::from_secs(60));
        assert_eq!(auth.verify(&t, "board", "Dr A").unwrap().role, Role::Host);
        assert_eq!(
            auth.verify(&t, "other", "Dr A").unwrap_err(),
            SignalingError::Forbidden("room")
        );
        assert_eq!(
            auth.verify(&t, "board", "Dr B").unwrap_err(),
            SignalingError::Forbidden("display name")
        );
        let forged = TokenAuthority::new(b"other").issue(
            "board",
            "Dr A",
            Role::Host,
            Duration::from_secs(60),
        );
        assert!(matches!(
            auth.verify(&forged, "board", "Dr A"),
            Err(SignalingError::Unauthorized(_))
        ));
        assert!(matches!(
            auth.verify("garbage", "board", "Dr A"),
            Err(SignalingError::Unauthorized(_))
        ));
        let expired = auth.sign(&Claims {
            room: "board".into(),
            name: "Dr A".into(),
            role: Role::Host,
            exp: now_secs() - 3600,
            iat: now_secs() - 7200,
            sub: None,
        });
        assert_eq!(
            auth.verify(&expired, "board", "Dr A").unwrap_err(),
            SignalingError::TokenExpired
        );
    }

    #[test]
    fn author_keys_follow_the_person_not_the_join() {
        let auth = TokenAuthority::new(b"secret");
        let ttl = Duration::from_secs(60);
        let key = |t: String| auth.verify_claims(&t).unwrap().author_key();
        assert_eq!(
            key(auth.issue_for("b", "Dr A", Role::Host, Some("u-17"), ttl)),
            "sub:u-17"
        );
        // The same person under another display name is still the same author.
        assert_eq!(
            key(auth.issue_for("b", "Dr A. Smith", Role::Host, Some("u-17"), ttl)),
            "sub:u-17"
        );
        assert_eq!(
            key(auth.issue("b", "Dr A", Role::Participant, ttl)),
            "signed:participant:Dr A"
        );
        let long = "x".repeat(MAX_SUB_BYTES + 1);
        let t = auth.issue_for("b", "Dr A", Role::Host, Some(&long), ttl);
        assert!(matches!(
            auth.verify_claims(&t),
            Err(SignalingError::Unauthorized(_))
        ));
        // An empty sub names nobody: it falls back to the signed name.
        assert_eq!(
            key(auth.issue_for("b", "Dr A", Role::Host, Some(""), ttl)),
            "signed:host:Dr A"
        );
    }
}

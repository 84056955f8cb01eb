//! Connection authentication: a JWT at the upgrade (`?token=` or `Authorization: Bearer`).

use std::sync::Arc;

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::Value;

/// Who a connection is. Anonymous connections have no user and empty claims.
#[derive(Debug, Clone, Default)]
pub struct Identity {
    pub user: Option<Arc<str>>,
    pub claims: Value,
}

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("a token is required")]
    Missing,
    #[error("invalid token: {0}")]
    Invalid(String),
    #[error("this server has no key to verify tokens with")]
    NoKey,
}

/// `exp` is checked when present; a token without one does not expire.
fn validation(algorithm: Algorithm) -> Validation {
    let mut validation = Validation::new(algorithm);
    validation.required_spec_claims.clear();
    validation.validate_exp = true;
    validation.leeway = 5;
    validation
}

pub struct Auth {
    key: Option<(DecodingKey, Validation)>,
    required: bool,
}

impl Auth {
    pub fn new(hs256_secret: Option<&str>, required: bool) -> Self {
        let key = hs256_secret.map(|secret| {
            (
                DecodingKey::from_secret(secret.as_bytes()),
                validation(Algorithm::HS256),
            )
        });
        Self { key, required }
    }

    /// Verify tokens with an RS256 or ES256 public key (PEM) instead of a shared secret.
    pub fn with_public_key(mut self, pem: &[u8]) -> Result<Self, AuthError> {
        let key = match DecodingKey::from_rsa_pem(pem) {
            Ok(key) => (key, validation(Algorithm::RS256)),
            Err(_) => match DecodingKey::from_ec_pem(pem) {
                Ok(key) => (key, validation(Algorithm::ES256)),
                Err(e) => {
                    return Err(AuthError::Invalid(format!(
                        "the public key is neither an RSA nor an EC PEM key: {e}"
                    )))
                }
            },
        };
        self.key = Some(key);
        Ok(self)
    }

    pub fn disabled() -> Self {
        Self {
            key: None,
            required: false,
        }
    }

    pub fn authenticate(&self, token: Option<&str>) -> Result<Identity, AuthError> {
        let token = match token.map(str::trim).filter(|t| !t.is_empty()) {
            Some(t) => t,
            None if self.required => return Err(AuthError::Missing),
            None => {
                return Ok(Identity {
                    user: None,
                    claims: Value::Object(Default::default()),
                })
            }
        };
        let Some((key, validation)) = &self.key else {
            return Err(AuthError::NoKey);
        };
        let data = jsonwebtoken::decode::<Value>(token, key, validation)
            .map_err(|e| AuthError::Invalid(e.to_string()))?;
        let user = data
            .claims
            .get("sub")
            .and_then(Value::as_str)
            .map(Arc::from);
        Ok(Identity {
            user,
            claims: data.claims,
        })
    }
}

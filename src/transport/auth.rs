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

pub struct Auth {
    key: Option<(DecodingKey, Validation)>,
    required: bool,
}

impl Auth {
    pub fn new(hs256_secret: Option<&str>, required: bool) -> Self {
        let key = hs256_secret.map(|secret| {
            let mut validation = Validation::new(Algorithm::HS256);
            validation.required_spec_claims = ["exp".to_string()].into_iter().collect();
            validation.validate_exp = true;
            (DecodingKey::from_secret(secret.as_bytes()), validation)
        });
        Self { key, required }
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

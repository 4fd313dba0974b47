//! Tokens and roles. The auth file (`--auth-file`, TOML) lists `[[tokens]]` with `token`,
//! `role` (`ops`, `merchant`, `admin`), `merchant_id` (merchants only) and an optional `name`
//! used in audit entries and logs. Tokens are kept only as SHA-256 digests and compared in
//! constant time; they are never logged.

use std::path::Path;

use serde::Deserialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Reads everything.
    Ops,
    /// Reads only its own merchant's slots, totals and race places.
    Merchant,
    /// Ops plus rule changes and alert acknowledgements.
    Admin,
}

/// Who is calling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub role: Role,
    pub merchant_id: Option<String>,
    /// For audit entries and logs (never the token).
    pub name: String,
    /// A digest of the token (not the token): per-token limits count by it.
    pub key: [u8; 32],
}

impl Caller {
    /// The merchant a merchant caller is held to (from its token); none for other roles.
    pub fn own_merchant(&self) -> Option<&str> {
        if self.role == Role::Merchant {
            self.merchant_id.as_deref()
        } else {
            None
        }
    }

    pub fn can_read_all(&self) -> bool {
        matches!(self.role, Role::Ops | Role::Admin)
    }
}

/// No `Debug`: it holds the tokens.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AuthFile {
    tokens: Vec<TokenEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenEntry {
    token: String,
    role: Role,
    merchant_id: Option<String>,
    name: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("cannot read the auth file {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("auth file {path}: {message}")]
    Invalid { path: String, message: String },
}

/// The known tokens.
#[derive(Debug)]
pub struct Auth {
    entries: Vec<([u8; 32], Caller)>,
}

/// The demo tokens shipped in config/auth.demo.toml (documented in the README; loopback only).
pub const DEMO_AUTH: &str = include_str!("../../../config/auth.demo.toml");

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

impl Auth {
    pub fn load(path: Option<&Path>) -> Result<Auth, AuthError> {
        let (text, name) = match path {
            Some(p) => (
                std::fs::read_to_string(p)
                    .map_err(|source| AuthError::Read { path: p.display().to_string(), source })?,
                p.display().to_string(),
            ),
            None => (DEMO_AUTH.to_string(), "config/auth.demo.toml (embedded)".to_string()),
        };
        Auth::parse(&text, &name)
    }

    pub fn parse(text: &str, path: &str) -> Result<Auth, AuthError> {
        let invalid = |message: String| AuthError::Invalid { path: path.into(), message };
        let file: AuthFile = toml::from_str(text).map_err(|e| invalid(e.to_string()))?;
        let mut entries = Vec::new();
        for (i, t) in file.tokens.into_iter().enumerate() {
            if t.token.len() < 16 {
                return Err(invalid(format!("tokens[{i}]: a token needs at least 16 characters")));
            }
            match (t.role, &t.merchant_id) {
                (Role::Merchant, None) => {
                    return Err(invalid(format!("tokens[{i}]: role \"merchant\" needs merchant_id")));
                }
                (Role::Merchant, Some(m)) if m.trim().is_empty() => {
                    return Err(invalid(format!(
                        "tokens[{i}]: merchant_id is empty; give the merchant's id as its events name it"
                    )));
                }
                (Role::Ops | Role::Admin, Some(_)) => {
                    return Err(invalid(format!("tokens[{i}]: merchant_id is only for role \"merchant\"")));
                }
                _ => {}
            }
            let name = t.name.unwrap_or_else(|| format!("token#{i}"));
            let key = digest(&t.token);
            entries.push((key, Caller { role: t.role, merchant_id: t.merchant_id, name, key }));
        }
        if entries.is_empty() {
            return Err(invalid("no [[tokens]]: nobody could use the API".into()));
        }
        Ok(Auth { entries })
    }

    /// How many tokens there are.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The caller a token belongs to. Every entry is compared, in constant time, whatever
    /// matches: the time taken says nothing about the token.
    pub fn check(&self, token: &str) -> Option<Caller> {
        let d = digest(token);
        let mut found = None;
        for (known, caller) in &self.entries {
            if bool::from(known.ct_eq(&d)) {
                found = Some(caller.clone());
            }
        }
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_demo_file_parses_and_roles_come_out() {
        let a = Auth::load(None).unwrap();
        assert_eq!(a.check("demo-ops-token-0001").unwrap().role, Role::Ops);
        let m = a.check("demo-merchant-m4-token").unwrap();
        assert_eq!((m.role, m.merchant_id.as_deref()), (Role::Merchant, Some("m-4")));
        assert!(a.check("demo-ops-token-0002").is_none());
        assert!(a.check("").is_none());
    }

    #[test]
    fn bad_files_say_what_to_fix() {
        let e = Auth::parse("[[tokens]]\ntoken = \"0123456789abcdef\"\nrole = \"merchant\"\n", "x").unwrap_err();
        assert!(e.to_string().contains("needs merchant_id"), "{e}");
        let e = Auth::parse("[[tokens]]\ntoken = \"short\"\nrole = \"ops\"\n", "x").unwrap_err();
        assert!(e.to_string().contains("at least 16"), "{e}");
        let e = Auth::parse("[[tokens]]\ntoken = \"0123456789abcdef\"\nrole = \"merchant\"\nmerchant_id = \"\"\n", "x")
            .unwrap_err();
        assert!(e.to_string().contains("merchant_id is empty"), "{e}");
    }
}

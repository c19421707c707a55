//! Secrets (keys, connection strings) and `${ENV_NAME}` expansion.
//!
//! A [`Secret`] never prints its value: Debug shows `***`, and there is deliberately no Display. Code that needs the
//! value calls [`Secret::expose`], which makes every use greppable. [`Redactor`] scrubs secret values out of text
//! that came from elsewhere (a provider's error body can echo a key id back).

use serde::Deserialize;
use std::fmt;

#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

/// Only strings are accepted, and a value of another type is not shown in the error (a secret typed without quotes
/// is still a secret).
impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Text;
        impl<'v> serde::de::Visitor<'v> for Text {
            type Value = Secret;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Secret, E> {
                Ok(Secret(v.to_string()))
            }
            fn visit_string<E: serde::de::Error>(self, v: String) -> Result<Secret, E> {
                Ok(Secret(v))
            }
            fn visit_i64<E: serde::de::Error>(self, _: i64) -> Result<Secret, E> {
                Err(not_text())
            }
            fn visit_u64<E: serde::de::Error>(self, _: u64) -> Result<Secret, E> {
                Err(not_text())
            }
            fn visit_f64<E: serde::de::Error>(self, _: f64) -> Result<Secret, E> {
                Err(not_text())
            }
            fn visit_bool<E: serde::de::Error>(self, _: bool) -> Result<Secret, E> {
                Err(not_text())
            }
            fn visit_map<A: serde::de::MapAccess<'v>>(self, _: A) -> Result<Secret, A::Error> {
                Err(not_text())
            }
            fn visit_seq<A: serde::de::SeqAccess<'v>>(self, _: A) -> Result<Secret, A::Error> {
                Err(not_text())
            }
        }
        fn not_text<E: serde::de::Error>() -> E {
            E::custom("expected a string in quotes (the value given is not shown: it is a secret)")
        }
        deserializer.deserialize_any(Text)
    }
}

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// Replaces every `${NAME}` in `text` with the environment variable NAME. `$$` stands for a literal `$`.
/// The error names the variable (never its value).
pub fn expand_env(text: &str) -> Result<String, String> {
    expand_with(text, |name| std::env::var(name).ok())
}

/// [`expand_env`], with None when a variable it names is not set (other errors as there).
pub fn expand_env_if_set(text: &str) -> Result<Option<String>, String> {
    let unset = std::cell::Cell::new(false);
    let expanded = expand_with(text, |name| {
        let value = std::env::var(name).ok();
        if value.is_none() {
            unset.set(true);
        }
        Some(value.unwrap_or_default())
    })?;
    Ok((!unset.get()).then_some(expanded))
}

fn expand_with(text: &str, lookup: impl Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(body) = after.strip_prefix('{') {
            let end = body
                .find('}')
                .ok_or_else(|| "unclosed `${` (expected `${ENV_NAME}`)".to_string())?;
            let name = &body[..end];
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(format!(
                    "`${{{name}}}` is not a valid environment variable reference"
                ));
            }
            let value =
                lookup(name).ok_or_else(|| format!("environment variable `{name}` is not set"))?;
            out.push_str(&value);
            rest = &body[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// Scrubs known secret values out of free text (error messages from providers, URLs).
#[derive(Clone, Default)]
pub struct Redactor {
    secrets: Vec<String>,
}

impl fmt::Debug for Redactor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Redactor({} secrets)", self.secrets.len())
    }
}

impl Redactor {
    /// Secrets shorter than this are not scrubbed: replacing every "a" in a message would destroy it, and a value
    /// that short is not a credential anyone could recover from context.
    const MIN_SECRET_LEN: usize = 4;

    pub fn add(&mut self, secret: &Secret) {
        self.add_str(secret.expose());
    }

    pub fn add_str(&mut self, value: &str) {
        if value.len() >= Self::MIN_SECRET_LEN && !self.secrets.iter().any(|s| s == value) {
            self.secrets.push(value.to_string());
            // Longest first, so a secret containing another is replaced whole.
            self.secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
        }
    }

    pub fn redact(&self, text: &str) -> String {
        let mut out = text.to_string();
        for secret in &self.secrets {
            if out.contains(secret.as_str()) {
                out = out.replace(secret.as_str(), "***");
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        (name == "KEY").then(|| "v".to_string())
    }

    #[test]
    fn expands_references() {
        assert_eq!(expand_with("a${KEY}b", env).unwrap(), "avb");
        assert_eq!(expand_with("$$HOME $x", env).unwrap(), "$HOME $x");
        assert_eq!(
            expand_with("${MISSING}", env).unwrap_err(),
            "environment variable `MISSING` is not set"
        );
        assert!(expand_with("${KEY", env).unwrap_err().contains("unclosed"));
    }

    #[test]
    fn secrets_do_not_print() {
        let s = Secret::new("hunter22");
        assert_eq!(format!("{s:?}"), "***");
        let mut r = Redactor::default();
        r.add(&s);
        assert_eq!(r.redact("key hunter22 rejected"), "key *** rejected");
    }
}

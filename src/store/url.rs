//! The database's URL, with its password kept as a secret.

use std::fmt;

use secrecy::{ExposeSecret, SecretString};
use url::Url;

/// A `postgres://` URL. The password is kept apart, as a secret, so that printing the URL in
/// any way shows everything but the password.
#[derive(Clone)]
pub struct DatabaseUrl {
    /// The URL without its password.
    url: Url,
    /// As it appears in a URL (percent-encoded).
    password: Option<SecretString>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidDatabaseUrl {
    #[error("is not a URL ({0}); URLs that list several hosts are not supported")]
    NotAUrl(String),
    #[error("must start with postgres:// or postgresql://")]
    Scheme,
    #[error("must name a database, as in postgres://user@host:5432/chat")]
    NoDatabase,
}

impl DatabaseUrl {
    pub fn parse(text: &str) -> Result<Self, InvalidDatabaseUrl> {
        let mut url = Url::parse(text).map_err(|e| InvalidDatabaseUrl::NotAUrl(e.to_string()))?;
        if !matches!(url.scheme(), "postgres" | "postgresql") {
            return Err(InvalidDatabaseUrl::Scheme);
        }
        let database = url.path().trim_start_matches('/');
        if database.is_empty() || database.contains('/') {
            return Err(InvalidDatabaseUrl::NoDatabase);
        }
        let password = url.password().map(SecretString::from);
        // Only fails for URLs without a host, which have no password either.
        let _ = url.set_password(None);
        Ok(Self { url, password })
    }

    /// The whole URL, password included, for the driver. Never log what this returns.
    pub fn expose(&self) -> SecretString {
        let mut url = self.url.clone();
        if let Some(password) = &self.password {
            let _ = url.set_password(Some(password.expose_secret()));
        }
        SecretString::from(String::from(url))
    }

    pub fn database_name(&self) -> &str {
        self.url.path().trim_start_matches('/')
    }

    /// The same server and credentials, another database.
    pub fn with_database(&self, name: &str) -> Self {
        let mut url = self.url.clone();
        url.set_path(name);
        Self {
            url,
            password: self.password.clone(),
        }
    }
}

/// The URL with `***` for a password, in its user part or its query, fit for logs and errors.
impl fmt::Display for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut url = self.url.clone();
        if self.password.is_some() {
            let _ = url.set_password(Some("***"));
        }
        if url.query_pairs().any(|(key, _)| key == "password") {
            let pairs: Vec<(String, String)> = url
                .query_pairs()
                .map(|(key, value)| {
                    let value = if key == "password" {
                        "***".into()
                    } else {
                        value
                    };
                    (key.into_owned(), value.into_owned())
                })
                .collect();
            url.query_pairs_mut().clear().extend_pairs(pairs);
        }
        f.write_str(url.as_str())
    }
}

impl fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> DatabaseUrl {
        DatabaseUrl::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"))
    }

    #[test]
    fn finds_the_database_name() {
        assert_eq!(
            parse("postgres://postgres@localhost:5432/chat").database_name(),
            "chat"
        );
        let url = parse("postgresql://u:p@h/app?sslmode=disable");
        assert_eq!(url.database_name(), "app");
        let other = url.with_database("postgres");
        assert_eq!(
            other.expose().expose_secret(),
            "postgresql://u:p@h/postgres?sslmode=disable"
        );
        assert_eq!(other.database_name(), "postgres");
    }

    #[test]
    fn refuses_urls_without_a_database_or_scheme() {
        let refused = |text| DatabaseUrl::parse(text).err();
        assert_eq!(refused("mysql://h/db"), Some(InvalidDatabaseUrl::Scheme));
        assert!(matches!(
            refused("postgres://u@h1:5432,h2:5432/db"),
            Some(InvalidDatabaseUrl::NotAUrl(_))
        ));
        assert_eq!(
            refused("postgres://h"),
            Some(InvalidDatabaseUrl::NoDatabase)
        );
        assert_eq!(
            refused("postgres://h/"),
            Some(InvalidDatabaseUrl::NoDatabase)
        );
        assert_eq!(
            refused("postgres://h/?x=1"),
            Some(InvalidDatabaseUrl::NoDatabase)
        );
    }

    #[test]
    fn hides_the_password_but_hands_it_to_the_driver() {
        let url = parse("postgres://app:s3cr@t@db:5432/chat");
        assert_eq!(url.to_string(), "postgres://app:***@db:5432/chat");
        assert!(!format!("{url:?} {url}").contains("s3cr"));
        // The `@` inside the password is encoded, which the driver decodes.
        assert_eq!(
            url.expose().expose_secret(),
            "postgres://app:s3cr%40t@db:5432/chat"
        );
        let url = parse("postgres://app@db/chat");
        assert_eq!(url.to_string(), "postgres://app@db/chat");
        let url = parse("postgres://app@db/chat?sslmode=require&password=hunter2");
        assert_eq!(
            url.to_string(),
            "postgres://app@db/chat?sslmode=require&password=***"
        );
        assert!(url.expose().expose_secret().contains("password=hunter2"));
    }
}

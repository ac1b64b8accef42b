use std::fmt;

/// A `postgres://` URL, kept whole for connecting and shown only with its password hidden.
#[derive(Clone, PartialEq, Eq)]
pub struct DatabaseUrl {
    url: String,
    /// Byte range of the database name within `url`.
    database: std::ops::Range<usize>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidDatabaseUrl {
    #[error("must start with postgres:// or postgresql://")]
    Scheme,
    #[error("must name a database, as in postgres://user@host:5432/chat")]
    NoDatabase,
}

impl DatabaseUrl {
    pub fn parse(url: &str) -> Result<Self, InvalidDatabaseUrl> {
        let rest_at = ["postgres://", "postgresql://"]
            .iter()
            .find_map(|scheme| url.starts_with(scheme).then_some(scheme.len()))
            .ok_or(InvalidDatabaseUrl::Scheme)?;
        let slash = url[rest_at..]
            .find('/')
            .ok_or(InvalidDatabaseUrl::NoDatabase)?
            + rest_at;
        let end = url[slash..].find('?').map_or(url.len(), |q| q + slash);
        if end == slash + 1 {
            return Err(InvalidDatabaseUrl::NoDatabase);
        }
        Ok(Self {
            url: url.to_owned(),
            database: slash + 1..end,
        })
    }

    /// The URL to hand to the driver. Never log it: it may hold a password.
    pub fn expose(&self) -> &str {
        &self.url
    }

    pub fn database_name(&self) -> &str {
        &self.url[self.database.clone()]
    }

    /// The same server and credentials, another database.
    pub fn with_database(&self, name: &str) -> Self {
        let mut url = String::with_capacity(self.url.len() + name.len());
        url.push_str(&self.url[..self.database.start]);
        url.push_str(name);
        url.push_str(&self.url[self.database.end..]);
        let database = self.database.start..self.database.start + name.len();
        Self { url, database }
    }

    /// The URL with any password replaced, fit for logs and error messages.
    pub fn redacted(&self) -> String {
        let authority_start = self.url.find("://").map_or(0, |i| i + 3);
        let authority_end = self.database.start - 1;
        let authority = &self.url[authority_start..authority_end];
        match authority.rfind('@') {
            Some(at) => match authority[..at].find(':') {
                Some(colon) => format!(
                    "{}{}:***{}",
                    &self.url[..authority_start],
                    &authority[..colon],
                    &self.url[authority_start + at..]
                ),
                None => self.url.clone(),
            },
            None => self.url.clone(),
        }
    }
}

impl fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl fmt::Display for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_database_name() {
        let url = DatabaseUrl::parse("postgres://postgres@localhost:5432/chat")
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(url.database_name(), "chat");
        let url = DatabaseUrl::parse("postgresql://u:p@h/app?sslmode=disable")
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(url.database_name(), "app");
        assert_eq!(
            url.with_database("postgres").expose(),
            "postgresql://u:p@h/postgres?sslmode=disable"
        );
        assert_eq!(url.with_database("postgres").database_name(), "postgres");
    }

    #[test]
    fn refuses_urls_without_a_database_or_scheme() {
        assert_eq!(
            DatabaseUrl::parse("mysql://h/db"),
            Err(InvalidDatabaseUrl::Scheme)
        );
        assert_eq!(
            DatabaseUrl::parse("postgres://h"),
            Err(InvalidDatabaseUrl::NoDatabase)
        );
        assert_eq!(
            DatabaseUrl::parse("postgres://h/"),
            Err(InvalidDatabaseUrl::NoDatabase)
        );
        assert_eq!(
            DatabaseUrl::parse("postgres://h/?x=1"),
            Err(InvalidDatabaseUrl::NoDatabase)
        );
    }

    #[test]
    fn hides_the_password() {
        let url = DatabaseUrl::parse("postgres://app:s3cr@t@db:5432/chat")
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(url.redacted(), "postgres://app:***@db:5432/chat");
        assert!(!format!("{url:?} {url}").contains("s3cr"));
        let url = DatabaseUrl::parse("postgres://app@db/chat").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(url.redacted(), "postgres://app@db/chat");
    }
}

//! Hand-written SQL that stays prepared on its connection.
//!
//! `diesel::sql_query` cannot know that its text never changes, so it prepares the statement
//! anew on every call: an extra round trip, and a fresh parse and plan in PostgreSQL, for each
//! write of a turn. A [`Fixed`] statement's text is a `&'static str`, so diesel keeps it in the
//! connection's statement cache (keyed by its text and bind types) and later calls only bind and
//! execute it.

use std::marker::PhantomData;

use diesel::{
    pg::Pg,
    query_builder::{AstPass, Query, QueryFragment, QueryId},
    result::QueryResult,
    serialize::ToSql,
    sql_types::{HasSqlType, Untyped},
};

/// A constant SQL statement and its bind values (`$1`, `$2`… in the order they were bound).
/// Rows it returns are read by name, as with `sql_query`.
#[must_use]
pub struct Fixed<B> {
    sql: &'static str,
    binds: B,
}

/// A statement whose text is a constant, and so safe to keep prepared.
pub fn fixed(sql: &'static str) -> Fixed<()> {
    Fixed { sql, binds: () }
}

impl<B> Fixed<B> {
    /// Binds the next parameter as SQL type `ST`.
    pub fn bind<ST, V>(self, value: V) -> Fixed<Bound<B, ST, V>> {
        Fixed {
            sql: self.sql,
            binds: Bound {
                earlier: self.binds,
                value,
                sql_type: PhantomData,
            },
        }
    }
}

/// The bind values, as a list built from its end.
pub struct Bound<Earlier, ST, V> {
    earlier: Earlier,
    value: V,
    sql_type: PhantomData<fn() -> ST>,
}

/// Pushes bind values in parameter order.
pub trait Binds {
    fn push<'b>(&'b self, pass: &mut AstPass<'_, 'b, Pg>) -> QueryResult<()>;
}

impl Binds for () {
    fn push<'b>(&'b self, _: &mut AstPass<'_, 'b, Pg>) -> QueryResult<()> {
        Ok(())
    }
}

impl<Earlier, ST, V> Binds for Bound<Earlier, ST, V>
where
    Earlier: Binds,
    Pg: HasSqlType<ST>,
    V: ToSql<ST, Pg>,
{
    fn push<'b>(&'b self, pass: &mut AstPass<'_, 'b, Pg>) -> QueryResult<()> {
        self.earlier.push(pass)?;
        // The text already holds the placeholders; only the value is added.
        pass.push_bind_param_value_only::<ST, V>(&self.value)
    }
}

impl<B: Binds> QueryFragment<Pg> for Fixed<B> {
    fn walk_ast<'b>(&'b self, mut pass: AstPass<'_, 'b, Pg>) -> QueryResult<()> {
        pass.push_sql(self.sql);
        self.binds.push(&mut pass)
    }
}

// No static query id: the statement cache keys these by their SQL text.
impl<B> QueryId for Fixed<B> {
    type QueryId = ();
    const HAS_STATIC_QUERY_ID: bool = false;
}

impl<B> Query for Fixed<B> {
    type SqlType = Untyped;
}

#[cfg(test)]
mod tests {
    use diesel::{
        debug_query,
        sql_types::{Integer, Text},
    };

    use super::*;

    #[test]
    fn binds_in_order_and_is_cacheable() {
        let statement = fixed("SELECT $1, $2")
            .bind::<Integer, _>(7)
            .bind::<Text, _>("x");
        assert_eq!(
            debug_query::<Pg, _>(&statement).to_string(),
            r#"SELECT $1, $2 -- binds: [7, "x"]"#
        );
        assert!(statement.is_safe_to_cache_prepared(&Pg).unwrap_or(false));
        // What `sql_query` would have done with the same text.
        let dynamic = diesel::sql_query("SELECT $1").bind::<Integer, _>(7);
        assert!(!dynamic.is_safe_to_cache_prepared(&Pg).unwrap_or(true));
    }
}

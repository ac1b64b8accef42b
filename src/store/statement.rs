//! Hand-written SQL that stays prepared on its connection.
//!
//! `diesel::sql_query` cannot know that its text never changes, so it prepares the statement
//! anew on every call: an extra round trip, and a fresh parse and plan in PostgreSQL, for each
//! write of a turn. A [`Fixed`] statement's text is a `&'static str`, so diesel keeps it in the
//! connection's statement cache and later calls only bind and execute it.
//!
//! The cache finds a statement made with [`fixed`] by its text, which it hashes on every call:
//! several kilobytes for a turn's statements. One made with [`statement!`] has a type of its own,
//! and the cache finds it by that type, as it finds diesel's own queries.

use std::{any::Any, marker::PhantomData};

use diesel::{
    pg::Pg,
    query_builder::{AstPass, Query, QueryFragment, QueryId},
    result::QueryResult,
    serialize::ToSql,
    sql_types::{HasSqlType, Untyped},
};

/// A constant SQL statement and its bind values (`$1`, `$2`… in the order they were bound).
/// Rows it returns are read by name, as with `sql_query`. `K` says how the statement cache finds
/// it: by its text ([`ByText`]), or by a type made for it by [`statement!`].
#[must_use]
pub struct Fixed<B, K = ByText> {
    sql: &'static str,
    binds: B,
    key: PhantomData<fn() -> K>,
}

/// How the statement cache finds a [`Fixed`] statement.
pub trait CacheKey: Any {
    /// Whether by this type; otherwise by the statement's text.
    const BY_TYPE: bool;
}

/// The statement cache finds the statement by its text.
pub enum ByText {}

impl CacheKey for ByText {
    const BY_TYPE: bool = false;
}

/// A statement whose text is a constant, and so safe to keep prepared.
pub fn fixed(sql: &'static str) -> Fixed<()> {
    Fixed::with_key(sql)
}

/// The constant statement `$sql` as a [`Fixed`] that the statement cache finds by a type made
/// for this place in the code alone, without hashing its text. For the statements of a turn.
macro_rules! statement {
    ($sql:expr $(,)?) => {{
        enum ThisStatement {}
        impl $crate::store::statement::CacheKey for ThisStatement {
            const BY_TYPE: bool = true;
        }
        $crate::store::statement::Fixed::<(), ThisStatement>::with_key($sql)
    }};
}
pub(super) use statement;

impl<K> Fixed<(), K> {
    /// Use [`fixed`] or [`statement!`].
    pub fn with_key(sql: &'static str) -> Self {
        Fixed {
            sql,
            binds: (),
            key: PhantomData,
        }
    }
}

impl<B, K> Fixed<B, K> {
    /// Binds the next parameter as SQL type `ST`.
    pub fn bind<ST, V>(self, value: V) -> Fixed<Bound<B, ST, V>, K> {
        Fixed {
            sql: self.sql,
            binds: Bound {
                earlier: self.binds,
                value,
                sql_type: PhantomData,
            },
            key: PhantomData,
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
    /// The SQL types bound, in order: part of the statement's key in the cache, since the same
    /// text prepared for other types is another statement.
    type SqlTypes: Any;

    fn push<'b>(&'b self, pass: &mut AstPass<'_, 'b, Pg>) -> QueryResult<()>;
}

impl Binds for () {
    type SqlTypes = ();

    fn push<'b>(&'b self, _: &mut AstPass<'_, 'b, Pg>) -> QueryResult<()> {
        Ok(())
    }
}

impl<Earlier, ST, V> Binds for Bound<Earlier, ST, V>
where
    Earlier: Binds,
    ST: Any,
    Pg: HasSqlType<ST>,
    V: ToSql<ST, Pg>,
{
    type SqlTypes = (Earlier::SqlTypes, ST);

    fn push<'b>(&'b self, pass: &mut AstPass<'_, 'b, Pg>) -> QueryResult<()> {
        self.earlier.push(pass)?;
        // The text already holds the placeholders; only the value is added.
        pass.push_bind_param_value_only::<ST, V>(&self.value)
    }
}

impl<B: Binds, K> QueryFragment<Pg> for Fixed<B, K> {
    fn walk_ast<'b>(&'b self, mut pass: AstPass<'_, 'b, Pg>) -> QueryResult<()> {
        pass.push_sql(self.sql);
        self.binds.push(&mut pass)
    }
}

impl<B: Binds, K: CacheKey> QueryId for Fixed<B, K> {
    type QueryId = (K, B::SqlTypes);
    const HAS_STATIC_QUERY_ID: bool = K::BY_TYPE;
}

impl<B, K> Query for Fixed<B, K> {
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

    #[test]
    fn a_named_statement_is_found_by_its_type_and_one_by_text_by_its_text() {
        let first = statement!("SELECT $1").bind::<Integer, _>(7);
        let second = statement!("SELECT $1").bind::<Integer, _>(7);
        let other_types = statement!("SELECT $1").bind::<Text, _>("7");
        assert!(query_id(&first).is_some());
        // Each place in the code is a statement of its own, whatever its text.
        assert_ne!(query_id(&first), query_id(&second));
        assert_ne!(query_id(&second), query_id(&other_types));
        assert_eq!(query_id(&fixed("SELECT $1").bind::<Integer, _>(7)), None);
    }

    fn query_id<Q: QueryId>(_: &Q) -> Option<std::any::TypeId> {
        Q::query_id()
    }
}

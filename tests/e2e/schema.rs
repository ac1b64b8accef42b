//! src/store/schema.rs is written by hand, so nothing else notices when it drifts from what the
//! migrations create: diesel would only fail at run time, on the first query that touches the
//! difference. This renders the schema the migrated database has and compares the two.

use std::fmt::Write;

use diesel::{
    QueryableByName, sql_query,
    sql_types::{Bool, Text},
};
use diesel_async::{AsyncPgConnection, RunQueryDsl, SimpleAsyncConnection};

use super::support::TestDatabase;

#[derive(QueryableByName)]
struct Column {
    #[diesel(sql_type = Text)]
    table_name: String,
    #[diesel(sql_type = Text)]
    column_name: String,
    #[diesel(sql_type = Text)]
    type_name: String,
    #[diesel(sql_type = Bool)]
    nullable: bool,
    /// The primary key's columns, in key order, as diesel's `table (a, b)` wants them.
    #[diesel(sql_type = Text)]
    primary_key: String,
}

#[derive(QueryableByName)]
struct ForeignKey {
    #[diesel(sql_type = Text)]
    child: String,
    #[diesel(sql_type = Text)]
    parent: String,
    /// Comma-separated: `joinable!` takes one column, so a longer key has to be refused.
    #[diesel(sql_type = Text)]
    columns: String,
}

const COLUMNS: &str = "
    SELECT c.table_name::text, c.column_name::text, c.udt_name::text AS type_name,
           c.is_nullable = 'YES' AS nullable,
           coalesce((SELECT string_agg(k.column_name::text, ', ' ORDER BY k.ordinal_position)
                     FROM information_schema.table_constraints p
                     JOIN information_schema.key_column_usage k
                       USING (constraint_schema, constraint_name, table_name)
                     WHERE p.constraint_type = 'PRIMARY KEY' AND p.table_schema = c.table_schema
                       AND p.table_name = c.table_name), '') AS primary_key
    FROM information_schema.columns c
    JOIN information_schema.tables t USING (table_schema, table_name)
    WHERE c.table_schema = 'public' AND t.table_type = 'BASE TABLE'
      AND c.table_name <> '__diesel_schema_migrations'
    ORDER BY c.table_name, c.ordinal_position";

const FOREIGN_KEYS: &str = "
    SELECT child.relname::text AS child, parent.relname::text AS parent,
           (SELECT string_agg(a.attname::text, ', ' ORDER BY k.n)
            FROM unnest(con.conkey) WITH ORDINALITY k(attnum, n)
            JOIN pg_attribute a ON a.attrelid = con.conrelid AND a.attnum = k.attnum) AS columns
    FROM pg_constraint con
    JOIN pg_class child ON child.oid = con.conrelid
    JOIN pg_class parent ON parent.oid = con.confrelid
    WHERE con.contype = 'f' AND con.connamespace = 'public'::regnamespace
    ORDER BY child, parent, columns";

fn diesel_type(postgres: &str) -> &'static str {
    match postgres {
        "uuid" => "Uuid",
        "text" => "Text",
        "timestamptz" => "Timestamptz",
        "int8" => "Int8",
        "int4" => "Int4",
        "jsonb" => "Jsonb",
        "bytea" => "Bytea",
        "bool" => "Bool",
        "date" => "Date",
        "_text" => "Array<Text>",
        "_int4" => "Array<Int4>",
        // Not among diesel's own types: schema.rs names it, and `render` imports it.
        "tsvector" => "Tsvector",
        other => panic!("no diesel type is mapped for the PostgreSQL type {other}: add it here"),
    }
}

async fn load<T: QueryableByName<diesel::pg::Pg> + Send + 'static>(
    conn: &mut AsyncPgConnection,
    statement: &str,
) -> Vec<T> {
    sql_query(statement)
        .load(conn)
        .await
        .unwrap_or_else(|e| panic!("{statement}: {e}"))
}

/// The schema.rs that describes `columns` and `foreign_keys`, tables in name order.
fn render(columns: &[Column], foreign_keys: &[ForeignKey]) -> String {
    let mut text = String::new();
    let mut tables: Vec<&str> = Vec::new();
    for column in columns {
        if tables.last() != Some(&column.table_name.as_str()) {
            if !tables.is_empty() {
                text.push_str("    }\n}\n\n");
            }
            assert!(
                !column.primary_key.is_empty(),
                "{} has no primary key, which diesel::table! needs",
                column.table_name
            );
            text.push_str("diesel::table! {\n");
            if columns
                .iter()
                .any(|c| c.table_name == column.table_name && c.type_name == "tsvector")
            {
                text.push_str("    use diesel::sql_types::*;\n    use crate::store::Tsvector;\n\n");
            }
            let _ = writeln!(
                text,
                "    {} ({}) {{",
                column.table_name, column.primary_key
            );
            tables.push(&column.table_name);
        }
        let sql_type = diesel_type(&column.type_name);
        let sql_type = if column.nullable {
            format!("Nullable<{sql_type}>")
        } else {
            sql_type.to_owned()
        };
        let _ = writeln!(text, "        {} -> {sql_type},", column.column_name);
    }
    assert!(!tables.is_empty(), "the migrated database has no tables");
    text.push_str("    }\n}\n\n");
    for key in foreign_keys {
        assert!(
            !key.columns.contains(','),
            "{} -> {} ({}): diesel::joinable! cannot express a key of several columns",
            key.child,
            key.parent,
            key.columns
        );
        let _ = writeln!(
            text,
            "diesel::joinable!({} -> {} ({}));",
            key.child, key.parent, key.columns
        );
    }
    if !foreign_keys.is_empty() {
        text.push('\n');
    }
    text.push_str("diesel::allow_tables_to_appear_in_same_query!(\n");
    for table in tables {
        let _ = writeln!(text, "    {table},");
    }
    text.push_str(");\n");
    text
}

/// schema.rs without the comment lines and blank lines that open it.
fn without_header(text: &str) -> String {
    let mut lines = text.lines().peekable();
    while lines
        .next_if(|line| line.starts_with("//") || line.trim().is_empty())
        .is_some()
    {}
    lines.map(|line| format!("{line}\n")).collect()
}

#[tokio::test]
async fn schema_rs_describes_the_migrated_database() {
    let db = TestDatabase::new().await;
    let mut conn = db.connect().await;
    let columns: Vec<Column> = load(&mut conn, COLUMNS).await;
    let foreign_keys: Vec<ForeignKey> = load(&mut conn, FOREIGN_KEYS).await;
    let expected = render(&columns, &foreign_keys);

    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/store/schema.rs");
    let written =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let written = without_header(&written);
    if written != expected {
        // The full text is what a developer pastes; the first differing line is what they read.
        let line = written
            .lines()
            .zip(expected.lines())
            .take_while(|(written, expected)| written == expected)
            .count();
        panic!(
            "{} does not describe the migrated database (line {} after the header is {:?}, expected {:?}). After its header comment it should read:\n\n{expected}",
            path.display(),
            line + 1,
            written.lines().nth(line).unwrap_or("<end of file>"),
            expected.lines().nth(line).unwrap_or("<end of file>"),
        );
    }
}

/// The rules on the values of the rows a turn writes hold, whichever writer breaks them: each
/// statement below breaks one and must be refused, while the row as it is passes.
#[tokio::test]
async fn the_rows_a_turn_writes_keep_their_rules() {
    let db = TestDatabase::new().await;
    let mut conn = db.connect().await;
    super::support::database::execute(
        &mut conn,
        "INSERT INTO users (id, subject) VALUES ('00000000-0000-0000-0000-000000000001', 'u');
         INSERT INTO conversations (id, user_id, title, created_at, updated_at, revision)
         VALUES ('00000000-0000-0000-0000-000000000002', '00000000-0000-0000-0000-000000000001',
                 't', now(), now(), 1);
         INSERT INTO messages (id, conversation_id, role, content, status, created_at, sequence)
         VALUES ('00000000-0000-0000-0000-000000000003', '00000000-0000-0000-0000-000000000002',
                 'user', 'hi', 'complete', now(), 1);
         INSERT INTO turns (id, user_id, conversation_id, request_key, replica, created_at)
         VALUES ('00000000-0000-0000-0000-000000000003', '00000000-0000-0000-0000-000000000001',
                 '00000000-0000-0000-0000-000000000002', 'k',
                 '00000000-0000-0000-0000-000000000004', now());
         INSERT INTO usage_days (user_id, day, model, calls, estimated_calls, input_tokens,
                                 cached_input_tokens, output_tokens, reasoning_tokens, cost_micros)
         VALUES ('00000000-0000-0000-0000-000000000001', current_date, 'm', 1, 0, 1, 0, 1, 0, 0);",
    )
    .await;
    let allowed = [
        "UPDATE messages SET role = 'assistant', status = 'awaiting_tool_results'",
        "UPDATE turns SET state = 'interrupted', attempt = 2, request_key = NULL",
        "UPDATE conversations SET title_source = 'model'",
        "UPDATE usage_days SET calls = 0, cost_micros = 7",
    ];
    for statement in allowed {
        super::support::database::execute(&mut conn, statement).await;
    }
    let refused = [
        "UPDATE messages SET role = 'robot'",
        "UPDATE messages SET status = 'done'",
        "UPDATE turns SET state = 'paused'",
        "UPDATE turns SET attempt = 0",
        "UPDATE turns SET request_key = ''",
        "UPDATE conversations SET title_source = 'guessed'",
        "UPDATE usage_days SET calls = -1",
        "UPDATE usage_days SET estimated_calls = -1",
        "UPDATE usage_days SET input_tokens = -1",
        "UPDATE usage_days SET cached_input_tokens = -1",
        "UPDATE usage_days SET output_tokens = -1",
        "UPDATE usage_days SET reasoning_tokens = -1",
        "UPDATE usage_days SET cost_micros = -1",
    ];
    for statement in refused {
        match conn.batch_execute(statement).await {
            Err(e) => assert!(
                e.to_string().contains("violates check constraint"),
                "{statement}: {e}"
            ),
            Ok(()) => panic!("{statement} was allowed"),
        }
    }
}

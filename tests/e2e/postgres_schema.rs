//! Both backends describe the same schema: a SQLite database made by `migrations/sqlite/` and a
//! PostgreSQL database made by `migrations/postgres/` have the same tables, columns (in order,
//! with the same types as the `Any` driver reads them, nullability and defaults), primary keys,
//! foreign keys (with their ON DELETE) and indexes (unique and partial ones too). A migration
//! added to one directory and not the other fails here. CHECK constraints are not compared (the
//! two catalogs spell expressions too differently); the PostgreSQL file copies SQLite's text.

use std::collections::BTreeSet;

use sqlx::{Connection, PgConnection, SqliteConnection};

use crate::postgres;
use crate::prerequisite::missing_prerequisite;

static SQLITE: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/sqlite");
static POSTGRES: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/postgres");

/// One table as both backends can describe it.
#[derive(Debug, PartialEq)]
struct Table {
    name: String,
    /// In order: name, type (`bigint`, `text`, `bytea`), NOT NULL, default.
    columns: Vec<(String, String, bool, Option<String>)>,
    primary_key: Vec<String>,
    /// Column, referenced table, referenced column, ON DELETE.
    foreign_keys: BTreeSet<(String, String, String, String)>,
    indexes: BTreeSet<Index>,
}

/// Name (None for a UNIQUE constraint's, which each backend names its own way), columns, unique,
/// partial index predicate.
type Index = (Option<String>, Vec<String>, bool, Option<String>);

/// An index as PostgreSQL's catalog lists it: name, unique, made by a UNIQUE constraint, columns,
/// partial index predicate.
type PgIndex = (String, bool, bool, Vec<String>, Option<String>);

#[tokio::test]
async fn the_postgres_schema_is_the_sqlite_schema() {
    if !postgres::available() {
        missing_prerequisite("PostgreSQL is not installed", "scripts/install-deps --tests installs postgresql");
        return;
    }
    let mut sqlite = SqliteConnection::connect("sqlite::memory:").await.unwrap();
    SQLITE.run(&mut sqlite).await.unwrap();
    let mut pg = PgConnection::connect(&postgres::server().database()).await.unwrap();
    POSTGRES.run(&mut pg).await.unwrap();

    let (sqlite, pg) = (sqlite_tables(&mut sqlite).await, pg_tables(&mut pg).await);
    let names = |tables: &[Table]| tables.iter().map(|t| t.name.clone()).collect::<Vec<_>>();
    assert_eq!(names(&sqlite), names(&pg), "the same tables");
    for (sqlite, pg) in sqlite.iter().zip(&pg) {
        assert_eq!(sqlite, pg, "table {} differs (left: SQLite, right: PostgreSQL)", sqlite.name);
    }
}

async fn sqlite_tables(db: &mut SqliteConnection) -> Vec<Table> {
    let names: Vec<String> = sqlx::query_scalar(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' \
         AND name <> '_sqlx_migrations' ORDER BY name",
    )
    .fetch_all(&mut *db)
    .await
    .unwrap();
    let mut tables = Vec::new();
    for name in names {
        let rows: Vec<(String, String, i64, Option<String>, i64)> =
            sqlx::query_as("SELECT name, type, \"notnull\", dflt_value, pk FROM pragma_table_info(?1) ORDER BY cid")
                .bind(&name)
                .fetch_all(&mut *db)
                .await
                .unwrap();
        let columns = rows
            .iter()
            .map(|(column, kind, not_null, default, pk)| {
                let kind = match kind.as_str() {
                    "INTEGER" => "bigint",
                    "TEXT" => "text",
                    "BLOB" => "bytea",
                    other => panic!("{name}.{column}: a SQLite type the PostgreSQL schema has no mapping for: {other}"),
                };
                // An INTEGER PRIMARY KEY (the rowid) is never NULL, though not declared NOT NULL.
                (column.clone(), kind.to_string(), *not_null == 1 || *pk > 0, default.clone())
            })
            .collect();
        let mut primary_key: Vec<(i64, String)> = rows.iter().filter(|r| r.4 > 0).map(|r| (r.4, r.0.clone())).collect();
        primary_key.sort();
        let foreign_keys: Vec<(String, String, String, String)> =
            sqlx::query_as("SELECT \"from\", \"table\", \"to\", on_delete FROM pragma_foreign_key_list(?1)")
                .bind(&name)
                .fetch_all(&mut *db)
                .await
                .unwrap();
        let list: Vec<(String, i64, String)> =
            sqlx::query_as("SELECT name, \"unique\", origin FROM pragma_index_list(?1) WHERE origin <> 'pk'")
                .bind(&name)
                .fetch_all(&mut *db)
                .await
                .unwrap();
        let mut indexes = BTreeSet::new();
        for (index, unique, origin) in list {
            let columns: Vec<String> = sqlx::query_scalar("SELECT name FROM pragma_index_info(?1) ORDER BY seqno")
                .bind(&index)
                .fetch_all(&mut *db)
                .await
                .unwrap();
            let sql: Option<String> = sqlx::query_scalar("SELECT sql FROM sqlite_master WHERE name = ?1")
                .bind(&index)
                .fetch_one(&mut *db)
                .await
                .unwrap();
            let predicate = sql.and_then(|sql| sql.split_once(" WHERE ").map(|(_, p)| p.trim().to_string()));
            let name = (origin == "c").then_some(index);
            indexes.insert((name, columns, unique == 1, predicate));
        }
        tables.push(Table {
            name,
            columns,
            primary_key: primary_key.into_iter().map(|(_, c)| c).collect(),
            foreign_keys: foreign_keys.into_iter().collect(),
            indexes,
        });
    }
    tables
}

async fn pg_tables(db: &mut PgConnection) -> Vec<Table> {
    let names: Vec<String> = sqlx::query_scalar(
        "SELECT c.relname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE n.nspname = 'public' AND c.relkind = 'r' AND c.relname <> '_sqlx_migrations' ORDER BY 1",
    )
    .fetch_all(&mut *db)
    .await
    .unwrap();
    let mut tables = Vec::new();
    for name in names {
        let columns: Vec<(String, String, bool, Option<String>)> = sqlx::query_as(
            "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod), a.attnotnull, \
                    pg_get_expr(d.adbin, d.adrelid) \
             FROM pg_attribute a LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum \
             WHERE a.attrelid = $1::regclass AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum",
        )
        .bind(&name)
        .fetch_all(&mut *db)
        .await
        .unwrap();
        let columns = columns
            .into_iter()
            .map(|(column, kind, not_null, default)| (column, kind, not_null, default.map(|d| strip_casts(&d))))
            .collect();
        let primary_key: Vec<String> = sqlx::query_scalar(
            "SELECT a.attname::text FROM pg_index ix, unnest(ix.indkey) WITH ORDINALITY k(attnum, n), pg_attribute a \
             WHERE ix.indrelid = $1::regclass AND ix.indisprimary AND a.attrelid = ix.indrelid AND a.attnum = k.attnum \
             ORDER BY k.n",
        )
        .bind(&name)
        .fetch_all(&mut *db)
        .await
        .unwrap();
        let foreign_keys: Vec<(String, String, String, String)> = sqlx::query_as(
            "SELECT a.attname::text, c.confrelid::regclass::text, af.attname::text, \
                    CASE c.confdeltype WHEN 'c' THEN 'CASCADE' WHEN 'a' THEN 'NO ACTION' WHEN 'n' THEN 'SET NULL' \
                    WHEN 'r' THEN 'RESTRICT' ELSE 'SET DEFAULT' END \
             FROM pg_constraint c \
             JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = c.conkey[1] \
             JOIN pg_attribute af ON af.attrelid = c.confrelid AND af.attnum = c.confkey[1] \
             WHERE c.conrelid = $1::regclass AND c.contype = 'f'",
        )
        .bind(&name)
        .fetch_all(&mut *db)
        .await
        .unwrap();
        let indexes: Vec<PgIndex> = sqlx::query_as(
            "SELECT i.relname::text, ix.indisunique, \
                    EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conindid = ix.indexrelid AND c.contype = 'u'), \
                    ARRAY(SELECT a.attname::text FROM unnest(ix.indkey) WITH ORDINALITY k(attnum, n) \
                          JOIN pg_attribute a ON a.attrelid = ix.indrelid AND a.attnum = k.attnum ORDER BY k.n), \
                    pg_get_expr(ix.indpred, ix.indrelid) \
             FROM pg_index ix JOIN pg_class i ON i.oid = ix.indexrelid \
             WHERE ix.indrelid = $1::regclass AND NOT ix.indisprimary",
        )
        .bind(&name)
        .fetch_all(&mut *db)
        .await
        .unwrap();
        let indexes = indexes
            .into_iter()
            .map(|(index, unique, constraint, columns, predicate)| {
                let predicate = predicate.map(|p| {
                    let p = strip_casts(&p);
                    p.strip_prefix('(').and_then(|p| p.strip_suffix(')')).map(str::to_string).unwrap_or(p)
                });
                ((!constraint).then_some(index), columns, unique, predicate)
            })
            .collect();
        tables.push(Table { name, columns, primary_key, foreign_keys: foreign_keys.into_iter().collect(), indexes });
    }
    tables
}

/// `'queued'::text` as SQLite spells it: `'queued'`.
fn strip_casts(expression: &str) -> String {
    expression.replace("::text", "")
}

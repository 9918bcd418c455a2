//! Unit tests of the analyzer: how statements are read.

use super::*;

fn writes(sql: &str) -> Vec<Write> {
    match analyze(sql).effect {
        Effect::Writes(w) => w,
        other => panic!("{sql}: expected writes, got {other:?}"),
    }
}

fn names(read: &Read) -> Vec<String> {
    read.tables.iter().map(|t| t.name.clone()).collect()
}

#[test]
fn op_comes_from_the_tree_not_the_text() {
    assert_eq!(analyze("SELECT * FROM t WHERE note = 'count('").read.unwrap().op, ReadOp::Fetch);
    assert_eq!(analyze("SELECT COUNT(*) AS n FROM t").read.unwrap().op, ReadOp::Count);
    assert_eq!(analyze("SELECT EXISTS (SELECT 1 FROM t WHERE a = $1)").read.unwrap().op, ReadOp::Exists);
    assert_eq!(analyze("SELECT g, count(*) FROM t GROUP BY g").read.unwrap().op, ReadOp::Fetch);
    assert_eq!(analyze("SELECT count(*) FROM t GROUP BY g").read.unwrap().op, ReadOp::Fetch);
}

#[test]
fn joins_and_subqueries_list_every_table() {
    let read = analyze(
        "SELECT u.* FROM users u JOIN orders o ON o.user_id = u.id WHERE u.id IN (SELECT user_id FROM refunds)",
    )
    .read
    .unwrap();
    let mut tables = names(&read);
    tables.sort();
    assert_eq!(tables, ["orders", "refunds", "users"]);
}

#[test]
fn ctes_are_reported_separately() {
    let read = analyze("WITH a AS (SELECT * FROM users) SELECT * FROM a").read.unwrap();
    assert_eq!(read.ctes, ["a"]);
    assert!(names(&read).contains(&"users".to_owned()));
}

#[test]
fn only_ascii_letters_fold() {
    let read = analyze("SELECT * FROM Ät JOIN ÄT ON true JOIN \"Ät\" ON true").read.unwrap();
    assert_eq!(names(&read), ["Ät", "Ät", "Ät"]);
    assert_eq!(TableName::parse("Schéma.ÉTÉ").name, "ÉtÉ");
    assert_eq!(TableName::parse("Schéma.ÉTÉ").schema.as_deref(), Some("schéma"));
}

#[test]
fn identifiers_fold_like_postgres() {
    let read = analyze(r#"SELECT * FROM Public.Users JOIN "Mixed" ON true"#).read.unwrap();
    assert_eq!(read.tables[0], TableName { schema: Some("public".into()), name: "users".into() });
    assert_eq!(read.tables[1].name, "Mixed");
}

#[test]
fn uncacheable_reads() {
    for sql in [
        "SELECT * FROM t FOR UPDATE",
        "SELECT * FROM t FOR SHARE",
        "SELECT * FROM t WHERE id IN (SELECT id FROM u FOR UPDATE)",
        "SELECT * FROM t WHERE created < CURRENT_TIMESTAMP",
        "SELECT * FROM t WHERE d = current_date",
        "SELECT * FROM t WHERE created < 'now'::timestamptz",
        "SELECT * FROM generate_series(1, 3)",
        "SELECT 1",
        "WITH d AS (DELETE FROM t RETURNING id) SELECT * FROM d",
    ] {
        assert!(analyze(sql).read.is_err(), "{sql} must not be cacheable");
    }
}

#[test]
fn reasons_and_clock_spellings() {
    let reason = |sql: &str| analyze(sql).read.err();
    assert_eq!(reason("SELECT * FROM t FOR UPDATE"), Some(Uncached::Locking));
    assert_eq!(reason("SELECT * FROM t WHERE id = 1 FOR NO KEY UPDATE"), Some(Uncached::Locking));
    assert_eq!(reason("SELECT * FROM t FOR KEY SHARE"), Some(Uncached::Locking));
    assert_eq!(analyze("SELECT * FROM t FOR NO KEY UPDATE").effect, Effect::None, "a lock writes nothing");
    for sql in [
        "SELECT * FROM t WHERE c < $$now$$::timestamptz",
        "SELECT * FROM t WHERE c < E'now'::timestamptz",
        "SELECT * FROM t WHERE c < ('no' || 'w')::timestamptz",
        "SELECT * FROM t WHERE c < CAST('NOW ' AS timestamp with time zone)",
        "SELECT * FROM t WHERE d = date 'today'",
        "SELECT * FROM t WHERE d = 'tomorrow'",
    ] {
        assert_eq!(reason(sql), Some(Uncached::Clock), "{sql}");
    }
    assert_eq!(reason("SELECT * FROM t WHERE note = 'unknown'"), None, "clock words are whole words");
    assert_eq!(reason("SELECT * FROM t WHERE c < '2020-01-01'::timestamptz"), None);
    assert_eq!(reason("SELECT * FROM t WHERE c::date = $1"), None);
    assert_eq!(reason("SELECT * FROM t TABLESAMPLE SYSTEM (10)"), Some(Uncached::Sample));
    let functions = analyze(r#"SELECT s.lower(a), "LOWER"(b), count(*), coalesce(a, b) FROM t"#).functions;
    let names: Vec<(Option<&str>, &str)> = functions.iter().map(|f| (f.schema.as_deref(), f.name.as_str())).collect();
    assert_eq!(names, [(Some("s"), "lower"), (None, "LOWER"), (None, "count")]);
}

#[test]
fn sessions_and_transaction_control() {
    for sql in [
        "SET search_path TO x",
        "SET TIME ZONE 'UTC'",
        "SET ROLE alice",
        "SET SESSION AUTHORIZATION alice",
        "RESET ALL",
        "DISCARD ALL",
        "SELECT set_config('app.tenant', '1', false)",
        "BEGIN",
        "BEGIN; UPDATE t SET a = 1",
        // Not a kind known to leave the session alone: the allow-list decides, not spelling.
        "CREATE TEMP TABLE x (a int)",
        "CREATE TABLE pg_temp.x (a int)",
        "CREATE VIEW pg_temp.v AS SELECT 1",
        "SELECT 1 INTO TEMP x",
        "PREPARE p AS SELECT 1",
        "LISTEN c",
        "CALL p()",
        "DO $$ BEGIN PERFORM set_config('a.b', 'c', false); END $$",
        "SET SCHEMA 'x'",
        "SET XML OPTION DOCUMENT",
        "BEGIN ISOLATION LEVEL SERIALIZABLE, READ ONLY, DEFERRABLE",
        "BEGIN; COMMIT AND CHAIN",
    ] {
        assert!(analyze(sql).reach.session, "{sql} may change the session");
    }
    for sql in [
        "SET LOCAL search_path TO x",
        "SET LOCAL ROLE alice",
        "BEGIN; UPDATE t SET a = 1; COMMIT",
        "SELECT 1",
        "INSERT INTO t VALUES (1)",
        "TRUNCATE t",
        "SAVEPOINT a",
        "BEGIN; COMMIT AND CHAIN; COMMIT",
    ] {
        assert!(!analyze(sql).reach.session, "{sql} leaves the session as it was");
    }
    assert!(analyze("BEGIN; UPDATE t SET a = 1; COMMIT").reach.begins);
    for sql in ["UPDATE t SET a = 1; COMMIT; SELECT 1/0", "CALL p()", "ROLLBACK"] {
        assert!(analyze(sql).reach.transaction_control, "{sql}");
    }
    for sql in ["UPDATE t SET a = 1; DELETE FROM u", "SAVEPOINT a", "ROLLBACK TO SAVEPOINT a", "RELEASE a"] {
        assert!(!analyze(sql).reach.transaction_control, "{sql}");
        assert!(!analyze(sql).reach.ends_transaction, "{sql}");
    }
    for sql in ["COMMIT", "END", "ROLLBACK", "UPDATE t SET a = 1; COMMIT", "COMMIT AND NO CHAIN"] {
        let reach = analyze(sql).reach;
        assert!(reach.ends_transaction && reach.commits, "{sql}");
    }
    for sql in ["COMMIT AND CHAIN", "ROLLBACK AND CHAIN", "COMMIT WORK AND CHAIN"] {
        let reach = analyze(sql).reach;
        assert!(reach.commits && !reach.ends_transaction, "{sql}: the transaction goes on");
    }
    assert!(analyze("BEGIN; UPDATE t SET a = 1; COMMIT AND CHAIN").reach.leaves_open);
    assert!(!analyze("BEGIN; COMMIT AND CHAIN; COMMIT").reach.leaves_open);
    assert!(!analyze("CALL p()").reach.ends_transaction, "a procedure cannot commit inside a transaction block");
    // Strings the parser cannot read may do anything to the transaction and the session.
    for sql in ["DO $$ BEGIN COMMIT; END $$", "SELEC 1; ABORT", "BEGIN ISOLATION LEVEL SERIALIZABLE, DEFERRABLE"] {
        assert_eq!(analyze(sql).reach, Reach::unknown(), "{sql}");
    }
    assert!(analyze("ALTER DATABASE test SET timezone = 'UTC'").reach.new_sessions);
    assert!(analyze("ALTER ROLE alice SET timezone = 'UTC'").reach.new_sessions);
    assert!(!analyze("DO $$ BEGIN END $$").reach.new_sessions);
    for sql in ["SET LOCAL ROLE alice", "SELECT set_config('role', 'alice', true)", "RESET ROLE"] {
        assert!(analyze(sql).reach.sets, "{sql} may change the role for the rest of its transaction");
    }
    assert!(!analyze("UPDATE t SET a = 1").reach.sets);
}

#[test]
fn table_statements_are_dependencies() {
    let mut tables = names(&analyze("SELECT id FROM a UNION TABLE b").read.unwrap());
    tables.sort();
    assert_eq!(tables, ["a", "b"]);
    let read = analyze("SELECT * FROM a WHERE id IN (TABLE banned)").read.unwrap();
    assert!(names(&read).contains(&"banned".to_owned()));
    assert_eq!(names(&analyze("TABLE users").read.unwrap()), ["users"]);
}

#[test]
fn returning_of_another_instance_is_not_the_key() {
    let w = writes("UPDATE t AS x SET a = 1 FROM t WHERE x.id = t.id + 1 RETURNING t.id");
    let RowSource::Returning { items, .. } = &w[0].rows else { panic!() };
    assert_eq!(items[0], ("id".to_owned(), None), "t.id is the other instance");
    let w = writes("UPDATE t SET a = 1 FROM u WHERE u.id = t.id RETURNING u.*, t.id");
    assert_eq!(w[0].rows, RowSource::Unknown, "u.* hides where t.id is");
}

#[test]
fn cacheable_reads() {
    for sql in [
        "SELECT * FROM t WHERE id = $1",
        "SELECT lower(name), coalesce(a, 0) FROM t ORDER BY id LIMIT 50",
        "SELECT * FROM t WHERE id = ANY($1) AND name LIKE 'a%'",
        "SELECT a FROM t UNION SELECT a FROM u",
    ] {
        assert!(analyze(sql).read.is_ok(), "{sql} should be cacheable: {:?}", analyze(sql).read);
    }
}

#[test]
fn write_shapes() {
    let w = writes("UPDATE users SET name = 'x' WHERE id IN (1, 2)");
    assert_eq!(w[0].kind, WriteKind::Update);
    assert_eq!(w[0].assigned, ["name"]);
    assert!(matches!(w[0].rows, RowSource::Append { .. }));

    let w = writes("INSERT INTO users (id, name) VALUES ($1, $2) ON CONFLICT (id) DO UPDATE SET name = excluded.name");
    assert_eq!((w[0].kind, w[0].assigned.as_slice()), (WriteKind::Insert, ["name".to_owned()].as_slice()));

    let w = writes("DELETE FROM users WHERE id = ANY($1) RETURNING *");
    assert!(matches!(&w[0].rows, RowSource::Returning { star_first: true, .. }));

    let w = writes("WITH d AS (DELETE FROM users WHERE id = $1 RETURNING id) SELECT count(*) FROM d");
    assert_eq!((w[0].table.name.as_str(), &w[0].rows), ("users", &RowSource::Unknown));

    let w = writes("UPDATE a SET x = 1; DELETE FROM b");
    assert_eq!(w.len(), 2);
    assert!(w.iter().all(|w| w.rows == RowSource::Unknown), "multi-statement strings are not rewritten");

    let w = writes("TRUNCATE a, b CASCADE");
    assert_eq!(w[1].kind, WriteKind::Truncate { cascade: true });
}

#[test]
fn returning_items_know_their_source() {
    let w = writes("UPDATE users u SET name = 'x' WHERE true RETURNING u.id AS key, name, id + 1 AS id");
    let RowSource::Returning { items, star_first, .. } = &w[0].rows else { panic!() };
    assert!(!star_first);
    assert_eq!(items[0], ("key".to_owned(), Some("id".to_owned())));
    assert_eq!(items[1], ("name".to_owned(), Some("name".to_owned())));
    assert_eq!(items[2], ("id".to_owned(), None));
}

#[test]
fn append_offset_skips_trailing_noise() {
    for sql in [
        "UPDATE t SET a = 1 WHERE id = 2",
        "UPDATE t SET a = 1 WHERE id = 2;",
        "UPDATE t SET a = 1 WHERE id = 2 ; -- done\n",
        "UPDATE t SET a = 'é' WHERE id = 2 /* c */  ",
        "UPDATE t\nSET a = 'ü'\nWHERE id = 2\n-- trailing",
    ] {
        let w = writes(sql);
        let RowSource::Append { at, .. } = w[0].rows else { panic!("{sql}") };
        assert!(sql[..at].ends_with("id = 2"), "{sql:?} cut at {at}: {:?}", &sql[..at]);
    }
}

#[test]
fn procedural_and_unparsable_statements_mean_everything() {
    assert_eq!(analyze("CALL do_things()").effect, Effect::Everything { parsed: true });
    assert_eq!(analyze("not sql at all").effect, Effect::Everything { parsed: false });
    assert_eq!(analyze("").effect, Effect::Everything { parsed: false });
}

#[test]
fn harmless_statements_change_nothing() {
    for sql in ["BEGIN", "COMMIT", "ROLLBACK", "SET search_path TO x", "SELECT * FROM t", "SAVEPOINT a"] {
        assert_eq!(analyze(sql).effect, Effect::None, "{sql}");
    }
}

#[test]
fn ddl_is_noticed() {
    let a = analyze("CREATE TEMP TABLE scratch (id int)");
    assert!(a.ddl);
    assert_eq!(a.temp_tables, ["scratch"]);
    assert!(matches!(analyze("ALTER TABLE t ADD COLUMN c int").effect, Effect::Writes(_)));
}

//! Predicate tags: a list pinned to values of an indexed column depends on those values only,
//! and every write names the values its rows had and have. Each case checks both halves:
//! what must stay a hit stays one, and every read equals the raw pool's answer.

use sqlacache_sqlx::CachedPool;
use sqlacache_tests::TestDb;
use sqlx::PgPool;

const SCHEMA: &str = "
CREATE TABLE tickets (id bigserial PRIMARY KEY, customer_id bigint NOT NULL, status text NOT NULL,
    project uuid, tag varchar(20), note text, score int);
CREATE INDEX ON tickets (customer_id);
CREATE INDEX ON tickets (status);
CREATE INDEX ON tickets (project);
CREATE INDEX ON tickets (tag, status);
CREATE TABLE lines (order_id bigint, n int, product text NOT NULL, PRIMARY KEY (order_id, n));
INSERT INTO tickets (customer_id, status, project, tag)
  SELECT 1 + g % 10, CASE WHEN g % 3 = 0 THEN 'closed' ELSE 'open' END,
         CASE WHEN g % 4 = 0 THEN NULL ELSE ('00000000-0000-0000-0000-00000000000' || (g % 4))::uuid END,
         'tag' || (g % 5)
    FROM generate_series(1, 60) g;
INSERT INTO lines SELECT 1 + g % 20, g, 'product ' || g FROM generate_series(1, 60) g;
";

const P1: &str = "00000000-0000-0000-0000-000000000001";

type Row = (i64, i64, String);

/// One read: its SQL and one optional `bigint` argument.
#[derive(Clone, Copy, Debug)]
struct Read(&'static str, Option<i64>);

impl Read {
    /// Runs it through the cache and on the raw pool; asserts they agree; whether it was a hit.
    async fn run(self, cache: &CachedPool, pool: &PgPool) -> bool {
        let hits = cache.stats().hits;
        let mut cached = sqlacache_sqlx::query_as::<Row>(self.0);
        let mut raw = sqlx::query_as::<_, Row>(self.0);
        if let Some(arg) = self.1 {
            cached = cached.bind(arg);
            raw = raw.bind(arg);
        }
        let cached = cached.fetch_all(cache).await.unwrap_or_else(|e| panic!("{self:?}: {e}"));
        let hit = cache.stats().hits > hits;
        assert_eq!(cached, raw.fetch_all(pool).await.unwrap(), "{self:?} is stale (hit: {hit})");
        hit
    }
}

async fn setup() -> (TestDb, CachedPool) {
    let db = TestDb::with_schema(SCHEMA).await;
    let cache = sqlacache_tests::builder(db.pool.clone()).build().await.expect("build");
    (db, cache)
}

/// Reads each of `reads` twice, so that they are cached.
async fn warm(cache: &CachedPool, pool: &PgPool, reads: &[Read]) {
    for read in reads {
        read.run(cache, pool).await;
        assert!(read.run(cache, pool).await, "{read:?} is not cached");
    }
}

async fn exec(cache: &CachedPool, sql: &str) {
    sqlx::query(sqlx::AssertSqlSafe(sql.to_owned())).execute(cache).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
}

const OF_7: Read = Read("SELECT id, customer_id, status FROM tickets WHERE customer_id = $1 ORDER BY id", Some(7));
const OF_8: Read = Read("SELECT id, customer_id, status FROM tickets WHERE customer_id = $1 ORDER BY id", Some(8));
const OPEN: Read = Read("SELECT id, customer_id, status FROM tickets WHERE status = 'open' ORDER BY id", None);
const CLOSED: Read = Read("SELECT id, customer_id, status FROM tickets WHERE status = 'closed' ORDER BY id", None);

#[tokio::test]
async fn a_write_for_one_customer_leaves_anothers_list_cached() {
    let (db, cache) = setup().await;
    let of_7_text = Read("SELECT id, customer_id, status FROM tickets WHERE customer_id = '7' ORDER BY id", None);
    let of_7_count = Read("SELECT count(*), 7::int8, 'n' FROM tickets WHERE customer_id = 7", None);
    let reads = [OF_7, OF_8, of_7_text, of_7_count];
    for write in [
        "INSERT INTO tickets (customer_id, status) VALUES (7, 'open')",
        "UPDATE tickets SET note = 'seen' WHERE id = (SELECT min(id) FROM tickets WHERE customer_id = 7)",
        "UPDATE tickets SET score = 3 WHERE customer_id = 7",
        "DELETE FROM tickets WHERE id = (SELECT max(id) FROM tickets WHERE customer_id = 7)",
        "INSERT INTO tickets (customer_id, status) VALUES (7, 'open') RETURNING *",
        // Its own RETURNING lacks the column, but `execute` keeps no row: the value is asked
        // for beside it.
        "INSERT INTO tickets (customer_id, status) VALUES (7, 'open') RETURNING id",
        "UPDATE tickets SET score = 4 WHERE customer_id = 7 RETURNING id, score;",
        "INSERT INTO tickets (id, customer_id, status) VALUES (1000, 7, 'open') \
         ON CONFLICT (id) DO UPDATE SET note = 'again'",
        "INSERT INTO tickets (id, customer_id, status) VALUES (1000, 7, 'open') \
         ON CONFLICT (id) DO UPDATE SET note = 'and again'",
    ] {
        warm(&cache, &db.pool, &reads).await;
        exec(&cache, write).await;
        assert!(OF_8.run(&cache, &db.pool).await, "{write}: customer 8's list was invalidated");
        for read in [OF_7, of_7_text, of_7_count] {
            assert!(!read.run(&cache, &db.pool).await, "{write}: {read:?} was served");
        }
    }
}

#[tokio::test]
async fn a_row_moving_between_filters_invalidates_both_lists() {
    let (db, cache) = setup().await;
    let id: i64 = sqlx::query_scalar("SELECT min(id) FROM tickets WHERE status = 'open' AND customer_id = 7")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    warm(&cache, &db.pool, &[OPEN, CLOSED, OF_8]).await;
    exec(&cache, &format!("UPDATE tickets SET status = 'closed' WHERE id = {id}")).await;
    assert!(!OPEN.run(&cache, &db.pool).await && !CLOSED.run(&cache, &db.pool).await);
    // The customer column was not set: customer 8's list stays.
    assert!(OF_8.run(&cache, &db.pool).await, "a status change emptied every customer's list");
    // A row moving from one customer to another.
    warm(&cache, &db.pool, &[OF_7, OF_8]).await;
    exec(&cache, &format!("UPDATE tickets SET customer_id = 8 WHERE id = {id}")).await;
    assert!(!OF_7.run(&cache, &db.pool).await && !OF_8.run(&cache, &db.pool).await);
}

#[tokio::test]
async fn in_lists_any_null_uuid_and_text_columns_are_pinned() {
    let (db, cache) = setup().await;
    let in_list = Read("SELECT id, customer_id, status FROM tickets WHERE customer_id IN (2, 3) ORDER BY id", None);
    let nulls = Read("SELECT id, customer_id, status FROM tickets WHERE project IS NULL ORDER BY id", None);
    let project = Read(
        "SELECT id, customer_id, status FROM tickets WHERE project = '00000000-0000-0000-0000-000000000001' ORDER BY id",
        None,
    );
    let tag = Read("SELECT id, customer_id, tag FROM tickets WHERE tag = 'tag1' ORDER BY id", None);
    let all = [in_list, nulls, project, tag, OF_8];
    // Writes that touch none of these values leave them all cached.
    warm(&cache, &db.pool, &all).await;
    exec(
        &cache,
        &format!("INSERT INTO tickets (customer_id, status, project, tag) VALUES (4, 'open', '{P1}'::uuid, 'tag2')"),
    )
    .await;
    assert!(!project.run(&cache, &db.pool).await, "a new row of project 1 was missed");
    for read in [in_list, nulls, tag, OF_8] {
        assert!(read.run(&cache, &db.pool).await, "{read:?} was invalidated by a write of other values");
    }
    // Each value reached invalidates its list.
    for (write, reached) in [
        ("INSERT INTO tickets (customer_id, status) VALUES (3, 'open')", in_list),
        ("INSERT INTO tickets (customer_id, status, tag) VALUES (5, 'open', 'tag1')", tag),
        ("UPDATE tickets SET project = NULL WHERE id = (SELECT min(id) FROM tickets WHERE project IS NOT NULL)", nulls),
    ] {
        warm(&cache, &db.pool, &all).await;
        exec(&cache, write).await;
        assert!(!reached.run(&cache, &db.pool).await, "{write}: {reached:?} was served");
        assert!(OF_8.run(&cache, &db.pool).await, "{write}: customer 8's list was invalidated");
    }
    // `= ANY($1)` with an array argument.
    let any = "SELECT id, customer_id, status FROM tickets WHERE customer_id = ANY($1) ORDER BY id";
    let read = || sqlacache_sqlx::query_as::<Row>(any).bind(vec![5_i64, 6]).fetch_all(&cache);
    read().await.unwrap();
    let hits = cache.stats().hits;
    exec(&cache, "INSERT INTO tickets (customer_id, status) VALUES (9, 'open')").await;
    read().await.unwrap();
    assert_eq!(cache.stats().hits, hits + 1, "a write for customer 9 invalidated the list of 5 and 6");
    exec(&cache, "INSERT INTO tickets (customer_id, status) VALUES (6, 'open')").await;
    let truth: Vec<Row> = sqlx::query_as(any).bind(vec![5_i64, 6]).fetch_all(&db.pool).await.unwrap();
    assert_eq!(read().await.unwrap(), truth);
}

#[tokio::test]
async fn joins_pin_through_equalities_and_composite_keys_lead() {
    let (db, cache) = setup().await;
    // Lines of order 5: `lines` is pinned through the join to `order_id = 5`.
    let join = Read(
        "SELECT t.id, l.n::int8, l.product FROM tickets t JOIN lines l ON l.order_id = t.id WHERE t.id = $1 ORDER BY l.n",
        Some(5),
    );
    let lines_of_5 = Read("SELECT order_id, n::int8, product FROM lines WHERE order_id = $1 ORDER BY n", Some(5));
    warm(&cache, &db.pool, &[join, lines_of_5]).await;
    exec(&cache, "INSERT INTO lines VALUES (6, 100, 'other order')").await;
    exec(&cache, "UPDATE tickets SET note = 'x' WHERE id = 6").await;
    assert!(join.run(&cache, &db.pool).await && lines_of_5.run(&cache, &db.pool).await);
    exec(&cache, "INSERT INTO lines VALUES (5, 101, 'this order')").await;
    assert!(!join.run(&cache, &db.pool).await && !lines_of_5.run(&cache, &db.pool).await);
    warm(&cache, &db.pool, &[join]).await;
    exec(&cache, "UPDATE tickets SET status = 'closed' WHERE id = 5").await;
    assert!(!join.run(&cache, &db.pool).await, "a write of the joined ticket was missed");
}

#[tokio::test]
async fn what_cannot_be_proved_depends_on_the_whole_table() {
    let (db, cache) = setup().await;
    let shapes = [
        "SELECT id, customer_id, status FROM tickets WHERE customer_id = 8 OR status = 'none' ORDER BY id",
        "SELECT id, customer_id, status FROM tickets WHERE customer_id > 7 ORDER BY id",
        "SELECT id, customer_id, status FROM tickets WHERE note IS NULL AND score IS NULL ORDER BY id",
        "SELECT id, customer_id, status FROM tickets WHERE customer_id::text = '8' ORDER BY id",
        "SELECT id, customer_id, status FROM tickets WHERE customer_id = 8.0 ORDER BY id",
        "SELECT id, customer_id, status FROM tickets WHERE customer_id = ' 8' ORDER BY id",
        "SELECT id, customer_id, status FROM tickets WHERE tag = 'tag1' COLLATE \"C\" ORDER BY id",
        "SELECT t.id, t.customer_id, t.status FROM tickets t LEFT JOIN lines l ON l.order_id = t.id \
         WHERE t.customer_id = 8 AND l.order_id IS NULL ORDER BY t.id",
        "SELECT id, customer_id, status FROM tickets WHERE customer_id = 8 \
         AND id > (SELECT min(id) FROM tickets WHERE customer_id = 7) ORDER BY id",
        "WITH c AS (SELECT 8::int8 AS v) SELECT id, customer_id, status FROM tickets, c WHERE customer_id = c.v ORDER BY id",
    ];
    let reads: Vec<Read> = shapes.iter().map(|sql| Read(sql, None)).collect();
    // A write for customer 7 only: each of these may depend on it, so none is served.
    warm(&cache, &db.pool, &reads).await;
    exec(&cache, "INSERT INTO tickets (customer_id, status, score) VALUES (7, 'open', 1)").await;
    for read in &reads {
        assert!(!read.run(&cache, &db.pool).await, "{read:?} was served after a write to its table");
    }
    // An argument whose text is not certain (a newtype): the whole table.
    #[derive(serde::Serialize, sqlx::Type)]
    #[sqlx(transparent)]
    struct Id(i64);
    let sql = "SELECT id, customer_id, status FROM tickets WHERE customer_id = $1 ORDER BY id";
    let read = || sqlacache_sqlx::query_as::<Row>(sql).bind(Id(8)).fetch_all(&cache);
    read().await.unwrap();
    read().await.unwrap();
    let hits = cache.stats().hits;
    exec(&cache, "INSERT INTO tickets (customer_id, status) VALUES (7, 'open')").await;
    read().await.unwrap();
    assert_eq!(cache.stats().hits, hits, "a list pinned by a newtype argument was served after a write");
}

#[tokio::test]
async fn a_write_that_does_not_report_a_columns_values_invalidates_the_whole_column() {
    let (db, cache) = setup().await;
    // Its own RETURNING, fetched, lacks `customer_id`: every customer's list goes.
    warm(&cache, &db.pool, &[OF_7, OF_8]).await;
    let _: Vec<(i64,)> = sqlx::query_as(
        "UPDATE tickets SET note = 'n' WHERE id = (SELECT min(id) FROM tickets WHERE customer_id = 7) RETURNING id",
    )
    .fetch_all(&cache)
    .await
    .unwrap();
    assert!(!OF_8.run(&cache, &db.pool).await);
    assert!(!OF_7.run(&cache, &db.pool).await);
    // Rows the cache cannot name (a write outside the pool, then `invalidate_rows`-like calls
    // are the user's), and `TRUNCATE`.
    warm(&cache, &db.pool, &[OF_7, OF_8]).await;
    exec(&cache, "TRUNCATE tickets").await;
    assert!(!OF_7.run(&cache, &db.pool).await && !OF_8.run(&cache, &db.pool).await);
}

#[tokio::test]
async fn a_before_update_trigger_makes_every_updated_column_unreported() {
    let (db, cache) = setup().await;
    sqlx::raw_sql(
        "CREATE FUNCTION move_ticket() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN IF NEW.note = 'move' THEN NEW.customer_id := 8; END IF; RETURN NEW; END $$;
         CREATE TRIGGER move_ticket BEFORE UPDATE ON tickets FOR EACH ROW EXECUTE FUNCTION move_ticket();",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    cache.refresh_catalog().await.unwrap();
    warm(&cache, &db.pool, &[OF_7, OF_8]).await;
    exec(&cache, "UPDATE tickets SET note = 'move' WHERE id = (SELECT min(id) FROM tickets WHERE customer_id = 7)")
        .await;
    assert!(!OF_7.run(&cache, &db.pool).await && !OF_8.run(&cache, &db.pool).await);
}

#[tokio::test]
async fn with_predicate_tags_off_lists_depend_on_their_tables() {
    let db = TestDb::with_schema(SCHEMA).await;
    let cache = sqlacache_tests::builder(db.pool.clone()).predicate_tags(false).build().await.expect("build");
    warm(&cache, &db.pool, &[OF_8]).await;
    exec(&cache, "INSERT INTO tickets (customer_id, status) VALUES (7, 'open')").await;
    assert!(!OF_8.run(&cache, &db.pool).await);
}

/// A pool over `tickets` that installs the change feed.
async fn with_feed(db: &TestDb) -> CachedPool {
    sqlacache_tests::builder(db.pool.clone())
        .table("tickets", sqlacache_sqlx::Ops::ALL, std::time::Duration::from_secs(60))
        .change_feed()
        .build()
        .await
        .expect("build with the feed")
}

/// A write made outside the pool, heard through the change feed, invalidates the lists pinned
/// to its rows' values (old and new), and only those.
#[tokio::test]
async fn the_change_feed_reaches_pinned_lists() {
    let db = TestDb::in_own_database(SCHEMA).await;
    let cache = with_feed(&db).await;
    for write in [
        "INSERT INTO tickets (customer_id, status) VALUES (7, 'open')",
        "UPDATE tickets SET customer_id = 9 WHERE id = (SELECT min(id) FROM tickets WHERE customer_id = 7)",
        "DELETE FROM tickets WHERE id = (SELECT max(id) FROM tickets WHERE customer_id = 7)",
    ] {
        warm(&cache, &db.pool, &[OF_7, OF_8]).await;
        sqlx::raw_sql(sqlx::AssertSqlSafe(write)).execute(cache.inner()).await.unwrap();
        let truth: Vec<Row> = sqlx::query_as(OF_7.0).bind(7_i64).fetch_all(&db.pool).await.unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let got = sqlacache_sqlx::query_as::<Row>(OF_7.0).bind(7_i64).fetch_all(&cache).await.unwrap();
            if got == truth {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "{write}: the list of customer 7 stayed stale");
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        // The message named customer 7 (and 9): customer 8's list stays.
        assert!(OF_8.run(&cache, &db.pool).await, "{write}: customer 8's list was invalidated");
    }
    // A row moving to customer 8, outside: its new value is named too.
    warm(&cache, &db.pool, &[OF_8]).await;
    sqlx::raw_sql("UPDATE tickets SET customer_id = 8 WHERE id = (SELECT min(id) FROM tickets WHERE customer_id = 9)")
        .execute(cache.inner())
        .await
        .unwrap();
    let truth: Vec<Row> = sqlx::query_as(OF_8.0).bind(8_i64).fetch_all(&db.pool).await.unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while sqlacache_sqlx::query_as::<Row>(OF_8.0).bind(8_i64).fetch_all(&cache).await.unwrap() != truth {
        assert!(std::time::Instant::now() < deadline, "the list of customer 8 stayed stale");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// A column tracked after the feed was installed (an index created while the pool runs): the
/// pool replaces the table's trigger function, so outside writes name the column's values and
/// another customer's list stays a hit.
#[tokio::test]
async fn the_change_feed_names_a_column_tracked_after_it_was_installed() {
    let db = TestDb::in_own_database(
        "CREATE TABLE tickets (id bigserial PRIMARY KEY, customer_id bigint NOT NULL, status text NOT NULL);
         INSERT INTO tickets (customer_id, status) SELECT 1 + g % 10, 'open' FROM generate_series(1, 60) g;",
    )
    .await;
    let cache = with_feed(&db).await;
    let names_column = "SELECT count(*) FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace \
                        WHERE n.nspname = 'sqlacache' AND p.proname LIKE 't\\_%' AND p.prosrc LIKE '%customer_id%'";
    let count = || async { sqlx::query_scalar::<_, i64>(names_column).fetch_one(&db.pool).await.unwrap() };
    assert_eq!(count().await, 0, "no column is tracked yet");
    warm(&cache, &db.pool, &[OF_7]).await;
    sqlx::raw_sql("CREATE INDEX ON tickets (customer_id)").execute(&db.pool).await.unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while count().await == 0 {
        assert!(std::time::Instant::now() < deadline, "the trigger function was not replaced");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    warm(&cache, &db.pool, &[OF_7, OF_8]).await;
    sqlx::raw_sql("INSERT INTO tickets (customer_id, status) VALUES (7, 'open')").execute(&db.pool).await.unwrap();
    let truth: Vec<Row> = sqlx::query_as(OF_7.0).bind(7_i64).fetch_all(&db.pool).await.unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while sqlacache_sqlx::query_as::<Row>(OF_7.0).bind(7_i64).fetch_all(&cache).await.unwrap() != truth {
        assert!(std::time::Instant::now() < deadline, "the list of customer 7 stayed stale");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(OF_8.run(&cache, &db.pool).await, "customer 8's list was invalidated by a write to customer 7");
}

/// A role that may not read a tracked column: the write the raw pool accepts runs as written
/// (nothing asks for that column back), and lists pinned to the column are invalidated as a
/// whole.
#[tokio::test]
async fn a_tracked_column_the_role_may_not_read_is_invalidated_as_a_whole() {
    let db = TestDb::with_schema(SCHEMA).await;
    let (role, options) = db.role("narrow").await;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "GRANT SELECT (id, status, note), UPDATE (note), INSERT (customer_id, status) ON tickets TO {role};
         GRANT USAGE ON SEQUENCE tickets_id_seq TO {role};"
    )))
    .execute(&db.pool)
    .await
    .unwrap();
    let pool = db.pool_with(2, options).await;
    let cache = sqlacache_tests::builder(pool.clone()).build().await.expect("build");
    let open = "SELECT id, status FROM tickets WHERE status = 'open' ORDER BY id";
    let read = || sqlacache_sqlx::query_as::<(i64, String)>(open).fetch_all(&cache);
    for write in [
        "UPDATE tickets SET note = 'seen' WHERE id = 5",
        "INSERT INTO tickets (customer_id, status) VALUES (7, 'open')",
    ] {
        read().await.unwrap();
        sqlx::query(sqlx::AssertSqlSafe(write)).execute(&pool).await.expect("the raw pool accepts it");
        sqlx::query(sqlx::AssertSqlSafe(write)).execute(&cache).await.expect("so does the cache");
        let truth: Vec<(i64, String)> = sqlx::query_as(open).fetch_all(&db.pool).await.unwrap();
        assert_eq!(read().await.unwrap(), truth, "{write}");
    }
}

//! The Redis store's freshness rule: a value is served only while every tag it was filled against
//! still holds the epoch it read, so invalidations, fills that straddle them, eviction and
//! restarts never make a value look fresh; prefixes and scopes never share; a Redis that does not
//! answer fails calls within the timeout.

use sqlacache_core::key::Key;
use sqlacache_core::redis::RedisStore;
use sqlacache_core::Tag;
use sqlacache_tests::redis::{redis_url, require_shared_redis, unique_prefix, RedisCluster, RedisServer};
use std::time::{Duration, Instant};

/// The command timeout of the test of a Redis that does not answer.
const TIMEOUT: Duration = Duration::from_millis(200);
/// The command timeout of every other test: room to spare on a loaded machine, where a command
/// can outlast a short timeout without anything being wrong.
const ROOMY: Duration = Duration::from_secs(5);
const TTL: Duration = Duration::from_secs(60);

async fn store(url: &str, prefix: &str, scope: &str) -> RedisStore {
    store_timed(url, prefix, scope, ROOMY).await
}

async fn store_timed(url: &str, prefix: &str, scope: &str, timeout: Duration) -> RedisStore {
    let store = RedisStore::connect(url, prefix, scope, timeout).expect("a valid URL");
    assert!(store.wait_connected(Duration::from_secs(5)).await, "cannot connect to Redis at {url}");
    store
}

/// Fills `key` against `tags` with `bytes`, the way a cache fill does.
async fn fill(store: &RedisStore, key: u128, tags: &[Tag], bytes: &[u8]) {
    let epochs = store.epochs(tags, TTL).await.unwrap();
    store.put(Key(key), &epochs, TTL, bytes).await.unwrap();
}

async fn get(store: &RedisStore, key: u128) -> Option<Vec<u8>> {
    store.get(Key(key)).await.unwrap()
}

async fn values_are_served_until_a_tag_they_depend_on_is_invalidated(url: &str) {
    let store = store(url, &unique_prefix("tags"), "db").await;
    fill(&store, 1, &[Tag::Table(10)], b"list of 10").await;
    fill(&store, 2, &[Tag::Row(77), Tag::Rows(10)], b"row 77").await;
    fill(&store, 3, &[Tag::Table(11)], b"list of 11").await;
    fill(&store, 4, &[], b"\n\nbytes that look like a header\n\n").await;
    assert_eq!(get(&store, 1).await.as_deref(), Some(&b"list of 10"[..]));
    assert_eq!(get(&store, 4).await.as_deref(), Some(&b"\n\nbytes that look like a header\n\n"[..]));
    assert_eq!(get(&store, 5).await, None, "never stored");

    store.invalidate(&[Tag::Table(10), Tag::Row(77)]).await.unwrap();
    assert_eq!(get(&store, 1).await, None);
    assert_eq!(get(&store, 2).await, None);
    assert_eq!(get(&store, 3).await.as_deref(), Some(&b"list of 11"[..]), "other tables keep their values");

    store.invalidate_all().await.unwrap();
    assert_eq!(get(&store, 3).await, None, "every value depends on the global tag");
    assert_eq!(get(&store, 4).await, None);
    fill(&store, 3, &[Tag::Table(11)], b"again").await;
    assert_eq!(get(&store, 3).await.as_deref(), Some(&b"again"[..]));
}

async fn a_fill_that_straddles_an_invalidation_is_never_served(url: &str) {
    let store = store(url, &unique_prefix("straddle"), "db").await;
    // The fill reads the epochs, then the database; a write invalidates meanwhile.
    let epochs = store.epochs(&[Tag::Table(10)], TTL).await.unwrap();
    store.invalidate(&[Tag::Table(10)]).await.unwrap();
    store.put(Key(1), &epochs, TTL, b"old").await.unwrap();
    assert_eq!(get(&store, 1).await, None, "the tag it read is gone");
    // A later fill creates a new epoch; the old one never matches again.
    fill(&store, 2, &[Tag::Table(10)], b"new").await;
    store.put(Key(1), &epochs, TTL, b"old").await.unwrap();
    assert_eq!(get(&store, 1).await, None, "an old epoch never comes back");
    assert_eq!(get(&store, 2).await.as_deref(), Some(&b"new"[..]));
}

async fn prefixes_and_scopes_never_share(url: &str) {
    let (one, two) = (unique_prefix("one"), unique_prefix("two"));
    let a = store(url, &one, "db").await;
    let b = store(url, &two, "db").await;
    let c = store(url, &one, "other_db").await;
    for (store, bytes) in [(&a, b"a"), (&b, b"b"), (&c, b"c")] {
        fill(store, 1, &[Tag::Table(10)], bytes).await;
    }
    a.invalidate_all().await.unwrap();
    assert_eq!(get(&a, 1).await, None);
    assert_eq!(get(&b, 1).await.as_deref(), Some(&b"b"[..]), "another prefix is untouched");
    assert_eq!(get(&c, 1).await.as_deref(), Some(&b"c"[..]), "another database is untouched");
    c.invalidate(&[Tag::Table(10)]).await.unwrap();
    assert_eq!(get(&b, 1).await.as_deref(), Some(&b"b"[..]));
}

#[tokio::test]
async fn the_rule_holds_on_one_server() {
    require_shared_redis();
    let url = redis_url();
    values_are_served_until_a_tag_they_depend_on_is_invalidated(&url).await;
    a_fill_that_straddles_an_invalidation_is_never_served(&url).await;
    prefixes_and_scopes_never_share(&url).await;
}

/// On a cluster, values and their tags live in different slots: the rule runs from the client.
#[tokio::test]
async fn the_rule_holds_on_a_cluster() {
    let cluster = RedisCluster::start();
    let url = cluster.url();
    values_are_served_until_a_tag_they_depend_on_is_invalidated(&url).await;
    a_fill_that_straddles_an_invalidation_is_never_served(&url).await;
    prefixes_and_scopes_never_share(&url).await;
    // Many keys, so every node holds values and tags.
    let store = store(&url, &unique_prefix("spread"), "db").await;
    for i in 0..200u128 {
        fill(&store, i, &[Tag::Table((i % 5) as u32), Tag::Row(i)], format!("v{i}").as_bytes()).await;
    }
    store.invalidate(&[Tag::Table(2), Tag::Row(7)]).await.unwrap();
    for i in 0..200u128 {
        let expected = (i % 5 != 2 && i != 7).then(|| format!("v{i}").into_bytes());
        assert_eq!(get(&store, i).await, expected, "value {i}");
    }
}

#[tokio::test]
async fn eviction_and_restarts_only_cost_misses() {
    let mut server = RedisServer::start(&["--maxmemory", "2mb", "--maxmemory-policy", "allkeys-random"]);
    let store = store(&server.url(), &unique_prefix("evict"), "db").await;
    let payload = |i: u128| format!("value {i} {}", "x".repeat(800)).into_bytes();
    fill(&store, 0, &[Tag::Table(0), Tag::Row(0)], &payload(0)).await;
    assert_eq!(get(&store, 0).await, Some(payload(0)), "served while it fits");
    // Far more than fits: values and tags (the global one too) are evicted at random, so how
    // many values survive varies; each that does must be exactly its own and not invalidated.
    for i in 0..8_000u128 {
        fill(&store, i, &[Tag::Table((i % 7) as u32), Tag::Row(i)], &payload(i)).await;
    }
    store.invalidate(&[Tag::Table(3)]).await.unwrap();
    for i in 0..8_000u128 {
        if let Some(bytes) = get(&store, i).await {
            assert_eq!(bytes, payload(i), "a value is its own or nothing");
            assert_ne!(i % 7, 3, "value {i} depends on an invalidated table");
        }
    }

    server.restart();
    assert!(store.wait_connected(Duration::from_secs(5)).await);
    let start = Instant::now();
    let mut misses = 0;
    while misses < 100 && start.elapsed() < Duration::from_secs(10) {
        if let Ok(value) = store.get(Key(misses as u128)).await {
            assert_eq!(value, None, "a restarted Redis holds nothing");
            misses += 1;
        }
    }
    assert_eq!(misses, 100);
}

#[tokio::test]
async fn a_redis_that_does_not_answer_fails_calls_within_the_timeout() {
    let server = RedisServer::start(&[]);
    let prefix = unique_prefix("frozen");
    fill(&store(&server.url(), &prefix, "db").await, 1, &[Tag::Table(1)], b"v").await;
    let store = store_timed(&server.url(), &prefix, "db", TIMEOUT).await;
    server.freeze();
    for _ in 0..3 {
        let start = Instant::now();
        assert!(store.get(Key(1)).await.is_err(), "a frozen Redis answers nothing");
        assert!(store.invalidate(&[Tag::Table(1)]).await.is_err());
        assert!(start.elapsed() < TIMEOUT * 10, "bounded: {:?}", start.elapsed());
    }
    server.resume();
    // The invalidations sent while frozen have unknown outcomes (each may still run): a caller
    // must treat them as lost and invalidate again, which then holds.
    let start = Instant::now();
    while store.invalidate(&[Tag::Table(1)]).await.is_err() {
        assert!(start.elapsed() < Duration::from_secs(10), "Redis answers again");
    }
    assert_eq!(get(&store_timed(&server.url(), &prefix, "db", ROOMY).await, 1).await, None);

    // An unreachable Redis is not an error until a call is made, and calls fail quickly.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let nowhere = RedisStore::connect(&format!("redis://127.0.0.1:{port}"), "p", "db", TIMEOUT).unwrap();
    let start = Instant::now();
    assert!(nowhere.get(Key(1)).await.is_err());
    assert!(start.elapsed() < TIMEOUT * 10, "bounded: {:?}", start.elapsed());
    assert!(RedisStore::connect("http://not-redis", "p", "db", TIMEOUT).is_err(), "an invalid URL is an error");
}

#[tokio::test]
async fn an_unreachable_redis_is_reported_by_its_address_and_the_connections_own_error() {
    use sqlacache_core::tier::Store;
    let port = sqlacache_tests::redis::free_port();
    let nowhere = RedisStore::connect(&format!("redis://user:secret@127.0.0.1:{port}/0"), "p", "db", TIMEOUT).unwrap();
    let start = Instant::now();
    let message = loop {
        let error = Store::invalidate(&nowhere, &[Tag::Table(1)]).await.unwrap_err().to_string();
        if error.contains("unreachable") || start.elapsed() > Duration::from_secs(10) {
            break error;
        }
    };
    assert!(message.contains(&format!("Redis at 127.0.0.1:{port} is unreachable")), "{message}");
    assert!(message.to_lowercase().contains("refused"), "a refused connection is not a timeout: {message}");
    assert!(!message.contains("secret"), "no credentials in errors: {message}");
    eprintln!("{message}");
}

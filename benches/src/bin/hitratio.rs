//! The hit-ratio report: a seeded shop workload (customers, products, orders, order items;
//! Zipf-distributed reads of per-customer order lists and counts, product pages and order
//! details; order inserts, status updates, item inserts and deletes, price changes) replayed
//! through a `CachedPool`, with the hit ratio it reaches beside the one of an **oracle** that
//! invalidates a cached read only when the result it holds has actually changed.
//!
//! ```sh
//! cargo run --release -p sqlacache-benches --bin hitratio                     # 20,000 operations, seed 1
//! cargo run --release -p sqlacache-benches --bin hitratio -- --ops 5000 --seed 7
//! ```
//!
//! The oracle re-reads, after every write, the current result of every read it holds for the
//! tables the write touched (one grouped query per kind of read), and drops those that changed.
//! Neither side expires anything during the run (TTLs are long), and both start empty, so the
//! oracle's ratio is the ceiling any invalidation scheme can reach on this workload. The run is
//! deterministic for a seed: one task, no Redis, a fixture made anew.

use sqlacache_sqlx::{Cacheable, CachedPool};
use sqlx::PgPool;
use std::collections::HashMap;
use std::time::Duration;

const CUSTOMERS: i64 = 500;
const PRODUCTS: i64 = 200;
const ORDERS: i64 = 2_000;
const ITEMS: i64 = 6_000;

/// An order.
#[derive(Debug, sqlx::FromRow, serde::Serialize, serde::Deserialize, Cacheable)]
#[cache(table = "shop_orders")]
struct Order {
    #[cache(pk)]
    id: i64,
    customer_id: i64,
    status: String,
}

/// A line of an order.
#[derive(Debug, sqlx::FromRow, serde::Serialize, serde::Deserialize, Cacheable)]
#[cache(table = "shop_order_items")]
struct Item {
    #[cache(pk)]
    id: i64,
    order_id: i64,
    product_id: i64,
    qty: i32,
}

/// A product page.
#[derive(Debug, sqlx::FromRow, serde::Serialize, serde::Deserialize, Cacheable)]
#[cache(table = "shop_products")]
struct Product {
    #[cache(pk)]
    id: i64,
    name: String,
    price: i32,
}

/// The kinds of read, each by one id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Read {
    /// A customer's orders.
    Orders,
    /// How many orders a customer has.
    Count,
    /// An order's lines.
    Items,
    /// A product page.
    Product,
}

impl Read {
    const ALL: [Read; 4] = [Read::Orders, Read::Count, Read::Items, Read::Product];

    fn name(self) -> &'static str {
        match self {
            Read::Orders => "orders of a customer",
            Read::Count => "count of a customer's",
            Read::Items => "lines of an order",
            Read::Product => "product page",
        }
    }

    /// The current results of this read for `ids`, one text per id (the oracle's view),
    /// computed in one grouped query.
    async fn results(self, pg: &PgPool, ids: &[i64]) -> Result<HashMap<i64, String>, sqlx::Error> {
        let sql = match self {
            Read::Orders => {
                "SELECT customer_id, string_agg(id || ':' || status, ',' ORDER BY id) FROM shop_orders \
                 WHERE customer_id = ANY($1) GROUP BY customer_id"
            }
            Read::Count => {
                "SELECT customer_id, count(*)::text FROM shop_orders WHERE customer_id = ANY($1) GROUP BY customer_id"
            }
            Read::Items => {
                "SELECT order_id, string_agg(id || ':' || product_id || ':' || qty, ',' ORDER BY id) \
                 FROM shop_order_items WHERE order_id = ANY($1) GROUP BY order_id"
            }
            Read::Product => "SELECT id, name || ':' || price FROM shop_products WHERE id = ANY($1)",
        };
        let rows: Vec<(i64, String)> = sqlx::query_as(sql).bind(ids).fetch_all(pg).await?;
        let mut results: HashMap<i64, String> = ids.iter().map(|&id| (id, String::new())).collect();
        results.extend(rows);
        Ok(results)
    }

    /// Runs this read through the cache; whether it was a hit.
    async fn through(self, cache: &CachedPool, id: i64) -> Result<bool, sqlx::Error> {
        let hits = cache.stats().hits;
        match self {
            Read::Orders => {
                sqlacache_sqlx::query_as::<Order>("SELECT * FROM shop_orders WHERE customer_id = $1 ORDER BY id")
                    .bind(id)
                    .fetch_all(cache)
                    .await?;
            }
            Read::Count => {
                sqlacache_sqlx::query_scalar::<i64>("SELECT count(*) FROM shop_orders WHERE customer_id = $1")
                    .bind(id)
                    .fetch_one(cache)
                    .await?;
            }
            Read::Items => {
                sqlacache_sqlx::query_as::<Item>("SELECT * FROM shop_order_items WHERE order_id = $1 ORDER BY id")
                    .bind(id)
                    .fetch_all(cache)
                    .await?;
            }
            Read::Product => {
                cache.get::<Product>(id).await.map_err(|e| sqlx::Error::Protocol(e.to_string()))?;
            }
        }
        Ok(cache.stats().hits > hits)
    }
}

/// A small seeded generator (xorshift64*), so that a seed gives one workload everywhere.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: i64) -> i64 {
        (self.next() % n.unsigned_abs()) as i64
    }
}

/// Ranks 1..=n drawn with probability proportional to 1 / rank^1.1.
struct Zipf(Vec<f64>);

impl Zipf {
    fn new(n: i64) -> Zipf {
        let mut total = 0.0;
        let cdf = (1..=n)
            .map(|rank| {
                total += 1.0 / (rank as f64).powf(1.1);
                total
            })
            .collect::<Vec<_>>();
        Zipf(cdf.into_iter().map(|c| c / total).collect())
    }

    fn draw(&self, rng: &mut Rng) -> i64 {
        let u = (rng.next() >> 11) as f64 / (1u64 << 53) as f64;
        self.0.partition_point(|&c| c < u) as i64 + 1
    }
}

fn arg(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).and_then(|n| n.parse().ok()).unwrap_or(default)
}

async fn fixture(pg: &PgPool) -> Result<(), sqlx::Error> {
    let ddl = format!(
        "DROP TABLE IF EXISTS shop_order_items, shop_orders, shop_products, shop_customers;
         CREATE TABLE shop_customers (id bigint PRIMARY KEY, name text NOT NULL);
         CREATE TABLE shop_products (id bigint PRIMARY KEY, name text NOT NULL, price int NOT NULL);
         CREATE TABLE shop_orders (id bigserial PRIMARY KEY, customer_id bigint NOT NULL REFERENCES shop_customers,
             status text NOT NULL);
         CREATE INDEX ON shop_orders (customer_id);
         CREATE TABLE shop_order_items (id bigserial PRIMARY KEY, order_id bigint NOT NULL REFERENCES shop_orders
             ON DELETE CASCADE, product_id bigint NOT NULL REFERENCES shop_products, qty int NOT NULL);
         CREATE INDEX ON shop_order_items (order_id);
         INSERT INTO shop_customers SELECT g, 'customer ' || g FROM generate_series(1, {CUSTOMERS}) g;
         INSERT INTO shop_products SELECT g, 'product ' || g, 100 + g FROM generate_series(1, {PRODUCTS}) g;
         INSERT INTO shop_orders (customer_id, status)
             SELECT 1 + (g * 7919) % {CUSTOMERS}, 'open' FROM generate_series(1, {ORDERS}) g;
         INSERT INTO shop_order_items (order_id, product_id, qty)
             SELECT 1 + (g * 104729) % {ORDERS}, 1 + (g * 31) % {PRODUCTS}, 1 + g % 3 FROM generate_series(1, {ITEMS}) g;
         ANALYZE;"
    );
    sqlx::raw_sql(sqlx::AssertSqlSafe(ddl)).execute(pg).await?;
    Ok(())
}

/// What one run of the workload gave: per kind of read, reads, the pool's hits and the
/// oracle's hits; writes; the pool's entries and bytes; its row clocks set and their table's bytes.
struct Outcome {
    counts: HashMap<Read, [u64; 3]>,
    writes: u64,
    entries: (u64, usize),
    tags: (usize, u64),
    oracle_entries: usize,
}

/// Replays the workload of `seed` on a fresh fixture through a pool with predicate tags on
/// or off, beside the oracle.
async fn run(
    pg: &PgPool,
    ops: u64,
    seed: u64,
    predicates: bool,
) -> Result<Outcome, Box<dyn std::error::Error + Send + Sync>> {
    fixture(pg).await?;
    let cache = CachedPool::builder(pg.clone())
        .model::<Order>()
        .model::<Item>()
        .model::<Product>()
        .default_ttl(Duration::from_secs(3600))
        .predicate_tags(predicates)
        .build()
        .await?;
    let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    let (customers, products) = (Zipf::new(CUSTOMERS), Zipf::new(PRODUCTS));
    let mut orders = ORDERS;
    // The oracle's cache: what each read held when it was filled.
    let mut oracle: HashMap<(Read, i64), String> = HashMap::new();
    // Per kind of read: reads, the pool's hits, the oracle's hits.
    let mut counts: HashMap<Read, [u64; 3]> = HashMap::new();
    let mut writes = 0;
    for _ in 0..ops {
        let dice = rng.below(100);
        if dice < 80 {
            let read = Read::ALL[usize::try_from(rng.below(4))?];
            let id = match read {
                Read::Orders | Read::Count => customers.draw(&mut rng),
                // Recent orders are read most.
                Read::Items => (orders + 1 - customers.draw(&mut rng) * orders / CUSTOMERS).clamp(1, orders),
                Read::Product => products.draw(&mut rng),
            };
            let hit = read.through(&cache, id).await?;
            let oracle_hit = oracle.contains_key(&(read, id));
            if !oracle_hit {
                let now = read.results(pg, &[id]).await?;
                oracle.insert((read, id), now[&id].clone());
            }
            let count = counts.entry(read).or_default();
            count[0] += 1;
            count[1] += u64::from(hit);
            count[2] += u64::from(oracle_hit);
            continue;
        }
        writes += 1;
        let touched_orders = match dice {
            80..=87 => {
                let customer = customers.draw(&mut rng);
                sqlx::query("INSERT INTO shop_orders (customer_id, status) VALUES ($1, 'open') RETURNING id")
                    .bind(customer)
                    .execute(&cache)
                    .await?;
                orders += 1;
                true
            }
            88..=93 => {
                let order = 1 + rng.below(orders);
                let status = ["open", "paid", "shipped", "closed"][usize::try_from(rng.below(4))?];
                sqlx::query("UPDATE shop_orders SET status = $2 WHERE id = $1 RETURNING id")
                    .bind(order)
                    .bind(status)
                    .execute(&cache)
                    .await?;
                true
            }
            94..=96 => {
                let (order, product) = (orders - rng.below(orders.min(200)), products.draw(&mut rng));
                sqlx::query("INSERT INTO shop_order_items (order_id, product_id, qty) VALUES ($1, $2, 1) RETURNING id")
                    .bind(order)
                    .bind(product)
                    .execute(&cache)
                    .await?;
                false
            }
            97..=98 => {
                let order = orders - rng.below(orders.min(200));
                sqlx::query(
                    "DELETE FROM shop_order_items WHERE id = (SELECT min(id) FROM shop_order_items WHERE order_id = $1) RETURNING id",
                )
                .bind(order)
                .execute(&cache)
                .await?;
                false
            }
            _ => {
                let product = products.draw(&mut rng);
                sqlx::query("UPDATE shop_products SET price = price + 1 WHERE id = $1 RETURNING id")
                    .bind(product)
                    .execute(&cache)
                    .await?;
                false
            }
        };
        // The oracle drops exactly the reads whose results changed.
        for read in Read::ALL {
            let affected = match read {
                Read::Orders | Read::Count => touched_orders,
                Read::Items | Read::Product => !touched_orders,
            };
            if !affected {
                continue;
            }
            let ids: Vec<i64> = oracle.keys().filter(|(r, _)| *r == read).map(|&(_, id)| id).collect();
            if ids.is_empty() {
                continue;
            }
            let now = read.results(pg, &ids).await?;
            oracle.retain(|(r, id), held| *r != read || now.get(id) == Some(held));
        }
    }
    let outcome = Outcome {
        counts,
        writes,
        entries: cache.memory_usage(),
        tags: cache.tag_memory(),
        oracle_entries: oracle.len(),
    };
    drop(cache);
    sqlx::raw_sql("DROP TABLE shop_order_items, shop_orders, shop_products, shop_customers").execute(pg).await?;
    Ok(outcome)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let (ops, seed) = (arg("--ops", 20_000), arg("--seed", 1));
    let pg = sqlacache_benches::connect().await.unwrap_or_else(|error| {
        eprintln!("{error}");
        std::process::exit(2);
    });
    let table = run(&pg, ops, seed, false).await?;
    let precise = run(&pg, ops, seed, true).await?;
    println!("{ops} operations ({} writes), seed {seed}; hit ratios of the reads\n", precise.writes);
    println!(
        "| {:<24} | {:>7} | {:>11} | {:>10} | {:>8} | {:>13} |",
        "read", "reads", "table tags", "predicates", "oracle", "of the oracle"
    );
    println!("|{:-<26}|{:->9}|{:->13}|{:->12}|{:->10}|{:->15}|", "", "", "", "", "", "");
    let ratio = |part: u64, whole: u64| if whole == 0 { 0.0 } else { 100.0 * part as f64 / whole as f64 };
    let mut total = [0_u64; 4];
    let mut kinds: Vec<Read> = precise.counts.keys().copied().collect();
    kinds.sort();
    let row = |name: &str, [reads, by_table, by_value, oracle]: [u64; 4]| {
        println!(
            "| {name:<24} | {reads:>7} | {:>10.1}% | {:>9.1}% | {:>7.1}% | {:>12.1}% |",
            ratio(by_table, reads),
            ratio(by_value, reads),
            ratio(oracle, reads),
            ratio(by_value, oracle)
        );
    };
    for read in kinds {
        let [reads, by_value, oracle] = precise.counts[&read];
        let by_table = table.counts.get(&read).map_or(0, |c| c[1]);
        row(read.name(), [reads, by_table, by_value, oracle]);
        for (sum, part) in total.iter_mut().zip([reads, by_table, by_value, oracle]) {
            *sum += part;
        }
    }
    row("all reads", total);
    for (name, outcome) in [("table tags", &table), ("predicates", &precise)] {
        println!(
            "\n{name}: {} entries in {} bytes; {} row clocks set (a table of {} bytes)",
            outcome.entries.1, outcome.entries.0, outcome.tags.0, outcome.tags.1
        );
    }
    println!("the oracle held {} reads", precise.oracle_entries);
    Ok(())
}

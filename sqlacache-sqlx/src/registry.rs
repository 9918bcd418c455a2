//! Which models' settings apply: those given to `.model::<T>()`, and those registered at their
//! first use, checked as `build()` would have.

use crate::config::{Config, TableConfig};
use crate::error::Error;
use crate::local::Origin;
use crate::model::Model;
use crate::row::CachedRow;
use crate::schema::Schema;
use crate::tiers::Tiers;
use sqlacache_core::Uncached;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::RwLock;

/// What a read needs to know of its row type's model, if it has one.
#[derive(Clone, Copy)]
pub(crate) struct ModelOf {
    fingerprint: u64,
    model: Model,
    type_name: &'static str,
}

impl ModelOf {
    pub fn of<T: CachedRow>() -> Option<ModelOf> {
        T::__MODEL.map(|model| ModelOf { fingerprint: T::fingerprint(), model, type_name: std::any::type_name::<T>() })
    }
}

const FAST_MODELS: usize = 64;

/// The models of one pool, by fingerprint.
///
/// Every cached read of a model asks, so the first models admitted sit in atomics that readers
/// only load: a lock's word, written by every reader, would be contended between threads.
/// Models are added one at a time (under `registering`, or before the pool is shared).
pub(crate) struct Registry {
    fast: [AtomicU64; FAST_MODELS],
    fast_len: AtomicUsize,
    /// Admitted past the fast slots, and refused.
    slow: RwLock<(Vec<u64>, Vec<u64>)>,
    /// Serializes the registration of models at first use.
    registering: tokio::sync::Mutex<()>,
}

/// What registering a model at its first use changes.
pub(crate) struct Parts<'a> {
    pub schema: &'a Schema,
    pub tiers: &'a Tiers,
    /// Whether the pool installs the change feed (and so covers the model's table).
    pub installs_feed: bool,
}

impl Registry {
    /// A registry that admits `admitted` (the models given to the builder, already checked).
    pub fn new(admitted: &[u64]) -> Registry {
        let models = Registry {
            fast: std::array::from_fn(|_| AtomicU64::new(0)),
            fast_len: AtomicUsize::new(0),
            slow: RwLock::default(),
            registering: tokio::sync::Mutex::new(()),
        };
        for &fingerprint in admitted {
            models.admit_known(fingerprint);
        }
        models
    }

    /// Applies the settings of a model first used without `.model::<T>()`: checks them as
    /// `build()` does, adds them, drops what is cached of the table (it may have been cached
    /// under other settings), and plans again. A model that does not check out is never cached.
    pub async fn register(
        &self,
        ModelOf { fingerprint, model, type_name }: ModelOf,
        Parts { schema, tiers, installs_feed }: Parts<'_>,
    ) -> Result<(), Uncached> {
        let _one_at_a_time = self.registering.lock().await;
        if let Some(verdict) = self.verdict(fingerprint) {
            return if verdict { Ok(()) } else { Err(Uncached::BadModel) };
        }
        let table = TableConfig::model(&model, format!("the model `{type_name}` (table {:?})", model.table));
        let mut catalog = schema.catalog();
        if catalog.resolve(&table.name).is_none() {
            // Created after the catalog was read?
            if schema.reload(catalog.generation).await.is_ok() {
                catalog = schema.catalog();
            }
        }
        let others = schema.config().tables.clone();
        // The check reads the database only for a table without a primary key.
        let oid = match Config::check_table(&others, &table, &catalog, schema.pool()).await {
            Ok(oid) => oid,
            // The database failed, not the model: decide at a later use.
            Err(Error::Database(_)) => return Err(Uncached::BadModel),
            Err(error) => {
                tracing::warn!(target: "sqlacache", r#type = type_name, "reads into this model are not cached: {error}");
                self.refuse(fingerprint);
                return Err(Uncached::BadModel);
            }
        };
        schema.add_model(table);
        if installs_feed {
            // One rule whatever other pools did: a pool that installs the feed covers a model's
            // table at its first use, as `.model::<T>()` would have at `build()`. (With
            // `change_feed_installed`, a table the migration did not cover stays `NotInFeed`.)
            schema.reinstall_feed(schema.pool()).await;
        }
        tiers.apply_now(&catalog.family_tags(oid), Origin::Write).await;
        // Plans carry each table's ops and TTL: make them again (marked out of date first, so a
        // failed reload is retried by the next plan).
        schema.changed();
        let reloaded = schema.reload(schema.generation()).await;
        self.admit_known(fingerprint);
        tracing::debug!(target: "sqlacache", r#type = type_name, "model registered at first use");
        reloaded.map_err(|_| Uncached::BadModel)
    }

    /// The verdict on a model already known (always `Ok` without a model), or the model to
    /// [`register`](Registry::register) first.
    #[inline]
    pub fn known(&self, model: Option<ModelOf>) -> Result<Result<(), Uncached>, ModelOf> {
        let Some(model) = model else { return Ok(Ok(())) };
        match self.verdict(model.fingerprint) {
            Some(true) => Ok(Ok(())),
            Some(false) => Ok(Err(Uncached::BadModel)),
            None => Err(model),
        }
    }

    fn verdict(&self, fingerprint: u64) -> Option<bool> {
        let len = self.fast_len.load(Ordering::Acquire);
        if self.fast[..len].iter().any(|f| f.load(Ordering::Relaxed) == fingerprint) {
            return Some(true);
        }
        let slow = self.slow.read().unwrap_or_else(|e| e.into_inner());
        if slow.0.contains(&fingerprint) {
            Some(true)
        } else if slow.1.contains(&fingerprint) {
            Some(false)
        } else {
            None
        }
    }

    fn admit_known(&self, fingerprint: u64) {
        let len = self.fast_len.load(Ordering::Acquire);
        if len < FAST_MODELS {
            self.fast[len].store(fingerprint, Ordering::Relaxed);
            self.fast_len.store(len + 1, Ordering::Release);
        } else {
            self.slow.write().unwrap_or_else(|e| e.into_inner()).0.push(fingerprint);
        }
    }

    fn refuse(&self, fingerprint: u64) {
        self.slow.write().unwrap_or_else(|e| e.into_inner()).1.push(fingerprint);
    }
}

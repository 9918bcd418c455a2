//! The in-process bus: the pools of one process over one database and key prefix apply each
//! other's writes to their in-process tiers before the write returns, as if they shared one.
//! (Without it, each would behave like a process of its own: told through Redis if it has it,
//! a lease later at worst, and never without Redis.)

use crate::local::{Local, Origin};
use sqlacache_core::Tag;
use std::sync::{Arc, Mutex, Weak};

/// Every pool of this process that joined a bus, by scope.
static POOLS: Mutex<Vec<(Arc<str>, Weak<Local>)>> = Mutex::new(Vec::new());

fn pools() -> std::sync::MutexGuard<'static, Vec<(Arc<str>, Weak<Local>)>> {
    POOLS.lock().unwrap_or_else(|e| e.into_inner())
}

/// One pool's place on the in-process bus of its scope.
pub(crate) struct Neighbours {
    /// `None` for a pool that joined no bus.
    scope: Option<Arc<str>>,
    me: Weak<Local>,
}

impl Neighbours {
    /// Joins the bus of `scope` (the database's identity and the key prefix) with `local`, the
    /// pool's in-process tier; `None` joins none.
    pub fn join(scope: Option<String>, local: &Arc<Local>) -> Neighbours {
        let scope: Option<Arc<str>> = scope.map(Into::into);
        if let Some(scope) = &scope {
            let mut pools = pools();
            pools.retain(|(_, pool)| pool.strong_count() > 0);
            pools.push((scope.clone(), Arc::downgrade(local)));
        }
        Neighbours { scope, me: Arc::downgrade(local) }
    }

    /// The other live pools of this pool's scope.
    fn others(&self) -> Vec<Arc<Local>> {
        let Some(scope) = &self.scope else { return Vec::new() };
        let pools = pools();
        pools
            .iter()
            .filter(|(of, pool)| of == scope && !Weak::ptr_eq(pool, &self.me))
            .filter_map(|(_, pool)| pool.upgrade())
            .collect()
    }

    /// Applies a write of this pool to the others' in-process tiers (counted as received).
    pub fn invalidate(&self, tags: &[Tag]) {
        for other in self.others() {
            other.invalidate(tags, Origin::Peer);
        }
    }

    /// Invalidates `tags` in the others' tiers again, once Redis no longer serves the old
    /// values: a read of theirs may have taken one from Redis in between (see `tiers::publish`).
    #[cfg(feature = "redis")]
    pub fn invalidate_again(&self, tags: &[Tag]) {
        for other in self.others() {
            other.store.invalidate(tags);
        }
    }
}

impl Drop for Neighbours {
    fn drop(&mut self) {
        if self.scope.is_some() {
            pools().retain(|(_, pool)| pool.strong_count() > 0 && !Weak::ptr_eq(pool, &self.me));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn holds(local: &Local, key: u128) -> bool {
        local.store.get(sqlacache_core::key::Key(key)).is_some()
    }

    fn filled(key: u128, table: u32) -> Arc<Local> {
        let local = Arc::new(Local::new(1 << 20));
        let stamp = local.store.stamp();
        local.store.put(
            sqlacache_core::key::Key(key),
            &[Tag::Table(table)],
            stamp,
            std::time::Duration::from_secs(60),
            vec![1],
        );
        local
    }

    #[test]
    fn a_write_reaches_the_pools_of_its_scope_only() {
        let scope = format!("test-{}", std::process::id());
        let (a, b, c, d) = (filled(1, 7), filled(1, 7), filled(1, 7), filled(1, 7));
        let na = Neighbours::join(Some(scope.clone()), &a);
        let _nb = Neighbours::join(Some(scope.clone()), &b);
        let _nc = Neighbours::join(Some(format!("{scope}-other")), &c);
        let _nd = Neighbours::join(None, &d);
        na.invalidate(&[Tag::Table(7)]);
        assert!(holds(&a, 1), "the writer applies its own write itself");
        assert!(!holds(&b, 1), "a pool of the same scope");
        assert!(holds(&c, 1) && holds(&d, 1), "pools of another scope, or of none");
        assert_eq!(b.stats.snapshot().received, 1);
    }

    #[test]
    fn a_dropped_pool_leaves_the_bus() {
        let scope = format!("drop-{}", std::process::id());
        let a = filled(1, 7);
        let na = Neighbours::join(Some(scope.clone()), &a);
        let b = filled(1, 7);
        let nb = Neighbours::join(Some(scope.clone()), &b);
        drop((nb, b));
        assert!(na.others().is_empty());
        assert_eq!(pools().iter().filter(|(of, _)| **of == *scope).count(), 1, "only A is left");
    }
}

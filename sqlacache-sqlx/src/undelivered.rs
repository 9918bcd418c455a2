//! Invalidations whose delivery to Redis is uncertain (a command that failed or timed out, a
//! write abandoned mid-delivery), kept to be delivered again once Redis answers: the same tags,
//! so that one process's outage costs the fleet the entries it wrote, not every entry. Past
//! [`MAX_TAGS`] they widen to everything.

use sqlacache_core::Tag;
use std::collections::HashSet;
use std::sync::Mutex;

/// Tags kept at most; more widen to [`Tag::All`].
const MAX_TAGS: usize = 4096;

/// See the module.
#[derive(Default)]
pub(crate) struct Undelivered(Mutex<HashSet<Tag>>);

impl Undelivered {
    fn set(&self) -> std::sync::MutexGuard<'_, HashSet<Tag>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `tags` may not have reached Redis.
    pub fn add(&self, tags: &[Tag]) {
        let mut set = self.set();
        if set.contains(&Tag::All) {
            return;
        }
        set.extend(tags.iter().copied());
        if set.len() > MAX_TAGS || set.contains(&Tag::All) {
            set.clear();
            set.insert(Tag::All);
        }
    }

    /// Takes what is to be delivered again (`None` if nothing); put it back with
    /// [`Undelivered::add`] if that fails too.
    pub fn take(&self) -> Option<Vec<Tag>> {
        let mut set = self.set();
        (!set.is_empty()).then(|| set.drain().collect())
    }

    /// Whether nothing is waiting.
    pub fn is_empty(&self) -> bool {
        self.set().is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_come_back_once_and_widen_past_the_bound() {
        let undelivered = Undelivered::default();
        assert_eq!(undelivered.take(), None);
        undelivered.add(&[Tag::Table(1), Tag::Table(1), Tag::Row(5)]);
        let mut back = undelivered.take().unwrap();
        back.sort_by_key(|t| format!("{t:?}"));
        assert_eq!(back, vec![Tag::Row(5), Tag::Table(1)]);
        assert!(undelivered.is_empty());
        for id in 0..=MAX_TAGS as u128 {
            undelivered.add(&[Tag::Row(id)]);
        }
        assert_eq!(undelivered.take(), Some(vec![Tag::All]));
        undelivered.add(&[Tag::All]);
        undelivered.add(&[Tag::Table(3)]);
        assert_eq!(undelivered.take(), Some(vec![Tag::All]), "everything covers the rest");
    }
}

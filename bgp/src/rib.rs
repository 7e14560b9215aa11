//! The routing information base: every path per route (the Adj-RIB-In of
//! every peer plus local routes, in one table keyed by route), the best
//! path per route (RFC 4271 §9.1.2 with the usual tie-breaks) and the
//! equal-cost set beside it (ECMP across the spines).

use std::cmp::Ordering;
use std::collections::HashMap;

use rustbgpd_wire::attribute::Origin;

use crate::route::{Family, Path, RouteKey, Source};

/// LOCAL_PREF assumed where a path carries none.
const DEFAULT_LOCAL_PREF: u32 = 100;

#[derive(Debug, Default)]
struct Entry {
    paths: Vec<Path>,
    /// How many of `paths` are selected: `paths` is kept with the best
    /// first, then the paths equal to it for multipath (one allocation per
    /// route, not two).
    selected: usize,
}

impl Entry {
    fn selected_paths(&self) -> Vec<Path> {
        self.paths[..self.selected].to_vec()
    }
}

/// A route whose selected paths changed: the new best first, then its
/// equal-cost companions; empty when the route is gone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub key: RouteKey,
    pub selected: Vec<Path>,
}

#[derive(Debug, Default)]
pub struct Rib {
    routes: HashMap<RouteKey, Entry>,
    /// Paths held per source and family (prefix limits, summaries).
    counts: HashMap<(Source, Family), usize>,
}

impl Rib {
    pub fn new() -> Rib {
        Rib::default()
    }

    /// Adds or replaces the path of `path.source` for `key`.
    pub fn insert(&mut self, key: RouteKey, path: Path) -> Option<Change> {
        let source = path.source;
        let entry = self.routes.entry(key).or_default();
        let before = entry.selected_paths();
        match entry.paths.iter().position(|p| p.source == source) {
            Some(index) if entry.paths[index].same_as(&path) => return None,
            Some(index) => entry.paths[index] = path,
            None => {
                // Exact capacity: a route has one path or a few, and a
                // default-grown Vec would hold room for four.
                entry.paths.reserve_exact(1);
                entry.paths.push(path);
                *self.counts.entry((source, key.family())).or_default() += 1;
            }
        }
        self.reselect(key, before)
    }

    /// Removes the path of `source` for `key`.
    pub fn remove(&mut self, key: RouteKey, source: Source) -> Option<Change> {
        let entry = self.routes.get_mut(&key)?;
        let index = entry.paths.iter().position(|p| p.source == source)?;
        let before = entry.selected_paths();
        entry.paths.swap_remove(index);
        if let Some(count) = self.counts.get_mut(&(source, key.family())) {
            *count = count.saturating_sub(1);
        }
        self.reselect(key, before)
    }

    /// Removes every path of `source` (its session went down).
    pub fn remove_source(&mut self, source: Source) -> Vec<Change> {
        let keys: Vec<RouteKey> = self
            .routes
            .iter()
            .filter(|(_, e)| e.paths.iter().any(|p| p.source == source))
            .map(|(k, _)| *k)
            .collect();
        keys.into_iter()
            .filter_map(|key| self.remove(key, source))
            .collect()
    }

    /// The selected paths of `key`: best first, then equal-cost ones.
    pub fn selected(&self, key: &RouteKey) -> Vec<&Path> {
        self.routes
            .get(key)
            .map(|e| e.paths[..e.selected].iter().collect())
            .unwrap_or_default()
    }

    /// Every path of `key`, selected or not.
    pub fn paths(&self, key: &RouteKey) -> &[Path] {
        self.routes.get(key).map_or(&[], |e| &e.paths[..])
    }

    pub fn keys(&self) -> impl Iterator<Item = &RouteKey> {
        self.routes.keys()
    }

    /// Paths held from `source` in `family`.
    pub fn count(&self, source: Source, family: Family) -> usize {
        self.counts.get(&(source, family)).copied().unwrap_or(0)
    }

    pub fn len(&self) -> usize {
        self.routes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }

    /// Selects again after `key`'s paths changed; `before` is what was
    /// selected before the change.
    fn reselect(&mut self, key: RouteKey, before: Vec<Path>) -> Option<Change> {
        let entry = self.routes.get_mut(&key)?;
        let order = select(&entry.paths);
        entry.selected = order.len();
        if entry.paths.len() <= 1 {
            return self.changed(key, before);
        }
        // Selected paths first, in order; the rest after them.
        let mut taken: Vec<Option<Path>> = entry.paths.drain(..).map(Some).collect();
        let mut ordered: Vec<Path> = Vec::with_capacity(taken.len());
        ordered.extend(order.iter().filter_map(|&i| taken[i].take()));
        ordered.extend(taken.into_iter().flatten());
        entry.paths = ordered;
        self.changed(key, before)
    }

    /// The change of `key` whose selection was `before`, if it differs.
    fn changed(&mut self, key: RouteKey, before: Vec<Path>) -> Option<Change> {
        let entry = self.routes.get_mut(&key)?;
        let after = entry.selected_paths();
        if entry.paths.is_empty() {
            self.routes.remove(&key);
        }
        let same =
            before.len() == after.len() && before.iter().zip(&after).all(|(a, b)| a.same_as(b));
        (!same).then_some(Change {
            key,
            selected: after,
        })
    }
}

/// The best path's index first, then every path equal to it up to the
/// router-id tie-break (multipath, AS paths of equal length).
fn select(paths: &[Path]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..paths.len()).collect();
    order.sort_by(|&a, &b| compare(&paths[a], &paths[b]));
    let Some(&best) = order.first() else {
        return Vec::new();
    };
    order
        .into_iter()
        .take_while(|&i| i == best || multipath_equal(&paths[best], &paths[i]))
        .collect()
}

/// Orders two paths, better first (RFC 4271 §9.1.2.2 and common practice).
pub fn compare(a: &Path, b: &Path) -> Ordering {
    preference(a)
        .cmp(&preference(b))
        .then_with(|| tie_break(a, b))
}

/// The steps up to and including eBGP-over-iBGP, as a sortable tuple
/// (smaller is better).
fn preference(path: &Path) -> (u32, bool, usize, u8, bool) {
    let attributes = &path.attributes;
    let local_pref = attributes.local_pref().unwrap_or(DEFAULT_LOCAL_PREF);
    let ebgp = path.peer.is_some_and(|p| p.ebgp);
    (
        u32::MAX - local_pref,
        path.source != Source::Local,
        attributes.as_path_len(),
        origin_rank(attributes.origin()),
        !ebgp && path.source != Source::Local,
    )
}

fn origin_rank(origin: Origin) -> u8 {
    match origin {
        Origin::Igp => 0,
        Origin::Egp => 1,
        Origin::Incomplete => 2,
    }
}

/// MED (between paths from the same neighbouring AS only), then the
/// lower router id and peer address.
fn tie_break(a: &Path, b: &Path) -> Ordering {
    let med = if a.attributes.neighbor_as() == b.attributes.neighbor_as() {
        a.attributes
            .med()
            .unwrap_or(0)
            .cmp(&b.attributes.med().unwrap_or(0))
    } else {
        Ordering::Equal
    };
    med.then_with(|| {
        let id = |p: &Path| p.peer.map(|p| (p.router_id, p.address));
        id(a).cmp(&id(b))
    })
}

/// Whether `other` may share traffic with `best`: equal up to the
/// router-id tie-break, with AS paths of equal length (not necessarily
/// the same ASes: two spines of one tier carry different paths).
fn multipath_equal(best: &Path, other: &Path) -> bool {
    best.source != Source::Local
        && other.source != Source::Local
        && preference(best) == preference(other)
        && best.attributes.med().unwrap_or(0) == other.attributes.med().unwrap_or(0)
        && best.evpn.is_none()
        && other.evpn.is_none()
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};
    use std::sync::Arc;

    use rustbgpd_wire::attribute::{AsPath, AsPathSegment, PathAttribute};
    use rustbgpd_wire::nlri::Ipv4Prefix;

    use super::*;
    use crate::route::{Attributes, NextHop, PeerFacts, PeerId};

    fn key() -> RouteKey {
        RouteKey::V4(Ipv4Prefix::new(Ipv4Addr::new(10, 0, 0, 2), 32))
    }

    fn path(peer: u32, as_path: &[u32], extra: Vec<PathAttribute>) -> Path {
        let mut list = vec![
            PathAttribute::Origin(Origin::Igp),
            PathAttribute::AsPath(AsPath {
                segments: vec![AsPathSegment::AsSequence(as_path.to_vec())],
            }),
        ];
        list.extend(extra);
        Path {
            source: Source::Peer(PeerId(peer)),
            peer: Some(PeerFacts {
                router_id: Ipv4Addr::new(10, 0, 0, peer as u8),
                address: IpAddr::V4(Ipv4Addr::new(192, 0, 2, peer as u8)),
                ebgp: true,
            }),
            attributes: Arc::new(Attributes { list }),
            next_hop: NextHop::V4(Ipv4Addr::new(192, 0, 2, peer as u8)),
            evpn: None,
        }
    }

    fn sources(change: &Change) -> Vec<Source> {
        change.selected.iter().map(|p| p.source).collect()
    }

    #[test]
    fn equal_paths_through_two_spines_are_both_selected() {
        let mut rib = Rib::new();
        let first = rib
            .insert(key(), path(1, &[65000, 4200000002], vec![]))
            .unwrap();
        assert_eq!(sources(&first), vec![Source::Peer(PeerId(1))]);
        let both = rib
            .insert(key(), path(2, &[65000, 4200000002], vec![]))
            .unwrap();
        assert_eq!(
            sources(&both),
            vec![Source::Peer(PeerId(1)), Source::Peer(PeerId(2))],
            "the lower router id is best, the other shares"
        );
        let one = rib.remove(key(), Source::Peer(PeerId(1))).unwrap();
        assert_eq!(sources(&one), vec![Source::Peer(PeerId(2))]);
        let gone = rib.remove(key(), Source::Peer(PeerId(2))).unwrap();
        assert!(gone.selected.is_empty());
        assert!(rib.is_empty());
    }

    #[test]
    fn shorter_as_path_wins_and_longer_is_not_multipath() {
        let mut rib = Rib::new();
        rib.insert(key(), path(1, &[65000, 65001, 4200000002], vec![]));
        let change = rib
            .insert(key(), path(2, &[65000, 4200000002], vec![]))
            .unwrap();
        assert_eq!(sources(&change), vec![Source::Peer(PeerId(2))]);
    }

    #[test]
    fn local_pref_then_origin_then_med_decide() {
        let mut rib = Rib::new();
        rib.insert(
            key(),
            path(1, &[65000], vec![PathAttribute::LocalPref(100)]),
        );
        let change = rib
            .insert(
                key(),
                path(
                    2,
                    &[65000, 65001, 65002],
                    vec![PathAttribute::LocalPref(200)],
                ),
            )
            .unwrap();
        assert_eq!(sources(&change), vec![Source::Peer(PeerId(2))]);

        let mut rib = Rib::new();
        rib.insert(key(), path(1, &[65000], vec![PathAttribute::Med(50)]));
        let change = rib
            .insert(key(), path(2, &[65000], vec![PathAttribute::Med(10)]))
            .unwrap();
        assert_eq!(
            sources(&change),
            vec![Source::Peer(PeerId(2))],
            "lower MED, same AS"
        );
    }

    #[test]
    fn a_repeated_identical_path_changes_nothing() {
        let mut rib = Rib::new();
        let p = path(1, &[65000], vec![]);
        assert!(rib.insert(key(), p.clone()).is_some());
        assert!(rib.insert(key(), p).is_none());
        assert_eq!(rib.count(Source::Peer(PeerId(1)), Family::Ipv4Unicast), 1);
    }

    #[test]
    fn removing_a_source_withdraws_all_its_routes() {
        let mut rib = Rib::new();
        for n in 0..10u8 {
            let k = RouteKey::V4(Ipv4Prefix::new(Ipv4Addr::new(10, 1, 0, n), 32));
            rib.insert(k, path(1, &[65000], vec![]));
        }
        let changes = rib.remove_source(Source::Peer(PeerId(1)));
        assert_eq!(changes.len(), 10);
        assert!(changes.iter().all(|c| c.selected.is_empty()));
        assert_eq!(rib.count(Source::Peer(PeerId(1)), Family::Ipv4Unicast), 0);
    }
}

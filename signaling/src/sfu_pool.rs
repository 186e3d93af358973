//! Which SFU each group room uses: the one in this process (`--sfu`) or one of the SFUs
//! attached over WebSocket (`sotto-sfu --signaling`).
//!
//! A room is pinned to one SFU by its first `sfu_offer` and stays there until no member of it
//! is seated in the SFU any more (all left it, or the room emptied), or until that SFU's
//! connection drops. A new room goes to the in-process SFU unless it is at its room limit,
//! else to the attached SFU with the fewest rooms pinned to it (fewest seated members on a
//! tie) that is below the capacity it announced.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex, MutexGuard};

use sotto::signal::ErrorCode;

use crate::hub::PeerHandle;
use crate::metrics::Metrics;
use crate::sfu_link::SfuLink;

/// Where a member's SFU signals go.
#[derive(Debug, Clone)]
pub(crate) enum Route {
    /// The SFU in this process.
    InProcess(Arc<dyn SfuLink>),
    /// An attached SFU's connection.
    Attached(PeerHandle),
}

/// Why an offer found no SFU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NoRoute {
    /// The server has no SFU at all.
    NoSfu,
    /// Every SFU is at its room limit.
    Full,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    InProcess,
    Attached(u64),
}

#[derive(Debug)]
struct Pin {
    on: Target,
    /// Members that offered to the room's SFU and have not left it.
    seated: HashSet<Arc<str>>,
}

#[derive(Debug)]
struct AttachedSfu {
    handle: PeerHandle,
    capacity: usize,
    rooms: usize,
    seated: usize,
}

#[derive(Debug, Default)]
struct State {
    sfus: HashMap<u64, AttachedSfu>,
    rooms: HashMap<String, Pin>,
    next_id: u64,
}

/// Attached SFUs and the rooms pinned to SFUs. Every operation is a few map lookups under one
/// mutex, never I/O.
#[derive(Debug)]
pub struct SfuPool {
    state: Mutex<State>,
    in_process: Option<Arc<dyn SfuLink>>,
    max_attached: usize,
    metrics: Arc<Metrics>,
}

impl SfuPool {
    /// A pool with the in-process SFU (if any) and room for `max_attached` attached ones.
    pub fn new(
        in_process: Option<Arc<dyn SfuLink>>,
        max_attached: usize,
        metrics: Arc<Metrics>,
    ) -> Self {
        SfuPool {
            state: Mutex::new(State::default()),
            in_process,
            max_attached,
            metrics,
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A panic under the lock would be a bug; keep serving with the data as is.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether group calls have an SFU now (in process, or at least one attached).
    pub fn available(&self) -> bool {
        self.in_process.is_some() || !self.state().sfus.is_empty()
    }

    /// Attached SFUs now.
    pub fn attached(&self) -> usize {
        self.state().sfus.len()
    }

    /// Registers an attached SFU that takes at most `capacity` rooms; `server_full` when
    /// `max_attached` are attached already.
    pub(crate) fn attach(&self, handle: PeerHandle, capacity: usize) -> Result<u64, ErrorCode> {
        let mut state = self.state();
        if state.sfus.len() >= self.max_attached {
            return Err(ErrorCode::ServerFull);
        }
        state.next_id = state.next_id.wrapping_add(1);
        let id = state.next_id;
        state.sfus.insert(
            id,
            AttachedSfu {
                handle,
                capacity,
                rooms: 0,
                seated: 0,
            },
        );
        self.metrics.sfus_attached.fetch_add(1, Relaxed);
        Ok(id)
    }

    /// Forgets attached SFU `id` and unpins its rooms; returns them (their members must be
    /// told that `sfu` left).
    pub(crate) fn detach(&self, id: u64) -> Vec<String> {
        let mut state = self.state();
        if state.sfus.remove(&id).is_none() {
            return Vec::new();
        }
        self.metrics.sfus_attached.fetch_sub(1, Relaxed);
        let rooms: Vec<String> = state
            .rooms
            .iter()
            .filter(|(_, pin)| pin.on == Target::Attached(id))
            .map(|(room, _)| room.clone())
            .collect();
        for room in &rooms {
            state.rooms.remove(room);
        }
        rooms
    }

    /// Seats `peer` in `room`'s SFU, pinning the room to one first if it has none.
    pub(crate) fn seat(&self, room: &str, peer: &Arc<str>) -> Result<Route, NoRoute> {
        let mut state = self.state();
        let state = &mut *state;
        if let Some(pin) = state.rooms.get_mut(room) {
            // A member seated already offers again (its SFU connection failed, say): the SFU
            // decides whether it still has it.
            let fresh = !pin.seated.contains(&**peer);
            let route = match pin.on {
                Target::InProcess => self.in_process.clone().map(Route::InProcess),
                Target::Attached(id) => state.sfus.get_mut(&id).map(|sfu| {
                    sfu.seated += usize::from(fresh);
                    Route::Attached(sfu.handle.clone())
                }),
            };
            let route = route.ok_or(NoRoute::NoSfu)?;
            pin.seated.insert(peer.clone());
            return Ok(route);
        }
        let (on, route) = match &self.in_process {
            Some(sfu) if sfu.can_take_room() => (Target::InProcess, Route::InProcess(sfu.clone())),
            _ => {
                let none_attached = state.sfus.is_empty();
                let least = state
                    .sfus
                    .iter_mut()
                    .filter(|(_, s)| s.rooms < s.capacity)
                    .min_by_key(|(id, s)| (s.rooms, s.seated, **id));
                match least {
                    Some((&id, sfu)) => {
                        sfu.rooms += 1;
                        sfu.seated += 1;
                        (Target::Attached(id), Route::Attached(sfu.handle.clone()))
                    }
                    None if self.in_process.is_none() && none_attached => {
                        return Err(NoRoute::NoSfu);
                    }
                    None => return Err(NoRoute::Full),
                }
            }
        };
        state.rooms.insert(
            room.to_owned(),
            Pin {
                on,
                seated: HashSet::from([peer.clone()]),
            },
        );
        Ok(route)
    }

    /// Takes `peer` out of `room`'s SFU; the room is unpinned when nobody is seated any more.
    /// Returns where to send its leave, or `None` if it was not seated.
    pub(crate) fn unseat(&self, room: &str, peer: &str) -> Option<Route> {
        let mut state = self.state();
        let state = &mut *state;
        let pin = state.rooms.get_mut(room)?;
        if !pin.seated.remove(peer) {
            return None;
        }
        let (on, empty) = (pin.on, pin.seated.is_empty());
        if empty {
            state.rooms.remove(room);
        }
        match on {
            Target::InProcess => self.in_process.clone().map(Route::InProcess),
            Target::Attached(id) => {
                let sfu = state.sfus.get_mut(&id)?;
                sfu.seated = sfu.seated.saturating_sub(1);
                if empty {
                    sfu.rooms = sfu.rooms.saturating_sub(1);
                }
                Some(Route::Attached(sfu.handle.clone()))
            }
        }
    }

    /// Whether attached SFU `id` may answer for `peer` in `room`: the room is pinned to it and
    /// the peer is seated there.
    pub(crate) fn serves(&self, id: u64, room: &str, peer: &str) -> bool {
        self.state()
            .rooms
            .get(room)
            .is_some_and(|pin| pin.on == Target::Attached(id) && pin.seated.contains(peer))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicBool;

    use super::*;
    use crate::hub::outbox;
    use crate::sfu_link::SfuRefusal;

    #[derive(Debug, Default)]
    struct Local {
        full: AtomicBool,
    }

    impl SfuLink for Local {
        fn join(&self, _: &str, _: &str, _: &str) -> Result<String, SfuRefusal> {
            Ok(String::new())
        }
        fn leave(&self, _: &str, _: &str) {}
        fn render_metrics(&self) -> String {
            String::new()
        }
        fn can_take_room(&self) -> bool {
            !self.full.load(Relaxed)
        }
    }

    fn handle(metrics: &Arc<Metrics>) -> (PeerHandle, crate::hub::Inbox) {
        let (outbox, inbox) = outbox(8, 1 << 16, metrics.clone());
        let kick = tokio_util::sync::CancellationToken::new();
        (PeerHandle { outbox, kick }, inbox)
    }

    fn on(route: Result<Route, NoRoute>) -> &'static str {
        match route {
            Ok(Route::InProcess(_)) => "local",
            Ok(Route::Attached(_)) => "attached",
            Err(NoRoute::NoSfu) => "none",
            Err(NoRoute::Full) => "full",
        }
    }

    #[test]
    fn rooms_go_to_the_local_sfu_first_then_the_least_loaded_and_stay_until_empty() {
        let metrics = Arc::new(Metrics::default());
        let local = Arc::new(Local::default());
        let pool = SfuPool::new(Some(local.clone()), 2, metrics.clone());
        let p = |s: &str| -> Arc<str> { s.into() };
        assert_eq!(on(pool.seat("a", &p("p1"))), "local");
        // Seating again is allowed (the SFU refuses a member it still has).
        assert_eq!(on(pool.seat("a", &p("p1"))), "local");
        local.full.store(true, Relaxed);
        // No attached SFU and the local one full.
        assert_eq!(on(pool.seat("b", &p("p1"))), "full");
        // Room a stays where it is.
        assert_eq!(on(pool.seat("a", &p("p2"))), "local");

        let (h1, _i1) = handle(&metrics);
        let (h2, _i2) = handle(&metrics);
        let (h3, _i3) = handle(&metrics);
        let one = pool.attach(h1, 1).unwrap();
        let two = pool.attach(h2, 5).unwrap();
        assert_eq!(pool.attach(h3, 5), Err(ErrorCode::ServerFull));
        assert_eq!(on(pool.seat("b", &p("p1"))), "attached");
        assert_eq!(on(pool.seat("c", &p("p1"))), "attached");
        assert!(pool.serves(one, "b", "p1") && pool.serves(two, "c", "p1"));
        assert!(!pool.serves(one, "c", "p1") && !pool.serves(two, "c", "p2"));
        // `one` is at its capacity of one room: d goes to `two`.
        assert_eq!(on(pool.seat("d", &p("p1"))), "attached");
        assert!(pool.serves(two, "d", "p1"));

        // A room is unpinned when its last seated member leaves.
        assert!(pool.unseat("b", "p1").is_some());
        assert!(pool.unseat("b", "p1").is_none());
        assert!(!pool.serves(one, "b", "p1"));
        assert_eq!(on(pool.seat("e", &p("p1"))), "attached");
        assert!(pool.serves(one, "e", "p1"));

        // Detaching unpins exactly that SFU's rooms.
        let mut gone = pool.detach(two);
        gone.sort();
        assert_eq!(gone, ["c", "d"]);
        assert!(pool.detach(two).is_empty());
        assert!(pool.serves(one, "e", "p1"));
        assert_eq!(pool.attached(), 1);
        assert_eq!(metrics.sfus_attached.load(Relaxed), 1);
        assert!(pool.unseat("c", "p1").is_none());
    }
}

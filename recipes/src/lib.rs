//! cairn-recipes: the things people run etcd for, on [`cairn_sdk`] — correct under
//! failures, and with etcd's key layouts, so they interoperate with Go services using
//! `clientv3/concurrency` and `contrib/recipes`, and with `etcdctl lock` / `etcdctl elect`.
//!
//! | recipe | what it gives |
//! |---|---|
//! | [`PrefixCache`] | a typed, always-current local copy of a prefix, with change events (Curator's CuratorCache) |
//! | [`Registry`] | register an instance under a lease; kept alive, restored after a lease loss, removed on drop |
//! | [`Discovery`] | a live view of a service's instances; [`Balancer`] pickers; a `tower` [`Discover`](tower::discover::Discover); a balanced tonic channel |
//! | [`Election`] | campaign (waits until elected), proclaim, resign, leader, observe |
//! | [`Mutex`], [`RwMutex`] | fair locks with a fencing token and an ownership compare for guarded writes |
//! | [`Queue`], [`PriorityQueue`] | enqueue; dequeue waits for an item; each item goes to exactly one consumer |
//! | [`Barrier`], [`DoubleBarrier`] | hold everyone until released; start and finish a group together |
//! | [`Config`] | a typed `serde` value from a key or prefix, then validated live updates |
//! | [`Semaphore`] | at most N holders at once, in arrival order |
//! | [`Counter`], [`AtomicValue`] | a shared integer; a shared typed value changed by compare-and-set |
//! | [`stm()`] | software transactional memory (clientv3's `NewSTM`, four isolation levels) |
//! | [`LeaderSelector`] | campaign, lead, and campaign again after losing, until stopped |
//! | [`WorkQueue`] | at-least-once: an item taken by a consumer that dies comes back |
//!
//! Recipes that hold something (locks, leadership, barrier places, registrations) hold it
//! through a [`cairn_sdk::Session`]: if the process dies, the session's lease expires
//! and what it held is released within the session's TTL.
//!
//! Runnable programs: `recipes/examples/` (`cargo run -p cairn-recipes --example <name>`).

#![warn(missing_docs)]

pub mod barrier;
pub mod cache;
pub mod config;
pub mod counter;
pub mod discovery;
pub mod election;
pub mod error;
pub mod mutex;
pub mod queue;
pub mod registry;
pub mod selector;
pub mod semaphore;
pub mod stm;
mod wait;
pub mod work_queue;

pub use barrier::{Barrier, DoubleBarrier};
pub use cache::{CacheEvent, Entries, PrefixCache};
pub use config::{Config, ConfigUpdate, ConfigWatch};
pub use counter::{AtomicValue, Counter};
pub use discovery::{Balancer, DiscoverStream, Discovery, Instance, Instances, Picked, Strategy};
pub use election::{Election, Leadership, Observe};
pub use error::{Error, Result};
pub use mutex::{LockGuard, Mutex, RwMutex};
pub use queue::{PriorityQueue, Queue};
pub use registry::{Registration, RegistrationState, Registry};
pub use selector::{LeaderSelector, Term};
pub use semaphore::{Permit, Semaphore};
pub use stm::{stm, Isolation, Stm};
pub use work_queue::{Job, WorkQueue};

//! cairn-recipes against real `cairn` processes (several members where it matters), with
//! real `etcdctl` for interoperability and a cuttable proxy for partitions.

mod harness;

mod barrier;
mod cache;
mod config;
mod contrib_interop;
mod counter;
mod election;
mod mutex;
mod queue;
mod registry;
mod selector;
mod semaphore;
mod stm_interop;
mod work_queue;

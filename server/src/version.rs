//! Versions this member reports.

/// The etcd API version Cairn speaks, reported by Status, `/version` and the
/// `etcd_server_version` metric (clients gate features on it).
pub const ETCD_API: &str = "3.5.0";

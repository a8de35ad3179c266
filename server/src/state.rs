//! The replicated state of a member, as the state machine applies it: the MVCC store,
//! leases, alarms, member attributes and auth, behind one lock ([`SmState`]); the lease
//! changes the lessor follows ([`LeaseChange`]); and how responses are headed
//! ([`Headers`]). Plain data: the watch hub, the lessor, auth and the apply step read or
//! change it without knowing the Raft state machine that owns it.

use crate::raft::{decode, encode, LogId, StoredMembership};
use cairn_api::cairnpb::{LeaseRecord, MemberAttributes};
use cairn_api::etcdserverpb::ResponseHeader;
use cairn_store::{Engine, Mvcc, Table, WriteBatch};
use prost::Message;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// What every response header carries besides the revision: the cluster, this member and
/// the current Raft term (kept current by the replica as terms change).
#[derive(Debug, Clone)]
pub struct Headers {
    cluster_id: u64,
    member_id: u64,
    term: Arc<AtomicU64>,
}

impl Headers {
    /// Headers of member `member_id` of cluster `cluster_id`, term 0 until set.
    pub fn new(cluster_id: u64, member_id: u64) -> Headers {
        Headers { cluster_id, member_id, term: Arc::new(AtomicU64::new(0)) }
    }

    /// A header at `revision`.
    pub fn at(&self, revision: i64) -> ResponseHeader {
        ResponseHeader {
            cluster_id: self.cluster_id,
            member_id: self.member_id,
            revision,
            raft_term: self.term.load(Ordering::Acquire),
        }
    }

    /// Record the current term (never goes back).
    pub fn set_term(&self, term: u64) {
        self.term.fetch_max(term, Ordering::AcqRel);
    }

    /// The cluster's id.
    pub fn cluster_id(&self) -> u64 {
        self.cluster_id
    }

    /// This member's id.
    pub fn member_id(&self) -> u64 {
        self.member_id
    }
}

/// Meta-table key of the last applied log id.
pub const KEY_APPLIED: &[u8] = b"raft_applied";
/// Meta-table key of the last applied membership.
pub const KEY_MEMBERSHIP: &[u8] = b"raft_membership";
const ATTR_PREFIX: &[u8] = b"member_attr/";
const ALARM_PREFIX: &[u8] = b"alarm/";

/// Everything the state machine owns, behind one lock.
pub struct SmState {
    /// The MVCC key-value store.
    pub mvcc: Mvcc,
    /// The last applied log id.
    pub last_applied: Option<LogId>,
    /// The last applied membership.
    pub membership: StoredMembership,
    /// Published member attributes (name, client URLs) by member id.
    pub attrs: BTreeMap<u64, MemberAttributes>,
    /// Leases by id.
    pub leases: BTreeMap<i64, LeaseRecord>,
    /// Raised alarms: (member id, `AlarmType` value).
    pub alarms: BTreeSet<(u64, i32)>,
    /// Users, roles, auth on or off, simple tokens.
    pub auth: crate::auth::state::AuthState,
    /// Lease changes since the lessor last took them.
    lease_changes: Vec<LeaseChange>,
    /// Staged changes to write with the next commit (member attributes, leases).
    staged: WriteBatch,
}

/// A change to the lease table, for the lessor (which keeps expiry times).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseChange {
    /// Granted (or replaced by a snapshot): the record as stored.
    Granted(LeaseRecord),
    /// Revoked.
    Revoked(i64),
    /// A new checkpointed remaining TTL.
    Checkpointed(i64, i64),
}

impl SmState {
    /// Record a member's published attributes.
    pub fn publish(&mut self, attrs: MemberAttributes) {
        let mut key = ATTR_PREFIX.to_vec();
        key.extend_from_slice(&attrs.id.to_be_bytes());
        self.staged.put(Table::Meta, key, attrs.encode_to_vec());
        self.attrs.insert(attrs.id, attrs);
    }

    /// Raise (`on`) or clear an alarm; whether that changed anything.
    pub fn set_alarm(&mut self, member: u64, alarm: i32, on: bool) -> bool {
        let mut key = ALARM_PREFIX.to_vec();
        key.extend_from_slice(&member.to_be_bytes());
        key.extend_from_slice(&alarm.to_be_bytes());
        if on {
            self.staged.put(Table::Meta, key, Vec::new());
            self.alarms.insert((member, alarm))
        } else {
            self.staged.delete(Table::Meta, key);
            self.alarms.remove(&(member, alarm))
        }
    }

    /// Whether a NOSPACE alarm is raised (writes that add data are refused).
    pub fn no_space(&self) -> bool {
        self.alarms.iter().any(|(_, a)| *a == cairn_api::etcdserverpb::AlarmType::Nospace as i32)
    }

    /// Whether a CORRUPT alarm is raised (no data changes are applied).
    pub fn corrupt(&self) -> bool {
        self.alarms.iter().any(|(_, a)| *a == cairn_api::etcdserverpb::AlarmType::Corrupt as i32)
    }

    /// Stage a write (`Some`) or delete of a meta-table key with the next commit.
    pub fn stage_meta(&mut self, key: Vec<u8>, value: Option<Vec<u8>>) {
        match value {
            Some(v) => self.staged.put(Table::Meta, key, v),
            None => self.staged.delete(Table::Meta, key),
        }
    }

    /// Store a new or changed lease record.
    pub fn put_lease(&mut self, rec: LeaseRecord) {
        self.staged.put(Table::Lease, rec.id.to_be_bytes().to_vec(), rec.encode_to_vec());
        self.leases.insert(rec.id, rec);
    }

    /// Remove a lease record.
    pub fn remove_lease(&mut self, id: i64) -> Option<LeaseRecord> {
        self.staged.delete(Table::Lease, id.to_be_bytes().to_vec());
        self.leases.remove(&id)
    }

    /// Note a lease change for the lessor.
    pub fn lease_changed(&mut self, c: LeaseChange) {
        self.lease_changes.push(c);
    }

    /// Take the lease changes since the last call.
    pub fn take_lease_changes(&mut self) -> Vec<LeaseChange> {
        std::mem::take(&mut self.lease_changes)
    }

    /// (Re)load everything but the MVCC index from the engine (at start, after a snapshot
    /// install); the lease changes are cleared (the lessor is reset from `leases`).
    pub fn load_meta(&mut self) -> Result<(), cairn_store::StoreError> {
        let engine = self.mvcc.engine().clone();
        let corrupt = |e: postcard::Error| cairn_store::StoreError::Corrupt(e.to_string());
        self.last_applied = match engine.get(Table::Meta, KEY_APPLIED)? {
            Some(b) => decode(&b).map_err(corrupt)?,
            None => None,
        };
        self.membership = match engine.get(Table::Meta, KEY_MEMBERSHIP)? {
            Some(b) => decode(&b).map_err(corrupt)?,
            None => StoredMembership::default(),
        };
        let mut attrs = BTreeMap::new();
        let mut end = ATTR_PREFIX.to_vec();
        if let Some(last) = end.last_mut() {
            *last += 1;
        }
        engine.scan(Table::Meta, ATTR_PREFIX, Some(&end), &mut |_, v| {
            let a = MemberAttributes::decode(v)?;
            attrs.insert(a.id, a);
            Ok(true)
        })?;
        self.attrs = attrs;
        let mut alarms = BTreeSet::new();
        let mut end = ALARM_PREFIX.to_vec();
        if let Some(last) = end.last_mut() {
            *last += 1;
        }
        engine.scan(Table::Meta, ALARM_PREFIX, Some(&end), &mut |k, _| {
            let k = &k[ALARM_PREFIX.len()..];
            if let (Some(m), Some(a)) = (k.get(..8), k.get(8..12)) {
                let member = u64::from_be_bytes(m.try_into().unwrap_or_default());
                let alarm = i32::from_be_bytes(a.try_into().unwrap_or_default());
                alarms.insert((member, alarm));
            }
            Ok(true)
        })?;
        self.alarms = alarms;
        crate::auth::state::load(engine.as_ref(), &mut self.auth)?;
        let mut leases = BTreeMap::new();
        engine.scan(Table::Lease, &[], None, &mut |_, v| {
            let l = LeaseRecord::decode(v)?;
            leases.insert(l.id, l);
            Ok(true)
        })?;
        self.leases = leases;
        self.lease_changes.clear();
        Ok(())
    }

    /// The staged writes plus the applied log id and membership: what an applied batch
    /// commits with the store's mutations.
    pub fn applied_batch(&mut self) -> WriteBatch {
        let mut b = std::mem::take(&mut self.staged);
        b.put(Table::Meta, KEY_APPLIED, encode(&self.last_applied));
        b.put(Table::Meta, KEY_MEMBERSHIP, encode(&self.membership));
        b
    }
}

impl SmState {
    /// The state stored in `engine` (MVCC index rebuilt, meta loaded).
    pub fn open(engine: Arc<dyn Engine>) -> Result<SmState, cairn_store::StoreError> {
        let mut st = SmState {
            mvcc: Mvcc::open(engine)?,
            last_applied: None,
            membership: StoredMembership::default(),
            attrs: BTreeMap::new(),
            leases: BTreeMap::new(),
            alarms: BTreeSet::new(),
            auth: Default::default(),
            lease_changes: Vec::new(),
            staged: WriteBatch::new(),
        };
        st.load_meta()?;
        Ok(st)
    }
}

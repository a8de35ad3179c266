//! How results are printed: etcdctl's `simple` lines, `json` (etcdctl's field names, bytes
//! as base64, zero values left out) and `table` (comfy-table).

use base64::Engine as _;
use cairn_sdk::proto::etcdserverpb::StatusResponse;
use cairn_sdk::{
    DeleteResponse, Event, GetResponse, Header, KeyValue, Member, PutResponse, TxnOpResponse, TxnResponse,
};
use clap::ValueEnum;
use serde_json::{json, Map, Value};

/// The `-w/--write-out` formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// etcdctl's plain lines.
    Simple,
    /// One JSON object per response.
    Json,
    /// A table, for lists.
    Table,
    /// etcdctl's `"Field" : value` lines, every field of the response (`get`, `put`, `del`,
    /// `txn`, `watch`, `lease grant|timetolive`, `member list`, `endpoint
    /// status|hashkv|health`); other commands print their simple lines.
    Fields,
}

fn b64(b: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(b)
}

/// Drop zero values, as Go's `omitempty` does.
fn obj(pairs: Vec<(&str, Value)>) -> Value {
    let mut m = Map::new();
    for (k, v) in pairs {
        let zero = match &v {
            Value::Null => true,
            Value::Bool(b) => !b,
            Value::Number(n) => n.as_i64() == Some(0) || n.as_u64() == Some(0),
            Value::String(s) => s.is_empty(),
            Value::Array(a) => a.is_empty(),
            Value::Object(_) => false,
        };
        if !zero {
            m.insert(k.to_string(), v);
        }
    }
    Value::Object(m)
}

/// A change whose answer is only a header (auth changes, lease revoke): `fields` and
/// `json` print the header as etcdctl does, the other formats run `simple`.
pub fn print_done(format: Format, h: &Header, simple: impl FnOnce()) {
    match format {
        Format::Fields => fields_header(h),
        Format::Json => println!("{}", obj(vec![("header", header_json(h))])),
        _ => simple(),
    }
}

/// A permission as etcdctl's `json` prints it (keys in base64, zero values left out).
pub fn permission_json(p: &cairn_sdk::Permission) -> Value {
    obj(vec![("permType", json!(p.perm_type)), ("key", json!(b64(&p.key))), ("range_end", json!(b64(&p.range_end)))])
}

/// A response of a header and one list (`name`) as etcdctl's `json` prints it.
pub fn list_json(h: &Header, name: &str, items: Vec<Value>) -> Value {
    obj(vec![("header", header_json(h)), (name, Value::Array(items))])
}

pub fn header_json(h: &Header) -> Value {
    obj(vec![
        ("cluster_id", json!(h.cluster_id)),
        ("member_id", json!(h.member_id)),
        ("revision", json!(h.revision)),
        ("raft_term", json!(h.raft_term)),
    ])
}

/// etcdctl's JSON of the answers whose header fields are inline (lease list, keep-alive
/// --once): the header's four fields, then `extra`'s, each printed even when zero.
pub fn inline_header_json(h: &Header, extra: Value) -> Value {
    let mut m = Map::new();
    m.insert("cluster_id".into(), json!(h.cluster_id));
    m.insert("member_id".into(), json!(h.member_id));
    m.insert("revision".into(), json!(h.revision));
    m.insert("raft_term".into(), json!(h.raft_term));
    if let Value::Object(fields) = extra {
        m.extend(fields);
    }
    Value::Object(m)
}

pub fn kv_json(kv: &KeyValue) -> Value {
    obj(vec![
        ("key", json!(b64(&kv.key))),
        ("create_revision", json!(kv.create_revision)),
        ("mod_revision", json!(kv.mod_revision)),
        ("version", json!(kv.version)),
        ("value", json!(b64(&kv.value))),
        ("lease", json!(kv.lease)),
    ])
}

pub fn get_json(r: &GetResponse) -> Value {
    obj(vec![
        ("header", header_json(&r.header)),
        ("kvs", Value::Array(r.kvs.iter().map(kv_json).collect())),
        ("more", json!(r.more)),
        ("count", json!(r.count)),
    ])
}

pub fn put_json(r: &PutResponse) -> Value {
    obj(vec![("header", header_json(&r.header)), ("prev_kv", r.prev_kv.as_ref().map_or(Value::Null, kv_json))])
}

pub fn del_json(r: &DeleteResponse) -> Value {
    obj(vec![
        ("header", header_json(&r.header)),
        ("deleted", json!(r.deleted)),
        ("prev_kvs", Value::Array(r.prev_kvs.iter().map(kv_json).collect())),
    ])
}

pub fn txn_json(r: &TxnResponse) -> Value {
    let ops: Vec<Value> = r
        .responses
        .iter()
        .map(|o| match o {
            TxnOpResponse::Get(g) => json!({ "Response": { "response_range": get_json(g) } }),
            TxnOpResponse::Put(p) => json!({ "Response": { "response_put": put_json(p) } }),
            TxnOpResponse::Delete(d) => json!({ "Response": { "response_delete_range": del_json(d) } }),
            TxnOpResponse::Txn(t) => json!({ "Response": { "response_txn": txn_json(t) } }),
        })
        .collect();
    obj(vec![("header", header_json(&r.header)), ("succeeded", json!(r.succeeded)), ("responses", Value::Array(ops))])
}

pub fn event_json(e: &Event) -> Value {
    obj(vec![
        ("type", json!(e.r#type)),
        ("kv", e.kv.as_ref().map_or(Value::Null, kv_json)),
        ("prev_kv", e.prev_kv.as_ref().map_or(Value::Null, kv_json)),
    ])
}

pub fn member_json(m: &Member) -> Value {
    obj(vec![
        ("ID", json!(m.id)),
        ("name", json!(m.name)),
        ("peerURLs", json!(m.peer_ur_ls)),
        ("clientURLs", json!(m.client_ur_ls)),
        ("isLearner", json!(m.is_learner)),
    ])
}

pub fn status_json(endpoint: &str, s: &StatusResponse) -> Value {
    let h = Header::from(s.header);
    json!({
        "Endpoint": endpoint,
        "Status": obj(vec![
            ("header", header_json(&h)),
            ("version", json!(s.version)),
            ("dbSize", json!(s.db_size)),
            ("leader", json!(s.leader)),
            ("raftIndex", json!(s.raft_index)),
            ("raftTerm", json!(s.raft_term)),
            ("raftAppliedIndex", json!(s.raft_applied_index)),
            ("errors", json!(s.errors)),
            ("dbSizeInUse", json!(s.db_size_in_use)),
            ("isLearner", json!(s.is_learner)),
        ]),
    })
}

/// etcdctl's `fields` lines of a response header.
pub fn fields_header(h: &Header) {
    println!("\"ClusterID\" : {}", h.cluster_id);
    println!("\"MemberID\" : {}", h.member_id);
    println!("\"Revision\" : {}", h.revision);
    println!("\"RaftTerm\" : {}", h.raft_term);
}

/// etcdctl's `fields` lines of a pair, the names prefixed with `pfx` (`Prev` for previous
/// values).
pub fn fields_kv(pfx: &str, kv: &KeyValue) {
    println!("\"{pfx}Key\" : {}", go_quote(&kv.key));
    println!("\"{pfx}CreateRevision\" : {}", kv.create_revision);
    println!("\"{pfx}ModRevision\" : {}", kv.mod_revision);
    println!("\"{pfx}Version\" : {}", kv.version);
    println!("\"{pfx}Value\" : {}", go_quote(&kv.value));
    println!("\"{pfx}Lease\" : {}", kv.lease);
}

/// One `"Name" : value` line (values printed as Go's Println prints them).
pub fn field(name: &str, value: impl std::fmt::Display) {
    println!("\"{name}\" : {value}");
}

/// A list of strings as Go's Println prints a slice: `[a b]`.
pub fn go_list(items: &[String]) -> String {
    format!("[{}]", items.join(" "))
}

/// `--hex`: keys and values printed as `\xNN` escapes (set once, before any output).
static HEX: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Print byte strings hex-escaped from now on (etcdctl's `--hex`).
pub fn set_hex(on: bool) {
    HEX.store(on, std::sync::atomic::Ordering::Relaxed);
}

/// A key or value as the simple and table formats print it: text, or `\x..` per byte
/// with `--hex`.
pub fn bytes(b: &[u8]) -> String {
    if HEX.load(std::sync::atomic::Ordering::Relaxed) {
        b.iter().map(|x| format!("\\x{x:02x}")).collect()
    } else {
        String::from_utf8_lossy(b).into_owned()
    }
}

/// Bytes quoted as Go's `%q` quotes them (etcdctl's exec-watch environment): printable
/// characters as they are, `"` and `\\` escaped, the usual `\n`-style escapes, `\xNN` for
/// other bytes and for bytes that are not UTF-8.
pub fn go_quote(b: &[u8]) -> String {
    let mut out = String::from("\"");
    for chunk in b.utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                '\u{7}' => out.push_str("\\a"),
                '\u{8}' => out.push_str("\\b"),
                '\u{c}' => out.push_str("\\f"),
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                '\t' => out.push_str("\\t"),
                '\u{b}' => out.push_str("\\v"),
                c if (c as u32) < 0x20 || c as u32 == 0x7f => out.push_str(&format!("\\x{:02x}", c as u32)),
                c if c.is_control() => out.push_str(&format!("\\u{:04x}", c as u32)),
                c => out.push(c),
            }
        }
        for byte in chunk.invalid() {
            out.push_str(&format!("\\x{byte:02x}"));
        }
    }
    out.push('"');
    out
}

/// Print a pair the way etcdctl does: the key line, then the value line (empty with
/// `--keys-only`); only the value line with `--print-value-only`.
pub fn print_kv(kv: &KeyValue, value_only: bool) {
    if !value_only {
        println!("{}", bytes(&kv.key));
    }
    println!("{}", bytes(&kv.value));
}

pub fn print_get(r: &GetResponse, format: Format, value_only: bool, count_only: bool) {
    match format {
        Format::Json => println!("{}", get_json(r)),
        Format::Table => {
            let mut t = table(&["KEY", "VALUE", "CREATE REV", "MOD REV", "VERSION", "LEASE"]);
            for kv in &r.kvs {
                t.add_row(vec![
                    bytes(&kv.key),
                    bytes(&kv.value),
                    kv.create_revision.to_string(),
                    kv.mod_revision.to_string(),
                    kv.version.to_string(),
                    lease_hex(kv.lease),
                ]);
            }
            println!("{t}");
        }
        Format::Fields => {
            fields_header(&r.header);
            r.kvs.iter().for_each(|kv| fields_kv("", kv));
            field("More", r.more);
            field("Count", r.count);
        }
        Format::Simple if count_only => println!("{}", r.count),
        Format::Simple => r.kvs.iter().for_each(|kv| print_kv(kv, value_only)),
    }
}

pub fn print_put(r: &PutResponse, format: Format) {
    match format {
        Format::Json => println!("{}", put_json(r)),
        Format::Fields => {
            fields_header(&r.header);
            if let Some(kv) = &r.prev_kv {
                fields_kv("Prev", kv);
            }
        }
        _ => {
            println!("OK");
            if let Some(kv) = &r.prev_kv {
                print_kv(kv, false);
            }
        }
    }
}

pub fn print_del(r: &DeleteResponse, format: Format) {
    match format {
        Format::Json => println!("{}", del_json(r)),
        Format::Fields => {
            fields_header(&r.header);
            field("Deleted", r.deleted);
            r.prev_kvs.iter().for_each(|kv| fields_kv("Prev", kv));
        }
        _ => {
            println!("{}", r.deleted);
            r.prev_kvs.iter().for_each(|kv| print_kv(kv, false));
        }
    }
}

pub fn print_txn(r: &TxnResponse, format: Format) {
    if format == Format::Json {
        println!("{}", txn_json(r));
        return;
    }
    if format == Format::Fields {
        fields_header(&r.header);
        field("Succeeded", r.succeeded);
        for op in &r.responses {
            match op {
                TxnOpResponse::Get(g) => print_get(g, format, false, false),
                TxnOpResponse::Put(p) => print_put(p, format),
                TxnOpResponse::Delete(d) => print_del(d, format),
                // etcdctl 3.5 has no fields for a nested txn.
                TxnOpResponse::Txn(t) => field("Unknown", go_quote(format!("{t:?}").as_bytes())),
            }
        }
        return;
    }
    println!("{}", if r.succeeded { "SUCCESS" } else { "FAILURE" });
    for op in &r.responses {
        println!();
        match op {
            TxnOpResponse::Get(g) => print_get(g, Format::Simple, false, false),
            TxnOpResponse::Put(p) => print_put(p, Format::Simple),
            TxnOpResponse::Delete(d) => print_del(d, Format::Simple),
            TxnOpResponse::Txn(t) => print_txn(t, Format::Simple),
        }
    }
}

pub fn print_events(header: &Header, events: &[Event], format: Format) {
    if format == Format::Json {
        let evs: Vec<Value> = events.iter().map(event_json).collect();
        println!("{}", obj(vec![("Header", header_json(header)), ("Events", Value::Array(evs))]));
        return;
    }
    if format == Format::Fields {
        fields_header(header);
        for e in events {
            field("Type", if e.r#type == 1 { "DELETE" } else { "PUT" });
            if let Some(p) = &e.prev_kv {
                fields_kv("Prev", p);
            }
            fields_kv("", e.kv.as_ref().unwrap_or(&KeyValue::default()));
        }
        return;
    }
    for e in events {
        println!("{}", if e.r#type == 1 { "DELETE" } else { "PUT" });
        if let Some(p) = &e.prev_kv {
            print_kv(p, false);
        }
        if let Some(kv) = &e.kv {
            print_kv(kv, false);
        }
    }
}

pub fn table(headers: &[&str]) -> comfy_table::Table {
    let mut t = comfy_table::Table::new();
    t.load_preset(comfy_table::presets::ASCII_FULL).set_header(headers.to_vec());
    t
}

/// A lease ID as etcdctl prints it.
pub fn lease_hex(id: i64) -> String {
    format!("{:016x}", id)
}

pub fn print_members(members: &[Member], header: Option<Header>, format: Format) {
    match format {
        Format::Json => {
            let ms: Vec<Value> = members.iter().map(member_json).collect();
            println!(
                "{}",
                obj(vec![("header", header.as_ref().map_or(Value::Null, header_json)), ("members", Value::Array(ms))])
            );
        }
        Format::Table => {
            let mut t = table(&["ID", "STATUS", "NAME", "PEER ADDRS", "CLIENT ADDRS", "IS LEARNER"]);
            for m in members {
                t.add_row(member_row(m));
            }
            println!("{t}");
        }
        Format::Fields => {
            if let Some(h) = &header {
                fields_header(h);
            }
            for m in members {
                field("ID", m.id);
                field("Name", go_quote(m.name.as_bytes()));
                m.peer_ur_ls.iter().for_each(|u| field("PeerURL", go_quote(u.as_bytes())));
                m.client_ur_ls.iter().for_each(|u| field("ClientURL", go_quote(u.as_bytes())));
                field("IsLearner", m.is_learner);
                println!();
            }
        }
        Format::Simple => members.iter().for_each(|m| println!("{}", member_row(m).join(", "))),
    }
}

fn member_row(m: &Member) -> Vec<String> {
    let started = if m.name.is_empty() { "unstarted" } else { "started" };
    vec![
        format!("{:x}", m.id),
        started.into(),
        m.name.clone(),
        m.peer_ur_ls.join(","),
        m.client_ur_ls.join(","),
        m.is_learner.to_string(),
    ]
}

/// etcdctl 3.5's `fields` lines of an endpoint's status.
pub fn status_fields(endpoint: &str, s: &StatusResponse) {
    fields_header(&Header::from(s.header));
    field("Version", go_quote(s.version.as_bytes()));
    field("DBSize", s.db_size);
    field("Leader", s.leader);
    field("IsLearner", s.is_learner);
    field("RaftIndex", s.raft_index);
    field("RaftTerm", s.raft_term);
    field("RaftAppliedIndex", s.raft_applied_index);
    field("Errors", go_list(&s.errors));
    field("Endpoint", go_quote(endpoint.as_bytes()));
    println!();
}

pub fn status_row(endpoint: &str, s: &StatusResponse) -> Vec<String> {
    let id = s.header.map_or(0, |h| h.member_id);
    vec![
        endpoint.to_string(),
        format!("{id:x}"),
        s.version.clone(),
        human_bytes(s.db_size),
        (s.leader == id).to_string(),
        s.is_learner.to_string(),
        s.raft_term.to_string(),
        s.raft_index.to_string(),
        s.raft_applied_index.to_string(),
        s.errors.join(", "),
    ]
}

pub const STATUS_HEADERS: [&str; 10] = [
    "ENDPOINT",
    "ID",
    "VERSION",
    "DB SIZE",
    "IS LEADER",
    "IS LEARNER",
    "RAFT TERM",
    "RAFT INDEX",
    "RAFT APPLIED INDEX",
    "ERRORS",
];

/// Sizes as etcdctl prints them (decimal units: "20 kB").
pub fn human_bytes(n: i64) -> String {
    let units = ["B", "kB", "MB", "GB", "TB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1000.0 && u < units.len() - 1 {
        v /= 1000.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.0} {}", units[u])
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn go_quote_escapes_as_go_does() {
        assert_eq!(super::go_quote(b"a\xffb\x01\x7f"), r#""a\xffb\x01\x7f""#);
        assert_eq!(super::go_quote("\"é\"\n".as_bytes()), r#""\"é\"\n""#);
        assert_eq!(super::go_quote(b""), r#""""#);
    }
}

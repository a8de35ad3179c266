//! Entry points of the fuzz targets (`fuzz/`, run by `scripts/fuzz`) for what a member
//! decodes from the network, and the test that replays their corpus and every crash found
//! so far on each test run. Each takes arbitrary bytes and must neither panic nor hang.

use crate::gateway::frames::{FrameError, JsonFrames};
use crate::raft::{decode, TypeConfig};
use cairn_api::cairnpb::{ProposeRequest, RaftPayload};
use cairn_api::etcdserverpb::{LeaseKeepAliveRequest, TxnRequest, WatchRequest};
use prost::Message;

/// The JSON gateway's streaming input: the first byte sets the chunk size, the rest is the
/// body, framed and parsed as watch, txn and keepalive requests.
pub fn gateway_stream(data: &[u8]) {
    let Some((size, body)) = data.split_first() else { return };
    let mut frames = JsonFrames::new(64 << 10);
    for chunk in body.chunks(usize::from(*size).max(1)) {
        frames.push(chunk);
        loop {
            match frames.next_message() {
                Ok(Some(m)) => {
                    let _ = serde_json::from_slice::<WatchRequest>(&m);
                    let _ = serde_json::from_slice::<TxnRequest>(&m);
                    let _ = serde_json::from_slice::<LeaseKeepAliveRequest>(&m);
                }
                Ok(None) => break,
                Err(FrameError::TooLarge | FrameError::Malformed(_)) => return,
            }
        }
    }
}

/// The peer port's payloads: `data` as a RaftPayload and a forwarded proposal (protobuf),
/// and as each openraft message (postcard).
pub fn peer_payload(data: &[u8]) {
    if let Ok(p) = RaftPayload::decode(data) {
        let _ = decode::<openraft::raft::AppendEntriesRequest<TypeConfig>>(&p.data);
    }
    let _ = ProposeRequest::decode(data);
    let _ = decode::<openraft::raft::AppendEntriesRequest<TypeConfig>>(data);
    let _ = decode::<openraft::raft::VoteRequest<u64>>(data);
    let _ = decode::<openraft::raft::InstallSnapshotRequest<TypeConfig>>(data);
}

/// The client port's HTTP/2 read path under h2: the first byte sets the chunk size, the
/// rest follows the client preface and is mended ([`crate::authority`]) chunk by chunk.
pub fn h2_mend(data: &[u8]) {
    let Some((size, rest)) = data.split_first() else { return };
    let mut stream = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    stream.extend_from_slice(rest);
    let mut mend = crate::authority::Mend::default();
    let mut out = Vec::new();
    for chunk in stream.chunks(usize::from(*size).max(1)) {
        if mend.feed(chunk, &mut out).is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    /// Every input under `fuzz/corpus/<target>` and `fuzz/regressions/<target>`, replayed.
    #[test]
    fn the_fuzz_corpus_and_past_crashes_replay_cleanly() {
        let targets: [(&str, cairn_store::fuzz::Target); 3] = [
            ("gateway_stream", super::gateway_stream),
            ("peer_payload", super::peer_payload),
            ("h2_mend", super::h2_mend),
        ];
        for (name, run) in targets {
            let n = cairn_store::fuzz::replay(name, run);
            assert!(n >= 5, "fuzz/corpus/{name} holds {n} inputs: run scripts/fuzz to make it");
        }
    }
}

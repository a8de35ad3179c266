//! A watch response on its way to a client, with its events already encoded.
//!
//! One applied write is usually delivered to many watchers (a prefix watched by every
//! instance of a service). Encoding the event once and sharing the bytes costs one encode
//! per event instead of one clone and one encode per watcher; the response around the events
//! (header, watch id, flags) is small and still built per watcher. On the wire an
//! [`Outgoing`] is exactly a `WatchResponse`: its fields, then each event as field 11.

use bytes::{BufMut, Bytes};
use cairn_api::etcdserverpb::WatchResponse;
use cairn_api::mvccpb::Event;
use prost::encoding::{encode_key, encode_varint, encoded_len_varint, WireType};
use prost::Message;

/// `WatchResponse.events` (`repeated mvccpb.Event events = 11`).
const EVENTS_FIELD: u32 = 11;

/// A watch response: every field but the events in `head`, the events encoded.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Outgoing {
    /// The response without its events (`head.events` stays empty).
    pub head: WatchResponse,
    /// Each event, encoded as an `mvccpb.Event`.
    pub events: Vec<Bytes>,
}

impl Outgoing {
    /// A response without events (created, canceled, progress).
    pub fn control(head: WatchResponse) -> Self {
        Self { head, events: Vec::new() }
    }

    /// The encoded size of the whole response.
    pub fn encoded_len(&self) -> usize {
        self.head.encoded_len() + self.events.iter().map(event_field_len).sum::<usize>()
    }

    /// Write the response as a `WatchResponse` message.
    pub fn encode(&self, buf: &mut impl BufMut) {
        self.head.encode_raw(buf);
        for e in &self.events {
            encode_key(EVENTS_FIELD, WireType::LengthDelimited, buf);
            encode_varint(e.len() as u64, buf);
            buf.put_slice(e);
        }
    }

    /// The response as a message (for in-process readers and the JSON gateway).
    pub fn decode(self) -> Result<WatchResponse, prost::DecodeError> {
        let mut r = self.head;
        r.events = self.events.iter().map(|e| Event::decode(e.as_ref())).collect::<Result<_, _>>()?;
        Ok(r)
    }
}

/// What one encoded event adds to a response.
pub fn event_field_len(event: &Bytes) -> usize {
    1 + encoded_len_varint(event.len() as u64) + event.len()
}

/// `ev` encoded, with its previous value only if `prev_kv` (without cloning the event).
pub fn encode_event(ev: &Event, prev_kv: bool) -> Bytes {
    if prev_kv || ev.prev_kv.is_none() {
        return Bytes::from(ev.encode_to_vec());
    }
    let bare = Event { r#type: ev.r#type, kv: None, prev_kv: None };
    let mut buf = Vec::with_capacity(ev.kv.as_ref().map_or(0, |kv| kv.encoded_len() + 4) + 2);
    bare.encode_raw(&mut buf);
    if let Some(kv) = &ev.kv {
        prost::encoding::message::encode(2, kv, &mut buf);
    }
    Bytes::from(buf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_api::etcdserverpb::ResponseHeader;
    use cairn_api::mvccpb::{event::EventType, KeyValue};

    fn event(rev: i64) -> Event {
        let kv = |v: &str| KeyValue { key: b"k".to_vec(), value: v.into(), mod_revision: rev, ..Default::default() };
        Event { r#type: EventType::Delete as i32, kv: Some(kv("")), prev_kv: Some(kv("old")) }
    }

    #[test]
    fn an_outgoing_response_is_byte_for_byte_the_message_it_stands_for() {
        let head = WatchResponse {
            header: Some(ResponseHeader { revision: 9, ..Default::default() }),
            watch_id: 3,
            ..Default::default()
        };
        let evs = [event(7), event(8)];
        for prev_kv in [true, false] {
            let out = Outgoing { head: head.clone(), events: evs.iter().map(|e| encode_event(e, prev_kv)).collect() };
            let mut want = head.clone();
            want.events = evs
                .iter()
                .cloned()
                .map(|mut e| {
                    if !prev_kv {
                        e.prev_kv = None;
                    }
                    e
                })
                .collect();
            let mut buf = Vec::new();
            out.encode(&mut buf);
            assert_eq!(buf, want.encode_to_vec(), "prev_kv {prev_kv}");
            assert_eq!(out.encoded_len(), buf.len());
            assert_eq!(out.decode().expect("decodes"), want);
        }
    }
}

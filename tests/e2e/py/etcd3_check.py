# python-etcd3 (etcd3 0.12.0, PyPI) against an endpoint: KV, a prefix watch, a lease, status,
# a txn. Run by tests/e2e/proxy.rs through cairn grpc-proxy; host and port as arguments.
import sys, threading, time
import etcd3
host, port = sys.argv[1], int(sys.argv[2])
c = etcd3.client(host=host, port=port)
c.put('/py/a', 'one')
v, meta = c.get('/py/a')
assert v == b'one', v
events = []
it, cancel = c.watch_prefix('/py/')
def reader():
    for e in it:
        events.append((e.key, e.value))
        if len(events) == 2:
            break
t = threading.Thread(target=reader); t.start()
time.sleep(0.5)
c.put('/py/b', 'two'); c.put('/py/c', 'three')
t.join(10)
cancel()
assert events == [(b'/py/b', b'two'), (b'/py/c', b'three')], events
lease = c.lease(10)
c.put('/py/l', 'x', lease=lease)
lease.refresh()
assert lease.remaining_ttl > 0
status = c.status()
assert status.version
ok, _ = c.transaction(compare=[c.transactions.value('/py/a') == 'one'], success=[c.transactions.put('/py/t', 'yes')], failure=[])
assert ok
print("python-etcd3 OK", len(list(c.get_prefix('/py/'))))

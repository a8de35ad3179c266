//! Cairn's end-to-end suites live in `e2e/` (one test binary, a module per topic): real
//! `cairn` processes on loopback ports — single members and clusters, killed and
//! restarted — driven from outside by the real `etcdctl`, the JSON gateway over HTTP, TLS
//! clients and the gRPC API. `./scripts/test` runs them with every other test.

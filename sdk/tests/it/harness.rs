//! Servers to test against: `cairn` processes or `etcd` processes, started the same way.

use cairn_sdk::{Client, ConnectOptions};
use cairn_testing::{etcd_binary, Cluster};
use std::future::Future;
use std::time::Duration;

/// Which server a scenario runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Cairn,
    Etcd,
}

/// A running cluster of one kind.
pub struct Target {
    pub cluster: Cluster,
}

impl Target {
    pub async fn start(kind: Kind, members: usize) -> Target {
        let cluster = match kind {
            Kind::Cairn => Cluster::start(members, &[]).await,
            Kind::Etcd => Cluster::start_bin(&etcd_binary(), members, &["--log-level", "error"]).await,
        };
        Target { cluster }
    }

    /// Options that keep failing tests short.
    pub fn options() -> ConnectOptions {
        ConnectOptions::default()
            .with_dial_timeout(Duration::from_secs(2))
            .with_request_timeout(Some(Duration::from_secs(10)))
            .with_keep_alive(Duration::from_secs(1), Duration::from_secs(1))
            // Scenarios pick the member a client starts on.
            .with_spread(false)
    }

    /// A client given every member's endpoint, starting with member `first`.
    pub async fn client_from(&self, first: usize) -> Client {
        let m = &self.cluster.members;
        let eps: Vec<String> = (0..m.len()).map(|k| m[(first + k) % m.len()].endpoint()).collect();
        Client::connect(eps, Self::options()).await.expect("connecting the SDK")
    }

    pub async fn client(&self) -> Client {
        self.client_from(0).await
    }
}

/// Start a `members`-member cluster of `kind` and run `scenario` against it.
pub async fn run<F, Fut>(kind: Kind, members: usize, scenario: F)
where
    F: FnOnce(Target) -> Fut,
    Fut: Future<Output = ()>,
{
    let t = Target::start(kind, members).await;
    tokio::time::timeout(Duration::from_secs(90), scenario(t)).await.expect("scenario finished within 90 s");
}

/// Generate `cairn::<name>` and `etcd::<name>` tests for each scenario `name(Target)`.
#[macro_export]
macro_rules! on_both {
    ($members:literal: $($name:ident),* $(,)?) => {
        mod cairn {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                $crate::harness::run($crate::harness::Kind::Cairn, $members, super::$name).await
            })*
        }
        mod etcd {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                $crate::harness::run($crate::harness::Kind::Etcd, $members, super::$name).await
            })*
        }
    };
}

//! Who a client request comes from (a token, or a verified client certificate's common
//! name) and the handler-side permission checks, before anything is proposed.

use super::token::TokenKind;
use super::{err, Need};
use crate::error::Result;
use crate::replica::Replica;
use crate::router::Router;
use cairn_api::cairnpb::{raft_request, RaftRequest};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Who a client request comes from (resolved once per request; empty user: no
/// credentials). Requests made inside the member for a client (Lock, Election) carry
/// it as a request extension.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Identity {
    /// The user name.
    pub user: String,
    /// Auth was off when the request arrived: the handler checks nothing (a write is
    /// still checked when it applies, should auth have been turned on meanwhile).
    pub open: bool,
}

/// What a request brings to prove who it is: a token (gRPC metadata `token`, or
/// `authorization` as the gateway passes it) and the client certificate of a TLS
/// connection.
#[derive(Default, Clone)]
pub struct Credentials {
    token: Option<String>,
    certs: Option<std::sync::Arc<Vec<tonic::transport::CertificateDer<'static>>>>,
    known: Option<Identity>,
}

impl Credentials {
    /// The credentials of `req`.
    pub fn of<T>(req: &tonic::Request<T>) -> Credentials {
        let token = ["token", "authorization"]
            .iter()
            .find_map(|k| req.metadata().get(*k))
            .and_then(|v| v.to_str().ok())
            .map(|t| t.strip_prefix("Bearer ").unwrap_or(t).to_string());
        Credentials { token, certs: req.peer_certs(), known: req.extensions().get::<Identity>().cloned() }
    }
}

/// The subject common name of a DER certificate.
fn common_name(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let cn = cert.subject().iter_common_name().next()?.as_str().ok()?.to_string();
    Some(cn)
}

/// Who a request comes from and what it may do, as handlers check before acting.
pub struct AuthGate {
    replica: Arc<Replica>,
    router: Arc<Router>,
    tokens: TokenKind,
    /// Whether auth is on (the replicated flag, read without the state's lock).
    enabled: Arc<AtomicBool>,
    /// `--client-cert-auth`: a verified client certificate's common name is the user.
    client_cert_auth: bool,
}

impl AuthGate {
    /// The gate of `replica`'s auth state; tokens made and checked as `tokens` says.
    pub fn new(replica: Arc<Replica>, router: Arc<Router>, tokens: TokenKind, client_cert_auth: bool) -> AuthGate {
        let enabled = replica.with_state(|st| st.auth.enabled_flag());
        AuthGate { replica, router, tokens, enabled, client_cert_auth }
    }

    /// How tokens are made and checked.
    pub fn tokens(&self) -> &TokenKind {
        &self.tokens
    }

    /// Who `req` comes from. With auth off everyone is anonymous and nothing is checked;
    /// with auth on: the user of its token (an unknown or expired token is refused with
    /// `invalid auth token`), else with `--client-cert-auth` the common name of its
    /// verified client certificate, else nobody (`user name is empty` on any check).
    pub async fn identify<T>(&self, req: &tonic::Request<T>) -> Result<Identity> {
        self.identify_by(Credentials::of(req)).await
    }

    /// [`AuthGate::identify`] for credentials taken from a request earlier.
    pub async fn identify_by(&self, c: Credentials) -> Result<Identity> {
        if let Some(known) = c.known {
            return Ok(known);
        }
        if !self.enabled.load(Ordering::SeqCst) {
            return Ok(Identity { user: String::new(), open: true });
        }
        if let Some(token) = c.token {
            let user = match &self.tokens {
                TokenKind::Jwt(jwt) => jwt.user(&token),
                TokenKind::Simple => match self.replica.with_state(|st| st.auth.tokens.user(&token)) {
                    Some(u) => Some(u),
                    // Issued by another member a moment ago: wait until this one has
                    // applied everything committed, then look again.
                    None => {
                        self.router.read_barrier().await?;
                        self.replica.with_state(|st| st.auth.tokens.user(&token))
                    }
                },
            };
            return user.map(|user| Identity { user, open: false }).ok_or_else(err::invalid_token);
        }
        if self.client_cert_auth {
            if let Some(user) = c.certs.as_ref().and_then(|certs| certs.first()).and_then(|der| common_name(der)) {
                return Ok(Identity { user, open: false });
            }
        }
        Ok(Identity::default())
    }

    /// Check that `who` may read `[key, range_end)`.
    pub fn check_read(&self, who: &Identity, key: &[u8], range_end: &[u8]) -> Result<()> {
        if who.open {
            return Ok(());
        }
        self.replica.with_state(|st| st.auth.check(&who.user, key, range_end, Need::Read))
    }

    /// Identify `req` and check that it comes from root (maintenance and membership
    /// operations).
    pub async fn require_admin<T>(&self, req: &tonic::Request<T>) -> Result<()> {
        let who = self.identify(req).await?;
        self.check_admin(&who)
    }

    /// Check that `who` is root.
    pub fn check_admin(&self, who: &Identity) -> Result<()> {
        if who.open {
            return Ok(());
        }
        self.replica.with_state(|st| st.auth.check_admin(&who.user))
    }

    /// Check that `who` may have `req` applied, and make it a proposal in their name
    /// (the apply step checks again).
    pub fn client_request(&self, who: &Identity, req: raft_request::Request) -> Result<RaftRequest> {
        if !who.open {
            self.replica.with_state(|st| {
                let mvcc = &st.mvcc;
                st.auth.check_request(&who.user, &req, &|id| mvcc.lease_keys(id))
            })?;
        }
        Ok(RaftRequest::by(&who.user, req))
    }
}

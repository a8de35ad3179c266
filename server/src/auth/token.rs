//! Auth tokens, as etcd's `--auth-token`: `simple` (random strings every member learns
//! through Raft, dropped after `--auth-token-ttl` without use) or `jwt` (signed; any
//! member verifies them alone, they expire at their `exp`).

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use rand::distr::{Alphabetic, SampleString};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// etcd's default `--auth-token-ttl`.
pub const DEFAULT_TTL: Duration = Duration::from_secs(300);

/// This member's simple tokens: token -> (user, expiry). Every use pushes the expiry
/// out by the TTL, as etcd's.
pub struct SimpleTokens {
    tokens: Mutex<HashMap<String, (String, Instant)>>,
    ttl: Mutex<Duration>,
}

impl Default for SimpleTokens {
    fn default() -> Self {
        SimpleTokens { tokens: Mutex::new(HashMap::new()), ttl: Mutex::new(DEFAULT_TTL) }
    }
}

impl std::fmt::Debug for SimpleTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SimpleTokens({})", self.lock().len())
    }
}

impl SimpleTokens {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (String, Instant)>> {
        self.tokens.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn ttl(&self) -> Duration {
        *self.ttl.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Set how long an unused token lives.
    pub fn set_ttl(&self, ttl: Duration) {
        *self.ttl.lock().unwrap_or_else(|p| p.into_inner()) = ttl;
    }

    /// A new random token (etcd's shape: 16 letters, a dot, a number).
    pub fn generate() -> String {
        let mut rng = rand::rng();
        format!("{}.{}", Alphabetic.sample_string(&mut rng, 16), rand::random::<u32>())
    }

    /// Register `token` for `user` (dropping expired tokens on the way).
    pub fn insert(&self, token: String, user: String) {
        let now = Instant::now();
        let expiry = now + self.ttl();
        let mut t = self.lock();
        t.retain(|_, (_, e)| *e > now);
        t.insert(token, (user, expiry));
    }

    /// The user of a live `token`, whose expiry moves out by the TTL.
    pub fn user(&self, token: &str) -> Option<String> {
        let now = Instant::now();
        let ttl = self.ttl();
        let mut t = self.lock();
        match t.get_mut(token) {
            Some((user, expiry)) if *expiry > now => {
                *expiry = now + ttl;
                Some(user.clone())
            }
            Some(_) => {
                t.remove(token);
                None
            }
            None => None,
        }
    }

    /// Drop every token of `user` (deleted, or its password changed).
    pub fn remove_user(&self, user: &str) {
        self.lock().retain(|_, (u, _)| u != user);
    }

    /// Keep only the tokens of users for which `keep` holds.
    pub fn retain_users(&self, keep: impl Fn(&str) -> bool) {
        self.lock().retain(|_, (u, _)| keep(u));
    }

    /// Drop every token (auth disabled).
    pub fn clear(&self) {
        self.lock().clear();
    }
}

/// etcd's JWT claims.
#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    username: String,
    revision: u64,
    exp: u64,
}

/// Signs and verifies JWT tokens.
pub struct Jwt {
    alg: Algorithm,
    sign: Option<EncodingKey>,
    verify: DecodingKey,
    ttl: Duration,
}

impl std::fmt::Debug for Jwt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Jwt({:?}, ttl {:?}, signs: {})", self.alg, self.ttl, self.sign.is_some())
    }
}

impl Jwt {
    /// A signed token for `user` at auth `revision`.
    pub fn sign(&self, user: &str, revision: u64) -> Result<String, String> {
        let key = self.sign.as_ref().ok_or("this member has no JWT private key (priv-key)")?;
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        let claims = Claims { username: user.to_string(), revision, exp: (now + self.ttl).as_secs() };
        jsonwebtoken::encode(&Header::new(self.alg), &claims, key).map_err(|e| e.to_string())
    }

    /// The user of a valid, unexpired token signed with our key.
    pub fn user(&self, token: &str) -> Option<String> {
        let mut v = Validation::new(self.alg);
        v.leeway = 0;
        v.validate_aud = false;
        v.set_required_spec_claims(&["exp"]);
        jsonwebtoken::decode::<Claims>(token, &self.verify, &v).ok().map(|d| d.claims.username)
    }
}

/// The token kind chosen with `--auth-token`.
#[derive(Debug, Clone, Default)]
pub enum TokenKind {
    /// Random tokens known to every member through Raft.
    #[default]
    Simple,
    /// Signed JWTs.
    Jwt(std::sync::Arc<Jwt>),
}

fn read(path: &PathBuf, what: &str) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("--auth-token: cannot read {what} {}: {e}", path.display()))
}

impl TokenKind {
    /// Parse etcd's `--auth-token` value: `simple`, or
    /// `jwt,pub-key=<file>,priv-key=<file>,sign-method=<alg>[,ttl=<duration>]` (key files
    /// are read now; HS* methods take the secret from `priv-key`).
    pub fn parse(spec: &str) -> Result<TokenKind, String> {
        let mut parts = spec.split(',').map(str::trim);
        match parts.next() {
            Some("simple") if parts.next().is_none() => return Ok(TokenKind::Simple),
            Some("jwt") => {}
            _ => return Err(format!("--auth-token: {spec:?} is neither simple nor jwt,<options>")),
        }
        let (mut public, mut private, mut method, mut ttl) = (None, None, None, Duration::from_secs(300));
        for opt in parts {
            let (k, v) = opt.split_once('=').ok_or_else(|| format!("--auth-token: {opt:?} is not key=value"))?;
            match k {
                "pub-key" => public = Some(PathBuf::from(v)),
                "priv-key" => private = Some(PathBuf::from(v)),
                "sign-method" => {
                    method =
                        Some(v.parse::<Algorithm>().map_err(|_| format!("--auth-token: unknown sign-method {v:?}"))?)
                }
                "ttl" => ttl = humantime::parse_duration(v).map_err(|e| format!("--auth-token: ttl {v:?}: {e}"))?,
                other => return Err(format!("--auth-token: unknown option {other:?}")),
            }
        }
        let alg = method.ok_or("--auth-token: jwt needs sign-method")?;
        let key_err = |what: &str, e: jsonwebtoken::errors::Error| format!("--auth-token: {what} for {alg:?}: {e}");
        let (sign, verify) = if matches!(alg, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512) {
            let secret =
                read(private.as_ref().ok_or("--auth-token: HS* methods need priv-key (the secret)")?, "priv-key")?;
            (Some(EncodingKey::from_secret(&secret)), DecodingKey::from_secret(&secret))
        } else {
            let pem = read(public.as_ref().ok_or("--auth-token: jwt needs pub-key")?, "pub-key")?;
            let verify = match alg {
                Algorithm::ES256 | Algorithm::ES384 => DecodingKey::from_ec_pem(&pem),
                Algorithm::EdDSA => DecodingKey::from_ed_pem(&pem),
                _ => DecodingKey::from_rsa_pem(&pem),
            }
            .map_err(|e| key_err("pub-key", e))?;
            let sign = match &private {
                Some(p) => {
                    let pem = read(p, "priv-key")?;
                    Some(
                        match alg {
                            Algorithm::ES256 | Algorithm::ES384 => EncodingKey::from_ec_pem(&pem),
                            Algorithm::EdDSA => EncodingKey::from_ed_pem(&pem),
                            _ => EncodingKey::from_rsa_pem(&pem),
                        }
                        .map_err(|e| key_err("priv-key", e))?,
                    )
                }
                None => None,
            };
            (sign, verify)
        };
        let jwt = Jwt { alg, sign, verify, ttl };
        // A key pair that does not match is found now, not at the first login.
        if jwt.sign.is_some() {
            let probe = jwt.sign("probe", 0)?;
            if jwt.user(&probe).is_none() {
                return Err("--auth-token: priv-key and pub-key do not match".into());
            }
        }
        Ok(TokenKind::Jwt(std::sync::Arc::new(jwt)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn simple_tokens_expire_unless_used() {
        let t = SimpleTokens::default();
        t.set_ttl(Duration::from_millis(200));
        t.insert("a".into(), "alice".into());
        for _ in 0..4 {
            std::thread::sleep(Duration::from_millis(100));
            assert_eq!(t.user("a").as_deref(), Some("alice"), "each use extends the TTL");
        }
        std::thread::sleep(Duration::from_millis(250));
        assert_eq!(t.user("a"), None);
        t.insert("b".into(), "bob".into());
        t.remove_user("bob");
        assert_eq!(t.user("b"), None);
        assert_ne!(SimpleTokens::generate(), SimpleTokens::generate());
    }

    #[test]
    fn jwt_round_trip_and_forgery() {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("secret");
        std::fs::write(&secret, b"a shared secret of enough length").unwrap();
        let spec = format!("jwt,priv-key={},sign-method=HS256,ttl=1m", secret.display());
        let TokenKind::Jwt(jwt) = TokenKind::parse(&spec).unwrap() else { panic!("not jwt") };
        let token = jwt.sign("alice", 3).unwrap();
        assert_eq!(jwt.user(&token).as_deref(), Some("alice"));
        let mut forged = token.clone();
        forged.pop();
        forged.push(if token.ends_with('A') { 'B' } else { 'A' });
        assert_eq!(jwt.user(&forged), None);
        std::fs::write(&secret, b"another secret entirely, same len").unwrap();
        let TokenKind::Jwt(other) = TokenKind::parse(&spec).unwrap() else { panic!("not jwt") };
        assert_eq!(other.user(&token), None, "signed with another key");
        assert!(TokenKind::parse("jwt,sign-method=RS256").is_err());
        assert!(TokenKind::parse("bogus").is_err());
    }
}

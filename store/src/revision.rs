//! Revisions: `main` is the store-wide revision (one per write transaction), `sub`
//! orders the changes inside that transaction. On disk a revision is 16 big-endian
//! bytes, so the `Kv` table is ordered by revision.

/// A point in the store's history.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Revision {
    /// Store revision (etcd's `mod_revision` of the change).
    pub main: i64,
    /// Position of the change inside its transaction.
    pub sub: i64,
}

impl Revision {
    /// A revision from its parts.
    pub const fn new(main: i64, sub: i64) -> Self {
        Self { main, sub }
    }

    /// The 16-byte on-disk key.
    pub fn to_bytes(self) -> [u8; 16] {
        let mut b = [0u8; 16];
        b[..8].copy_from_slice(&self.main.to_be_bytes());
        b[8..].copy_from_slice(&self.sub.to_be_bytes());
        b
    }

    /// Parse a 16-byte on-disk key.
    pub fn from_bytes(b: &[u8]) -> Option<Self> {
        if b.len() != 16 {
            return None;
        }
        let main = i64::from_be_bytes(b[..8].try_into().ok()?);
        let sub = i64::from_be_bytes(b[8..].try_into().ok()?);
        Some(Self { main, sub })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_round_trip_and_order() {
        let a = Revision::new(5, 0);
        let b = Revision::new(5, 1);
        let c = Revision::new(6, 0);
        assert!(a.to_bytes() < b.to_bytes() && b.to_bytes() < c.to_bytes());
        assert_eq!(Revision::from_bytes(&b.to_bytes()), Some(b));
        assert_eq!(Revision::from_bytes(&[1, 2, 3]), None);
    }
}

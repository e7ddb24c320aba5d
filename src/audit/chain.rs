//! The audit chain, pure: each agent's records (authorizations as each write left them, transfers,
//! events) in the order they were written, each link hashing the record's content and the link
//! before it, so that changing, deleting or reordering any record breaks every link after it.
//!
//! `hash(n) = SHA-256(hash(n-1) ‖ SHA-256(content))`, and `hash(0) = SHA-256("spendgate audit
//! chain v1 " ‖ agent id)`, so no chain can pass for another agent's. The content is the record's
//! stored columns as compact JSON in the order docs/audit.md lists (`store::chain` writes it).

use sha2::{Digest as _, Sha256};

use crate::domain::audit::{Break, Problem, RecordKind};
use crate::domain::ledger::Balance;

/// A SHA-256 value.
pub type Digest = [u8; 32];

pub fn sha256(bytes: &[u8]) -> Digest {
    Sha256::digest(bytes).into()
}

/// The link before an agent's first.
pub fn genesis(agent_id: &str) -> Digest {
    sha256(format!("spendgate audit chain v1 {agent_id}").as_bytes())
}

pub fn link_hash(prev: &Digest, content_hash: &Digest) -> Digest {
    let mut h = Sha256::new();
    h.update(prev);
    h.update(content_hash);
    h.finalize().into()
}

/// The end of an agent's chain: how many links it has, and the last one's hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Head {
    pub length: i64,
    pub hash: Digest,
}

/// One appended link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Link {
    pub n: i64,
    pub content_hash: Digest,
    pub hash: Digest,
}

impl Head {
    pub fn empty(agent_id: &str) -> Head {
        Head { length: 0, hash: genesis(agent_id) }
    }

    /// The position the next link will take (records store it before their content is hashed).
    pub fn next(&self) -> i64 {
        self.length + 1
    }

    pub fn append(&mut self, content: &[u8]) -> Link {
        let content_hash = sha256(content);
        let hash = link_hash(&self.hash, &content_hash);
        *self = Head { length: self.length + 1, hash };
        Link { n: self.length, content_hash, hash }
    }
}

/// A link as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredLink {
    pub n: i64,
    pub kind: RecordKind,
    pub record_id: String,
    pub content_hash: String,
    pub hash: String,
}

/// The record a link names, as it is stored now.
pub struct Record {
    /// The link its last write made.
    pub chain_n: i64,
    pub content: Vec<u8>,
}

/// A walk along one agent's chain, link by link in order.
#[derive(Debug)]
pub struct Walk {
    agent_id: String,
    prev: Digest,
    n: i64,
    /// Records whose current content the walk checked against their last link.
    pub current: u64,
}

impl Walk {
    pub fn new(agent_id: &str) -> Walk {
        Walk { agent_id: agent_id.to_owned(), prev: genesis(agent_id), n: 0, current: 0 }
    }

    pub fn links(&self) -> i64 {
        self.n
    }

    /// Checks the next link and the record it names.
    pub fn step(&mut self, link: &StoredLink, record: Option<&Record>) -> Result<(), Break> {
        let broken = |problem, detail: String| self.broken(link.n, problem, Some(link), detail);
        if link.n != self.n + 1 {
            return Err(broken(Problem::LinkMissing, format!("link {} follows link {}", link.n, self.n)));
        }
        let content_hash = from_hex(&link.content_hash)
            .ok_or_else(|| broken(Problem::LinkAltered, "the content hash is not 64 hex digits".into()))?;
        if hex::encode(link_hash(&self.prev, &content_hash)) != link.hash {
            return Err(broken(Problem::LinkAltered, "the link's hash does not follow from the link before it".into()));
        }
        match record {
            None => return Err(broken(Problem::RecordMissing, format!("{} {} is gone", link.kind, link.record_id))),
            Some(r) if r.chain_n < link.n => {
                let detail = format!("the row is at link {}, but link {} wrote it later", r.chain_n, link.n);
                return Err(broken(Problem::RecordRolledBack, detail));
            }
            Some(r) if r.chain_n == link.n => {
                if sha256(&r.content) != content_hash {
                    let detail = format!("{} {} is not what link {} hashed", link.kind, link.record_id, link.n);
                    return Err(broken(Problem::RecordAltered, detail));
                }
                self.current += 1;
            }
            // A later write of the record: its own link checks the row.
            Some(_) => {}
        }
        self.prev = from_hex(&link.hash).expect("checked equal to a hex hash above");
        self.n = link.n;
        Ok(())
    }

    /// After the last link: the agent's row must name the same end.
    pub fn finish(&self, head_length: i64, head_hash: Option<&str>) -> Result<(), Break> {
        let walked = hex::encode(self.prev);
        let stored = head_hash.map_or_else(|| hex::encode(genesis(&self.agent_id)), str::to_owned);
        if head_length != self.n || stored != walked {
            let detail = format!("the agent's row ends the chain at link {head_length}; the links end at {}", self.n);
            return Err(self.broken(self.n.max(head_length), Problem::HeadMismatch, None, detail));
        }
        Ok(())
    }

    /// The agent's balance as its row holds it must be what its records add up to: funded the
    /// funding transfers, held, spent and refunded its authorizations' (the ledger core's invariant).
    pub fn balanced(&self, stored: &Balance, summed: &Balance) -> Result<(), Break> {
        if stored == summed {
            return Ok(());
        }
        let detail = format!("the agent's row holds {stored:?}; its records add up to {summed:?}");
        Err(self.broken(self.n, Problem::BalanceMismatch, None, detail))
    }

    /// The chain must pass through a checkpoint's head: `hash` at link `length`.
    pub fn through(&self, length: i64, hash: &str, found: Option<&StoredLink>) -> Result<(), Break> {
        match found {
            Some(link) if link.hash == hash => Ok(()),
            Some(link) => Err(self.broken(
                length,
                Problem::CheckpointMismatch,
                Some(link),
                format!(
                    "link {length} is not the one the checkpoint holds: the chain was rewritten from there or before"
                ),
            )),
            None => Err(self.broken(
                length,
                Problem::CheckpointMismatch,
                None,
                format!("the checkpoint holds link {length}, but the chain ends at {}: links were cut off", self.n),
            )),
        }
    }

    pub fn broken(&self, n: i64, problem: Problem, link: Option<&StoredLink>, detail: String) -> Break {
        Break {
            agent_id: self.agent_id.clone(),
            n,
            problem,
            record_kind: link.map(|l| l.kind),
            record_id: link.map(|l| l.record_id.clone()),
            detail,
        }
    }
}

pub fn from_hex(text: &str) -> Option<Digest> {
    let mut out = [0; 32];
    hex::decode_to_slice(text, &mut out).ok()?;
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(contents: &[&str]) -> Vec<StoredLink> {
        let mut head = Head::empty("agt_1");
        contents
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let link = head.append(c.as_bytes());
                StoredLink {
                    n: link.n,
                    kind: RecordKind::Event,
                    record_id: format!("evt_{i}"),
                    content_hash: hex::encode(link.content_hash),
                    hash: hex::encode(link.hash),
                }
            })
            .collect()
    }

    fn walk(links: &[StoredLink], records: &[(i64, &str)]) -> Result<Walk, Break> {
        let mut walk = Walk::new("agt_1");
        for (link, (n, content)) in links.iter().zip(records) {
            walk.step(link, Some(&Record { chain_n: *n, content: content.as_bytes().to_vec() }))?;
        }
        Ok(walk)
    }

    #[test]
    fn an_untouched_chain_verifies_to_its_head() {
        let links = chain(&["a", "b", "c"]);
        let w = walk(&links, &[(1, "a"), (2, "b"), (3, "c")]).unwrap();
        assert_eq!(w.current, 3);
        w.finish(3, Some(&links[2].hash)).unwrap();
        assert_eq!(w.finish(2, Some(&links[1].hash)).unwrap_err().problem, Problem::HeadMismatch);
        w.through(2, &links[1].hash, Some(&links[1])).unwrap();
    }

    /// The chain depends on the agent: the same records under another agent do not verify.
    #[test]
    fn a_chain_is_bound_to_its_agent() {
        let links = chain(&["a"]);
        let mut other = Walk::new("agt_2");
        let record = Record { chain_n: 1, content: b"a".to_vec() };
        assert_eq!(other.step(&links[0], Some(&record)).unwrap_err().problem, Problem::LinkAltered);
    }

    #[test]
    fn each_kind_of_tampering_is_named_at_its_link() {
        let links = chain(&["a", "b", "c"]);
        let e = walk(&links, &[(1, "a"), (2, "B"), (3, "c")]).unwrap_err();
        assert_eq!((e.n, e.problem, e.record_id.as_deref()), (2, Problem::RecordAltered, Some("evt_1")));

        let swapped =
            [links[0].clone(), StoredLink { n: 2, ..links[2].clone() }, StoredLink { n: 3, ..links[1].clone() }];
        let e = walk(&swapped, &[(1, "a"), (2, "c"), (3, "b")]).unwrap_err();
        assert_eq!((e.n, e.problem), (2, Problem::LinkAltered));

        let gap = [links[0].clone(), links[2].clone()];
        let e = walk(&gap, &[(1, "a"), (3, "c")]).unwrap_err();
        assert_eq!((e.n, e.problem), (3, Problem::LinkMissing));

        // The record was written again by link 3, but its row is back at link 1.
        let rewrite = chain(&["a", "b", "a2"]);
        let again = StoredLink { record_id: "evt_0".into(), ..rewrite[2].clone() };
        let e = walk(&[rewrite[0].clone(), rewrite[1].clone(), again], &[(1, "a"), (2, "b"), (1, "a")]).unwrap_err();
        assert_eq!((e.n, e.problem), (3, Problem::RecordRolledBack));

        let mut w = Walk::new("agt_1");
        assert_eq!(w.step(&links[0], None).unwrap_err().problem, Problem::RecordMissing);

        let w = walk(&links[..2], &[(1, "a"), (2, "b")]).unwrap();
        let e = w.through(3, &links[2].hash, None).unwrap_err();
        assert_eq!((e.n, e.problem), (3, Problem::CheckpointMismatch));
    }

    #[test]
    fn a_balance_is_held_to_its_records() {
        let w = Walk::new("agt_1");
        let summed = Balance { funded: 10_000, refunded: 0, held: 2_500, spent: 1_000 };
        w.balanced(&summed, &summed).unwrap();
        let inflated = Balance { funded: 1_000_000, ..summed };
        assert_eq!(w.balanced(&inflated, &summed).unwrap_err().problem, Problem::BalanceMismatch);
    }

    /// An earlier write of a record that was written again is not checked against the row.
    #[test]
    fn a_superseded_write_is_passed_over() {
        let links = chain(&["v1", "v2"]);
        let both_one_record: Vec<_> = links
            .iter()
            .map(|l| StoredLink { record_id: "auth_1".into(), kind: RecordKind::Authorization, ..l.clone() })
            .collect();
        let w = walk(&both_one_record, &[(2, "v2"), (2, "v2")]).unwrap();
        assert_eq!(w.current, 1);
    }

    /// Known answer: the first link of agent `agt_1` over the content `{}`.
    #[test]
    fn the_hashes_are_the_documented_ones() {
        let mut head = Head::empty("agt_1");
        let link = head.append(b"{}");
        // printf 'spendgate audit chain v1 agt_1' | sha256sum; printf '{}' | sha256sum
        assert_eq!(hex::encode(genesis("agt_1")), hex::encode(sha256(b"spendgate audit chain v1 agt_1")));
        assert_eq!(hex::encode(link.content_hash), "44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a");
        let mut both = genesis("agt_1").to_vec();
        both.extend(link.content_hash);
        assert_eq!(link.hash, sha256(&both));
    }
}

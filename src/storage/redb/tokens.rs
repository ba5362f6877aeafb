//! Tokens in the file, laid out so that this release and the release before
//! named tokens work on one file at once, in both directions (a start-first
//! rolling update and a rollback both run the two on it under
//! `multi-writer`).
//!
//! - `tokens_v1` (digest → version-1 record: principal, creation) is the
//!   presence set, read and written by both releases exactly as the earlier
//!   one always did: a token is valid only while its digest is there, and in
//!   this release also only while its metadata admits it
//!   ([`token_admits`]). Every token this release makes is written there too.
//! - `token_meta_v2` (digest → version-2 record: name, expiry, last use,
//!   rotation) is this release's own.
//! - `token_names_v1` (principal → one digest) is kept for the earlier
//!   release's `create` (refused while a principal is listed) and `revoke`
//!   (deletes the listed token): see [`sync_names`].
//!
//! Reading both tables gives each token one of these states:
//! - in `tokens_v1` with metadata: a token of this release;
//! - in `tokens_v1` without metadata (or with metadata of another principal):
//!   made by the earlier release (also while this one runs), *legacy*: named
//!   `default`, or `default-<digest prefix>` when the principal already has
//!   that name, and without expiry; the next token write stores metadata for
//!   it, which fixes its name;
//! - metadata marked swept, without `tokens_v1`: an expired token whose
//!   digest the sweep took out of `tokens_v1` (so the earlier release
//!   refuses it too); still listed, as expired, until revoked;
//! - metadata not marked swept, without `tokens_v1`: revoked by the earlier
//!   release (whether or not it has expired since); not valid, not listed,
//!   and deleted by the next token write.
//!
//! Every token write ends with [`reconcile`], which brings the tables to that
//! model: metadata for legacy tokens, stale metadata deleted, expired tokens
//! out of `tokens_v1`, `token_names_v1` in sync. The writer also runs it on a
//! timer ([`crate::storage::TOKEN_SWEEP_INTERVAL`]) and at a graceful stop.
//! Tokens are few, so each operation reads them all.

use std::collections::{BTreeMap, HashMap, HashSet};

use chrono::{DateTime, Utc};
use redb::{ReadTransaction, ReadableTable, WriteTransaction};

use super::tables::{TOKEN_META, TOKEN_NAMES_V1, TOKENS_V1};
use crate::domain::{PrincipalName, TokenDigest, TokenName};
use crate::storage::codec::{decode_token_meta, decode_token_v1, encode_token, encode_token_v1};
use crate::storage::tokens::token_admits;
use crate::storage::{NewToken, StorageError, StoreResult, TokenInfo, retire};

/// A table of tokens by digest, open for reading or writing.
pub(super) trait DigestTable: ReadableTable<&'static [u8], &'static [u8]> {}
impl<T: ReadableTable<&'static [u8], &'static [u8]>> DigestTable for T {}

/// One token as the two tables hold it.
#[derive(Debug, Clone)]
pub(super) struct Entry {
    pub(super) info: TokenInfo,
    /// Its digest is in `tokens_v1`.
    live: bool,
    /// It has metadata; else it is legacy and `info.name` was derived.
    adopted: bool,
}

impl Entry {
    /// Whether it admits requests at `now`.
    fn valid(&self, now: DateTime<Utc>) -> bool {
        self.live && token_admits(&self.info, now)
    }
}

/// Every token in the two tables.
#[derive(Debug, Default)]
pub(super) struct Loaded {
    pub(super) entries: Vec<Entry>,
    /// Records that could not be read (already reported), for exports.
    pub(super) unreadable: Vec<StorageError>,
    /// Digests in `tokens_v1` whose token could not be read: left alone.
    unreadable_digests: HashSet<Vec<u8>>,
    /// Metadata of tokens revoked by the earlier release (or unreadable
    /// metadata of no token): deleted by the next write.
    stale: Vec<Vec<u8>>,
}

/// Reads both tables.
pub(super) fn load(v1: &impl DigestTable, meta: &impl DigestTable) -> StoreResult<Loaded> {
    let mut out = Loaded::default();
    let mut metas: HashMap<Vec<u8>, StoreResult<(TokenInfo, bool)>> = HashMap::new();
    for e in meta.iter()? {
        let (k, v) = e?;
        let d = k.value();
        metas.insert(
            d.to_vec(),
            decode_token_meta(meta_key_name(d), d, v.value()),
        );
    }
    let mut legacy = Vec::new();
    for e in v1.iter()? {
        let (k, v) = e?;
        let d = k.value();
        let meta = metas.remove(d);
        let bare = match decode_token_v1(v1_key_name(d), d, v.value()) {
            Ok(t) => t,
            Err(e) => {
                out.unreadable.push(e);
                out.unreadable_digests.insert(d.to_vec());
                continue;
            }
        };
        match meta {
            Some(Ok((m, _))) if m.principal == bare.principal => out.entries.push(Entry {
                info: m,
                live: true,
                adopted: true,
            }),
            // Its expiry is unknown: not admitted, and left for an operator.
            Some(Err(e)) => {
                out.unreadable.push(e);
                out.unreadable_digests.insert(d.to_vec());
            }
            // Metadata of another principal cannot belong to this token
            // (digests do not collide): the adoption overwrites it.
            Some(Ok(_)) | None => legacy.push(bare),
        }
    }
    for (d, m) in metas {
        match m {
            Ok((m, true)) => out.entries.push(Entry {
                info: m,
                live: false,
                adopted: true,
            }),
            _ => out.stale.push(d),
        }
    }
    name_legacy(&mut out, legacy);
    Ok(out)
}

/// Names the legacy tokens: per principal, oldest first, the first name no
/// other token of the principal has among `default`, `default-` and 8, 16,
/// …, 56 hex digits of the digest (deterministic, and free in practice).
fn name_legacy(out: &mut Loaded, mut legacy: Vec<TokenInfo>) {
    let mut taken: HashSet<(PrincipalName, TokenName)> = out
        .entries
        .iter()
        .map(|e| (e.info.principal.clone(), e.info.name.clone()))
        .collect();
    legacy.sort_by_key(|t| (t.created_at, t.digest));
    for mut t in legacy {
        let candidates =
            std::iter::once(TokenName::default_name()).chain((4..=28).step_by(4).filter_map(|n| {
                TokenName::parse(&format!("default-{}", hex::encode(&t.digest[..n]))).ok()
            }));
        let free = candidates
            .into_iter()
            .find(|n| !taken.contains(&(t.principal.clone(), n.clone())));
        let Some(name) = free else {
            let d = t.digest;
            out.unreadable.push(StorageError::corrupt(
                "token",
                v1_key_name(&d),
                "no free name for a token without metadata",
            ));
            out.unreadable_digests.insert(d.to_vec());
            continue;
        };
        taken.insert((t.principal.clone(), name.clone()));
        t.name = name;
        out.entries.push(Entry {
            info: t,
            live: true,
            adopted: false,
        });
    }
}

/// The write side of the three tables, in one transaction.
pub(super) struct Tables<'t> {
    v1: redb::Table<'t, &'static [u8], &'static [u8]>,
    names: redb::Table<'t, &'static str, &'static [u8]>,
    meta: redb::Table<'t, &'static [u8], &'static [u8]>,
}

impl<'t> Tables<'t> {
    pub(super) fn open(txn: &'t WriteTransaction) -> StoreResult<Self> {
        Ok(Self {
            v1: txn.open_table(TOKENS_V1)?,
            names: txn.open_table(TOKEN_NAMES_V1)?,
            meta: txn.open_table(TOKEN_META)?,
        })
    }

    pub(super) fn load(&self) -> StoreResult<Loaded> {
        load(&self.v1, &self.meta)
    }

    pub(super) fn is_empty(&self) -> StoreResult<bool> {
        use redb::ReadableTableMetadata;
        Ok(self.v1.is_empty()? && self.meta.is_empty()?)
    }

    fn digest_taken(&self, d: &TokenDigest) -> StoreResult<bool> {
        Ok(self.v1.get(d.as_slice())?.is_some() || self.meta.get(d.as_slice())?.is_some())
    }

    /// Stores `t` in both tables (a new, imported or rotated-in token).
    pub(super) fn insert(&mut self, t: &TokenInfo) -> StoreResult<()> {
        self.v1
            .insert(t.digest.as_slice(), encode_token_v1(t).as_slice())?;
        self.meta
            .insert(t.digest.as_slice(), encode_token(t, false).as_slice())?;
        Ok(())
    }

    /// Writes the metadata of `e`, marked swept if it is not in `tokens_v1`.
    fn put_meta(&mut self, e: &Entry) -> StoreResult<()> {
        self.meta.insert(
            e.info.digest.as_slice(),
            encode_token(&e.info, !e.live).as_slice(),
        )?;
        Ok(())
    }

    fn remove(&mut self, d: &TokenDigest) -> StoreResult<()> {
        self.v1.remove(d.as_slice())?;
        self.meta.remove(d.as_slice())?;
        Ok(())
    }

    /// Brings the tables to the model of the module documentation and
    /// returns how many tokens it took out of `tokens_v1` (expired) or
    /// deleted (stale metadata).
    pub(super) fn reconcile(&mut self, now: DateTime<Utc>) -> StoreResult<u64> {
        let mut st = self.load()?;
        let mut changed = 0;
        for d in &st.stale {
            self.meta.remove(d.as_slice())?;
            changed += 1;
        }
        for e in &mut st.entries {
            let mut write = !e.adopted;
            if e.live && !token_admits(&e.info, now) {
                self.v1.remove(e.info.digest.as_slice())?;
                e.live = false;
                write = true;
                changed += 1;
            }
            if write {
                self.put_meta(e)?;
                e.adopted = true;
            }
        }
        sync_names(&mut self.names, &st, now)?;
        Ok(changed)
    }
}

/// Keeps `token_names_v1` as the earlier release needs it: each principal
/// with a valid token maps to one of them (its current token named
/// `default`, else its oldest current token, else its oldest token in a
/// rotation's grace), so that release's `token create` refuses the
/// principal and its `token revoke` deletes a real token (that one); a
/// principal without valid tokens is not listed. An entry that points at an
/// unreadable record stays, so the earlier release can still revoke it.
fn sync_names(
    names: &mut redb::Table<'_, &'static str, &'static [u8]>,
    st: &Loaded,
    now: DateTime<Utc>,
) -> StoreResult<()> {
    let mut pick: BTreeMap<&str, &TokenInfo> = BTreeMap::new();
    let rank = |t: &TokenInfo| {
        (
            !t.is_current(),
            t.name.as_str() != TokenName::DEFAULT,
            t.created_at,
            t.digest,
        )
    };
    for e in st.entries.iter().filter(|e| e.valid(now)) {
        let slot = pick.entry(e.info.principal.as_str()).or_insert(&e.info);
        if rank(&e.info) < rank(slot) {
            *slot = &e.info;
        }
    }
    let mut existing = Vec::new();
    for e in names.iter()? {
        let (k, v) = e?;
        existing.push((k.value().to_owned(), v.value().to_vec()));
    }
    for (p, d) in &existing {
        match pick.get(p.as_str()) {
            Some(t) if t.digest.as_slice() == d.as_slice() => {}
            Some(t) => {
                names.insert(p.as_str(), t.digest.as_slice())?;
            }
            None if st.unreadable_digests.contains(d) => {}
            None => {
                names.remove(p.as_str())?;
            }
        }
    }
    for (p, t) in &pick {
        if !existing.iter().any(|(e, _)| e == p) {
            names.insert(*p, t.digest.as_slice())?;
        }
    }
    Ok(())
}

pub(super) fn create_token(
    txn: &WriteTransaction,
    new: &NewToken,
    now: DateTime<Utc>,
) -> StoreResult<TokenInfo> {
    let mut t = Tables::open(txn)?;
    let st = t.load()?;
    if st.entries.iter().any(|e| {
        e.info.principal == new.principal && e.info.name == new.name && e.info.is_current()
    }) {
        return Err(StorageError::AlreadyExists(format!(
            "a token `{}` for `{}`",
            new.name, new.principal
        )));
    }
    if t.digest_taken(&new.digest)? {
        return Err(StorageError::AlreadyExists(
            "a token with this digest".into(),
        ));
    }
    let info = TokenInfo::new(new, now);
    t.insert(&info)?;
    t.reconcile(now)?;
    Ok(info)
}

pub(super) fn rotate_token(
    txn: &WriteTransaction,
    new: &NewToken,
    grace: std::time::Duration,
    now: DateTime<Utc>,
) -> StoreResult<TokenInfo> {
    let mut t = Tables::open(txn)?;
    let st = t.load()?;
    let mut old = st
        .entries
        .into_iter()
        .find(|e| {
            e.info.principal == new.principal && e.info.name == new.name && e.info.is_current()
        })
        .ok_or(StorageError::NotFound)?;
    if t.digest_taken(&new.digest)? {
        return Err(StorageError::AlreadyExists(
            "a token with this digest".into(),
        ));
    }
    old.info.expires_at = Some(retire(old.info.expires_at, now, grace));
    old.info.replaced_at = Some(now);
    let info = TokenInfo::new(new, now);
    t.put_meta(&old)?;
    t.insert(&info)?;
    t.reconcile(now)?;
    Ok(info)
}

/// Removes every token of `principal` named `name` from both tables.
pub(super) fn revoke_token(
    txn: &WriteTransaction,
    principal: &PrincipalName,
    name: &TokenName,
    now: DateTime<Utc>,
) -> StoreResult<u64> {
    let mut t = Tables::open(txn)?;
    let st = t.load()?;
    let doomed: Vec<TokenDigest> = st
        .entries
        .iter()
        .filter(|e| e.info.principal == *principal && e.info.name == *name)
        .map(|e| e.info.digest)
        .collect();
    if doomed.is_empty() {
        return Err(StorageError::NotFound);
    }
    for d in &doomed {
        t.remove(d)?;
    }
    t.reconcile(now)?;
    Ok(doomed.len() as u64)
}

/// Writes last-use times later than the stored ones, for tokens that exist.
pub(super) fn write_token_uses(
    txn: &WriteTransaction,
    uses: &[(TokenDigest, DateTime<Utc>)],
    now: DateTime<Utc>,
) -> StoreResult<()> {
    let mut t = Tables::open(txn)?;
    let st = t.load()?;
    let by_digest: HashMap<TokenDigest, &Entry> =
        st.entries.iter().map(|e| (e.info.digest, e)).collect();
    for (digest, at) in uses {
        let Some(e) = by_digest.get(digest) else {
            continue;
        };
        if e.info.last_used_at.is_none_or(|l| l < *at) {
            let mut e = (*e).clone();
            e.info.last_used_at = Some(*at);
            t.put_meta(&e)?;
        }
    }
    t.reconcile(now)?;
    Ok(())
}

/// The token sweep: [`Tables::reconcile`] on its own.
pub(super) fn sweep_tokens(txn: &WriteTransaction, now: DateTime<Utc>) -> StoreResult<u64> {
    Tables::open(txn)?.reconcile(now)
}

/// Every token as listed (see the module documentation); unreadable ones
/// are left out.
pub(super) fn tokens(txn: &ReadTransaction) -> StoreResult<Vec<TokenInfo>> {
    let v1 = txn.open_table(TOKENS_V1)?;
    let meta = txn.open_table(TOKEN_META)?;
    Ok(load(&v1, &meta)?
        .entries
        .into_iter()
        .map(|e| e.info)
        .collect())
}

/// The token with this digest as listed, whether or not it admits requests:
/// `None` for no token, and for one the earlier release revoked.
pub(super) fn token(txn: &ReadTransaction, digest: &TokenDigest) -> StoreResult<Option<TokenInfo>> {
    let v1 = txn.open_table(TOKENS_V1)?;
    let meta = txn.open_table(TOKEN_META)?;
    let d = digest.as_slice();
    let m = meta
        .get(d)?
        .map(|v| decode_token_meta(meta_key_name(d), d, v.value()));
    let Some(bare) = v1.get(d)? else {
        return Ok(match m {
            Some(Ok((m, true))) => Some(m),
            _ => None,
        });
    };
    let bare = decode_token_v1(v1_key_name(d), d, bare.value())?;
    match m {
        Some(Ok((m, _))) if m.principal == bare.principal => Ok(Some(m)),
        Some(Err(e)) => Err(e),
        // Legacy: its name depends on the principal's other tokens.
        Some(Ok(_)) | None => {
            let st = load(&v1, &meta)?;
            Ok(st
                .entries
                .into_iter()
                .find(|e| e.info.digest == *digest)
                .map(|e| e.info))
        }
    }
}

/// How a `tokens_v1` record is named in reports: table and hex digest.
fn v1_key_name(digest: &[u8]) -> String {
    format!(
        "{}/{}",
        redb::TableHandle::name(&TOKENS_V1),
        hex::encode(digest)
    )
}

/// How a `token_meta_v2` record is named in reports.
fn meta_key_name(digest: &[u8]) -> String {
    format!(
        "{}/{}",
        redb::TableHandle::name(&TOKEN_META),
        hex::encode(digest)
    )
}

//! Block volumes in the state machine: creation, leases with fencing epochs, journal
//! entries and extent swaps. Pure like `apply`.
//!
//! Architecture Invariant: a journal append or an extent swap applies only under the
//! volume's current lease epoch, so a server that lost its lease (a second host, a stale
//! process coming back) can never change a volume.

use lauscha_core::volume::{
    DEFAULT_EXTENT_BYTES, Extent, JournalEntry, Lease, Volume, VolumeCommand, VolumeReply,
    VolumeState, check_name, check_size,
};
use lauscha_core::{ObjectData, Stripe, TenantId};
use serde::Serialize;

use crate::apply::{collect_stripes, read};
use crate::command::MetaError;
use crate::keys::{self, HolderKind};
use crate::kv::{KvError, KvRead, Mutation};
use crate::value;

type Outcome<T> = Result<Result<T, MetaError>, KvError>;

fn put<T: Serialize>(out: &mut Vec<Mutation>, key: Vec<u8>, v: &T) {
    out.push(Mutation::Put(key, value::encode(v)));
}

fn stripes(data: &Option<ObjectData>) -> &[Stripe] {
    data.as_ref().map_or(&[], ObjectData::stripes)
}

/// Reference counts of volume stripes (a snapshot or clone shares its source's stripes),
/// changed by one command: the deltas are summed first, because a command's own writes
/// are not visible to its reads. A stripe whose count reaches zero becomes garbage.
#[derive(Default)]
struct StripeRefs {
    deltas: std::collections::BTreeMap<lauscha_core::StripeId, (i64, Stripe)>,
    holders: Vec<Mutation>,
}

impl StripeRefs {
    /// The record (`volume`, `kind`, `n`) starts (+1) or stops (-1) referencing `data`.
    fn add(&mut self, data: &Option<ObjectData>, delta: i64, holder: (&str, HolderKind, u64)) {
        for s in stripes(data) {
            self.deltas.entry(s.id).or_insert((0, s.clone())).0 += delta;
            let key = keys::volume_stripe_holder(s.id, holder.0, holder.1, holder.2);
            self.holders.push(if delta > 0 {
                Mutation::Put(key, Vec::new())
            } else {
                Mutation::Delete(key)
            });
        }
    }

    /// Writes the summed counts and the holders. Refuses (changing nothing) a command
    /// that would reference a stripe again after its count reached zero: it waits in a
    /// garbage record and its shards are deleted when that record comes due, whatever
    /// references it then. Only a command built on a stale view sends one (a merge
    /// adopting stripes that a `Rewrite` whose answer was lost had already replaced).
    fn finish(
        self,
        kv: &impl KvRead,
        out: &mut Vec<Mutation>,
        origin: String,
        now_ms: u64,
        log_index: u64,
    ) -> Outcome<()> {
        let mut garbage = Vec::new();
        let mut counts = Vec::new();
        for (id, (delta, stripe)) in self.deltas {
            if delta == 0 {
                continue;
            }
            let key = keys::volume_stripe(id);
            let before = read::<u32>(kv, &key)?;
            if before.is_none() && delta > 0 && kv.get(&keys::garbage_stripe(id))?.is_some() {
                return Ok(Err(MetaError::Conflict(format!(
                    "stripe {id} is no longer referenced and waits for deletion as garbage"
                ))));
            }
            let count = i64::from(before.unwrap_or(0)) + delta;
            if count <= 0 {
                counts.push(Mutation::Delete(key));
                garbage.push(stripe);
            } else {
                counts.push(Mutation::Put(key, value::encode(&(count as u32))));
            }
        }
        out.extend(self.holders);
        out.extend(counts);
        collect_stripes(out, garbage, origin, now_ms, log_index);
        Ok(Ok(()))
    }
}

/// Copies every extent and journal entry of `from` into `to` (sharing their stripes).
fn copy_contents(out: &mut Vec<Mutation>, refs: &mut StripeRefs, from: &VolumeState, to: &str) {
    for (idx, extent) in &from.extents {
        refs.add(
            &Some(extent.data.clone()),
            1,
            (to, HolderKind::Extent, *idx),
        );
        put(out, keys::volume_extent(to, *idx), extent);
    }
    for (seq, entry) in &from.journal {
        refs.add(&entry.data, 1, (to, HolderKind::Journal, *seq));
        put(out, keys::volume_journal(to, *seq), entry);
    }
    for (seq, at) in &from.slices {
        put(out, keys::volume_journal_slice(to, *seq), at);
    }
    for seq in &from.settled {
        put(out, keys::volume_journal_settled(to, *seq), &());
    }
}

fn owned(kv: &impl KvRead, name: &str, tenant: &TenantId) -> Outcome<Volume> {
    Ok(match read::<Volume>(kv, &keys::volume(name))? {
        Some(v) if v.tenant == *tenant => Ok(v),
        Some(_) => Err(MetaError::AccessDenied(format!("volume {name}"))),
        None => Err(MetaError::NoSuchVolume(name.to_string())),
    })
}

/// The volume, if `epoch` holds its lease and it is not a snapshot: what a journal append
/// needs.
fn writable(kv: &impl KvRead, name: &str, epoch: u64) -> Outcome<Volume> {
    Ok(fenced(kv, name, epoch)?.and_then(|v| {
        if v.read_only {
            Err(MetaError::InvalidArgument(format!(
                "{name} is a snapshot: read-only"
            )))
        } else {
            Ok(v)
        }
    }))
}

fn fenced(kv: &impl KvRead, name: &str, epoch: u64) -> Outcome<Volume> {
    let Some(v) = read::<Volume>(kv, &keys::volume(name))? else {
        return Ok(Err(MetaError::NoSuchVolume(name.to_string())));
    };
    if v.lease.as_ref().map(|l| l.epoch) != Some(epoch) {
        return Ok(Err(MetaError::Fenced(format!(
            "volume {name}: epoch {epoch} is not the current lease (epoch {})",
            v.epoch
        ))));
    }
    Ok(Ok(v))
}

/// The extents and journal entries of a volume.
pub fn state(kv: &impl KvRead, name: &str) -> Result<Option<VolumeState>, KvError> {
    let Some(volume) = read::<Volume>(kv, &keys::volume(name))? else {
        return Ok(None);
    };
    let mut extents = Vec::new();
    let mut journal = Vec::new();
    let mut error = None;
    let prefix = keys::volume_extents_prefix(name);
    let end = keys::prefix_end(&prefix).expect("NUL in prefix");
    kv.scan(&prefix, &end, &mut |k, v| {
        match (keys::trailing_u64(k), value::decode::<Extent>(v)) {
            (Some(idx), Ok(e)) => extents.push((idx, e)),
            _ => error = Some(KvError(format!("bad extent entry {k:?}"))),
        }
        error.is_none()
    })?;
    let prefix = keys::volume_journal_prefix(name);
    let end = keys::prefix_end(&prefix).expect("NUL in prefix");
    kv.scan(&prefix, &end, &mut |k, v| {
        match (keys::trailing_u64(k), value::decode::<JournalEntry>(v)) {
            (Some(seq), Ok(e)) => journal.push((seq, e)),
            _ => error = Some(KvError(format!("bad journal entry {k:?}"))),
        }
        error.is_none()
    })?;
    let mut slices = Vec::new();
    let prefix = keys::volume_journal_slices_prefix(name);
    let end = keys::prefix_end(&prefix).expect("NUL in prefix");
    kv.scan(&prefix, &end, &mut |k, v| {
        match (keys::trailing_u64(k), value::decode::<u64>(v)) {
            (Some(seq), Ok(at)) => slices.push((seq, at)),
            _ => error = Some(KvError(format!("bad journal slice entry {k:?}"))),
        }
        error.is_none()
    })?;
    let mut settled = Vec::new();
    let prefix = keys::volume_journal_settled_prefix(name);
    let end = keys::prefix_end(&prefix).expect("NUL in prefix");
    kv.scan(&prefix, &end, &mut |k, _| {
        match keys::trailing_u64(k) {
            Some(seq) => settled.push(seq),
            None => error = Some(KvError(format!("bad settled mark {k:?}"))),
        }
        error.is_none()
    })?;
    if let Some(e) = error {
        return Err(e);
    }
    Ok(Some(VolumeState {
        volume,
        extents,
        journal,
        slices,
        settled,
    }))
}

/// The volumes of a tenant (`None`: of every tenant).
pub fn list(kv: &impl KvRead, tenant: Option<&TenantId>) -> Result<Vec<Volume>, KvError> {
    let (start, end) = keys::table_range(keys::Table::Volume);
    let mut out = Vec::new();
    let mut error = None;
    kv.scan(&start, &end, &mut |k, v| {
        match value::decode::<Volume>(v) {
            Ok(vol) if tenant.is_none_or(|t| vol.tenant == *t) => out.push(vol),
            Ok(_) => {}
            Err(_) => error = Some(KvError(format!("bad volume entry {k:?}"))),
        }
        error.is_none()
    })?;
    match error {
        Some(e) => Err(e),
        None => Ok(out),
    }
}

/// A volume stripe as maintenance sees it: a label, the stripe, its policy (extents and
/// most journal stripes: the volume's policy; journal stripes written while it could not
/// be placed: three copies over nodes).
pub fn maintained_stripe(
    kv: &impl KvRead,
    id: lauscha_core::StripeId,
) -> Result<Option<(String, Stripe, lauscha_core::PlacementPolicy)>, KvError> {
    let prefix = keys::volume_stripe_holders_prefix(id);
    let end = keys::prefix_end(&prefix).expect("stripe id prefix");
    let mut holder = None;
    kv.scan(&prefix, &end, &mut |k, _| {
        holder = keys::parse_volume_stripe_holder(k);
        false
    })?;
    let Some((name, kind, n)) = holder else {
        return Ok(None);
    };
    let Some(volume) = read::<Volume>(kv, &keys::volume(&name))? else {
        return Ok(None);
    };
    let (data, policy) = match kind {
        HolderKind::Extent => (
            read::<Extent>(kv, &keys::volume_extent(&name, n))?.map(|e| e.data),
            volume.policy,
        ),
        HolderKind::Journal => {
            let data =
                read::<JournalEntry>(kv, &keys::volume_journal(&name, n))?.and_then(|e| e.data);
            // A journal entry is at the volume's policy, or three copies where that could
            // not be written (nodes down).
            let at_volume_policy = matches!(
                &data,
                Some(ObjectData::Striped { n_data_shards, n_parity_shards, .. })
                    if (*n_data_shards, *n_parity_shards)
                        == (volume.policy.n_data_shards, volume.policy.n_parity_shards)
            );
            let policy = if at_volume_policy {
                volume.policy
            } else {
                lauscha_core::volume::JOURNAL_COPIES_POLICY
            };
            (data, policy)
        }
    };
    let stripe = stripes(&data).iter().find(|s| s.id == id).cloned();
    Ok(stripe.map(|s| {
        let label = match kind {
            HolderKind::Extent => format!("volume {name} extent {n}"),
            HolderKind::Journal => format!("volume {name} journal {n}"),
        };
        (label, s, policy)
    }))
}

/// Applies `edit` to the stripe `id` in every record that references it (a shard moved).
pub fn edit_stripe(
    kv: &impl KvRead,
    out: &mut Vec<Mutation>,
    id: lauscha_core::StripeId,
    edit: &dyn Fn(&mut ObjectData) -> Outcome<()>,
) -> Outcome<()> {
    let prefix = keys::volume_stripe_holders_prefix(id);
    let end = keys::prefix_end(&prefix).expect("stripe id prefix");
    let mut holders = Vec::new();
    kv.scan(&prefix, &end, &mut |k, _| {
        if let Some(h) = keys::parse_volume_stripe_holder(k) {
            holders.push(h);
        }
        true
    })?;
    if holders.is_empty() {
        return Ok(Err(MetaError::Conflict(format!(
            "stripe {id} is no longer part of a volume"
        ))));
    }
    for (name, kind, n) in holders {
        match kind {
            HolderKind::Extent => {
                let key = keys::volume_extent(&name, n);
                let Some(mut extent) = read::<Extent>(kv, &key)? else {
                    return Err(KvError(format!(
                        "holder index names missing extent {name}/{n}"
                    )));
                };
                if let Err(e) = edit(&mut extent.data)? {
                    return Ok(Err(e));
                }
                put(out, key, &extent);
            }
            HolderKind::Journal => {
                let key = keys::volume_journal(&name, n);
                let Some(mut entry) = read::<JournalEntry>(kv, &key)? else {
                    return Err(KvError(format!(
                        "holder index names missing journal {name}/{n}"
                    )));
                };
                let Some(data) = entry.data.as_mut() else {
                    return Err(KvError(format!(
                        "holder index names a zero entry {name}/{n}"
                    )));
                };
                if let Err(e) = edit(data)? {
                    return Ok(Err(e));
                }
                put(out, key, &entry);
            }
        }
    }
    Ok(Ok(()))
}

/// Checks a journal write of `len` bytes at `offset`: inside the volume, and inside one
/// extent (merging an extent then drops exactly its entries).
fn check_entry(volume: &Volume, offset: u64, len: u64) -> Result<(), MetaError> {
    let end = offset.checked_add(len);
    let ext = volume.extent_bytes;
    let one_extent = len > 0 && end.is_some_and(|end| offset / ext == (end - 1) / ext);
    if end.is_none_or(|e| e > volume.size_bytes) || !one_extent {
        return Err(MetaError::InvalidArgument(format!(
            "journal entry {offset}+{len}: outside volume {} or across extents",
            volume.name
        )));
    }
    Ok(())
}

fn same_epoch(entry: u64, command: u64) -> Result<(), MetaError> {
    if entry != command {
        return Err(MetaError::InvalidArgument(format!(
            "journal entry of epoch {entry} in a command of epoch {command}"
        )));
    }
    Ok(())
}

/// The epoch a volume starts at (its first lease gets the next): the index of the log entry
/// that creates it. Epochs rise by one per lease command, each in a later log entry, so
/// every epoch of a volume is below the creation index of any later volume of the same
/// name: a server fenced out of a deleted volume (its lease lapsed, the volume deleted
/// and made again) can never hold an epoch of the new one. Starting every volume at 0,
/// its first lease got epoch 1 again, and that server's renewals, appends and merges
/// under epoch 1 were taken by the new volume.
fn first_epoch(log_index: u64) -> u64 {
    log_index
}

/// The bytes of `data`'s stripes together; `None` if that overflows (never from a
/// gateway; refused rather than summed wrong, or panicking in a debug build).
/// Refuses bytes for a journal entry of `len` bytes that are not exactly `len` bytes long:
/// a read of the entry would run off their end, or serve bytes past it. (A slice of a
/// batch is checked against its batch instead.)
fn check_entry_data(name: &str, len: u64, data: &ObjectData) -> Result<(), MetaError> {
    let data_len = match data {
        ObjectData::Inline(bytes) => Some(bytes.len() as u64),
        ObjectData::Striped { .. } => stripes_len(data),
    };
    if data_len != Some(len) {
        return Err(MetaError::InvalidArgument(format!(
            "volume {name}: a journal entry of {len} bytes with {} bytes of data",
            data_len.map_or_else(|| "overflowing".to_string(), |n| n.to_string())
        )));
    }
    Ok(())
}

fn stripes_len(data: &ObjectData) -> Option<u64> {
    data.stripes()
        .iter()
        .try_fold(0u64, |sum, s| sum.checked_add(s.len_bytes))
}

/// The longest lease a holder may ask for (ms). Gateways ask for 10 s and renew; a lease
/// of years (or one whose end overflows) would keep every other host from attaching, and
/// the volume from being deleted, for good.
pub const MAX_LEASE_TTL_MS: u64 = 300_000;

/// When a lease asked for at `now_ms` for `ttl_ms` ends.
fn lease_expiry(name: &str, now_ms: u64, ttl_ms: u64) -> Result<u64, MetaError> {
    if ttl_ms == 0 || ttl_ms > MAX_LEASE_TTL_MS {
        return Err(MetaError::InvalidArgument(format!(
            "volume {name}: a lease of {ttl_ms} ms (1 to {MAX_LEASE_TTL_MS} ms)"
        )));
    }
    Ok(now_ms.saturating_add(ttl_ms))
}

/// Applies a volume command.
pub fn apply_volume_command(
    kv: &impl KvRead,
    out: &mut Vec<Mutation>,
    command: &VolumeCommand,
    now_ms: u64,
    log_index: u64,
) -> Outcome<VolumeReply> {
    match command {
        VolumeCommand::Create {
            name,
            tenant,
            size_bytes,
            policy,
        } => {
            if let Err(e) = check_name(name).and_then(|()| check_size(*size_bytes)) {
                return Ok(Err(MetaError::InvalidArgument(e)));
            }
            if kv.get(&keys::tenant(tenant))?.is_none() {
                return Ok(Err(MetaError::NoSuchTenant(tenant.to_string())));
            }
            if kv.get(&keys::volume(name))?.is_some() {
                return Ok(Err(MetaError::VolumeExists(name.clone())));
            }
            put(
                out,
                keys::volume(name),
                &Volume {
                    name: name.clone(),
                    tenant: tenant.clone(),
                    size_bytes: *size_bytes,
                    extent_bytes: DEFAULT_EXTENT_BYTES,
                    policy: *policy,
                    created_ms: now_ms,
                    epoch: first_epoch(log_index),
                    lease: None,
                    next_seq: 1,
                    read_only: false,
                },
            );
            Ok(Ok(VolumeReply::Done))
        }
        VolumeCommand::Snapshot {
            name,
            tenant,
            snapshot,
        }
        | VolumeCommand::Clone {
            name,
            tenant,
            snapshot,
        } => {
            let is_snapshot = matches!(command, VolumeCommand::Snapshot { .. });
            let (from, to) = if is_snapshot {
                (name.clone(), format!("{name}@{snapshot}"))
            } else {
                (snapshot.clone(), name.clone())
            };
            if is_snapshot {
                if let Err(e) = check_name(snapshot) {
                    return Ok(Err(MetaError::InvalidArgument(e)));
                }
            } else if let Err(e) = check_name(&to) {
                return Ok(Err(MetaError::InvalidArgument(e)));
            }
            let source = match owned(kv, &from, tenant)? {
                Ok(v) => v,
                Err(e) => return Ok(Err(e)),
            };
            if !is_snapshot && !source.read_only {
                return Ok(Err(MetaError::InvalidArgument(format!(
                    "{from} is a volume, not a snapshot: clone a snapshot (VOLUME@SNAPSHOT)"
                ))));
            }
            if kv.get(&keys::volume(&to))?.is_some() {
                return Ok(Err(MetaError::VolumeExists(to)));
            }
            // The source's extents and journal as of this log entry: a crash-consistent
            // copy of every acknowledged write, made instantly by sharing stripes.
            let contents = state(kv, &from)?.expect("source exists");
            let mut refs = StripeRefs::default();
            copy_contents(out, &mut refs, &contents, &to);
            if let Err(e) = refs.finish(kv, out, format!("volume {to}"), now_ms, log_index)? {
                return Ok(Err(e));
            }
            put(
                out,
                keys::volume(&to),
                &Volume {
                    name: to.clone(),
                    tenant: source.tenant.clone(),
                    size_bytes: source.size_bytes,
                    extent_bytes: source.extent_bytes,
                    policy: source.policy,
                    created_ms: now_ms,
                    epoch: first_epoch(log_index),
                    lease: None,
                    next_seq: source.next_seq,
                    read_only: is_snapshot,
                },
            );
            Ok(Ok(VolumeReply::Done))
        }
        VolumeCommand::Delete { name, tenant } => {
            let volume = match owned(kv, name, tenant)? {
                Ok(v) => v,
                Err(e) => return Ok(Err(e)),
            };
            if volume.lease.as_ref().is_some_and(|l| l.expires_ms > now_ms) {
                return Ok(Err(MetaError::Conflict(format!(
                    "volume {name} is attached (lease epoch {}); detach it first",
                    volume.epoch
                ))));
            }
            let state = state(kv, name)?.expect("volume exists");
            let mut refs = StripeRefs::default();
            for (idx, extent) in &state.extents {
                out.push(Mutation::Delete(keys::volume_extent(name, *idx)));
                refs.add(
                    &Some(extent.data.clone()),
                    -1,
                    (name, HolderKind::Extent, *idx),
                );
            }
            for (seq, entry) in &state.journal {
                out.push(Mutation::Delete(keys::volume_journal(name, *seq)));
                refs.add(&entry.data, -1, (name, HolderKind::Journal, *seq));
            }
            for (seq, _) in &state.slices {
                out.push(Mutation::Delete(keys::volume_journal_slice(name, *seq)));
            }
            for seq in &state.settled {
                out.push(Mutation::Delete(keys::volume_journal_settled(name, *seq)));
            }
            // Stripes a snapshot or clone still shares stay; the rest become garbage.
            if let Err(e) = refs.finish(kv, out, format!("volume {name}"), now_ms, log_index)? {
                return Ok(Err(e));
            }
            out.push(Mutation::Delete(keys::volume(name)));
            Ok(Ok(VolumeReply::Done))
        }
        VolumeCommand::Resize {
            name,
            tenant,
            size_bytes,
        } => {
            let mut volume = match owned(kv, name, tenant)? {
                Ok(v) => v,
                Err(e) => return Ok(Err(e)),
            };
            if let Err(e) = check_size(*size_bytes) {
                return Ok(Err(MetaError::InvalidArgument(e)));
            }
            if volume.read_only {
                return Ok(Err(MetaError::InvalidArgument(format!(
                    "{name} is a snapshot: read-only (clone it to get a volume that can grow)"
                ))));
            }
            if *size_bytes < volume.size_bytes {
                return Ok(Err(MetaError::InvalidArgument(format!(
                    "volume {name} has {} bytes; volumes only grow (shrinking would cut data off)",
                    volume.size_bytes
                ))));
            }
            volume.size_bytes = *size_bytes;
            put(out, keys::volume(name), &volume);
            Ok(Ok(VolumeReply::Done))
        }
        VolumeCommand::Acquire {
            name,
            tenant,
            holder,
            ttl_ms,
        } => {
            let expires_ms = match lease_expiry(name, now_ms, *ttl_ms) {
                Ok(at) => at,
                Err(e) => return Ok(Err(e)),
            };
            let mut volume = match owned(kv, name, tenant)? {
                Ok(v) => v,
                Err(e) => return Ok(Err(e)),
            };
            // Snapshots are served without a lease: nothing may write them.
            if volume.read_only {
                return Ok(Err(MetaError::InvalidArgument(format!(
                    "{name} is a snapshot: read-only, it takes no lease"
                ))));
            }
            if let Some(l) = &volume.lease
                && l.expires_ms > now_ms
                && l.holder != *holder
            {
                return Ok(Err(MetaError::Conflict(format!(
                    "volume {name} is attached by {} until its lease lapses",
                    l.holder
                ))));
            }
            volume.epoch += 1;
            volume.lease = Some(Lease {
                holder: holder.clone(),
                epoch: volume.epoch,
                expires_ms,
            });
            let epoch = volume.epoch;
            put(out, keys::volume(name), &volume);
            Ok(Ok(VolumeReply::Leased { epoch }))
        }
        VolumeCommand::Renew {
            name,
            epoch,
            ttl_ms,
        } => {
            let expires_ms = match lease_expiry(name, now_ms, *ttl_ms) {
                Ok(at) => at,
                Err(e) => return Ok(Err(e)),
            };
            let mut volume = match fenced(kv, name, *epoch)? {
                Ok(v) => v,
                Err(e) => return Ok(Err(e)),
            };
            if let Some(l) = &mut volume.lease {
                l.expires_ms = expires_ms;
            }
            put(out, keys::volume(name), &volume);
            Ok(Ok(VolumeReply::Done))
        }
        VolumeCommand::NewEpoch {
            name,
            epoch,
            ttl_ms,
        } => {
            let expires_ms = match lease_expiry(name, now_ms, *ttl_ms) {
                Ok(at) => at,
                Err(e) => return Ok(Err(e)),
            };
            let mut volume = match fenced(kv, name, *epoch)? {
                Ok(v) => v,
                Err(e) => return Ok(Err(e)),
            };
            volume.epoch += 1;
            let epoch = volume.epoch;
            if let Some(l) = &mut volume.lease {
                l.epoch = epoch;
                l.expires_ms = expires_ms;
            }
            put(out, keys::volume(name), &volume);
            Ok(Ok(VolumeReply::Leased { epoch }))
        }
        VolumeCommand::Release { name, epoch } => {
            let mut volume = match fenced(kv, name, *epoch)? {
                Ok(v) => v,
                Err(e) => return Ok(Err(e)),
            };
            volume.lease = None;
            put(out, keys::volume(name), &volume);
            Ok(Ok(VolumeReply::Done))
        }
        VolumeCommand::Append {
            name,
            epoch,
            entries,
        }
        | VolumeCommand::AppendSettled {
            name,
            epoch,
            entries,
        } => {
            let settled = matches!(command, VolumeCommand::AppendSettled { .. });
            let mut volume = match writable(kv, name, *epoch)? {
                Ok(v) => v,
                Err(e) => return Ok(Err(e)),
            };
            let first_seq = volume.next_seq;
            let mut refs = StripeRefs::default();
            for entry in entries {
                if let Err(e) = check_entry(&volume, entry.offset, entry.len)
                    .and_then(|()| same_epoch(entry.epoch, *epoch))
                    .and_then(|()| match &entry.data {
                        Some(data) => check_entry_data(name, entry.len, data),
                        None => Ok(()),
                    })
                {
                    return Ok(Err(e));
                }
                refs.add(&entry.data, 1, (name, HolderKind::Journal, volume.next_seq));
                put(out, keys::volume_journal(name, volume.next_seq), entry);
                if settled && matches!(entry.data, Some(ObjectData::Striped { .. })) {
                    put(
                        out,
                        keys::volume_journal_settled(name, volume.next_seq),
                        &(),
                    );
                }
                volume.next_seq += 1;
            }
            if let Err(e) = refs.finish(kv, out, format!("volume {name}"), now_ms, log_index)? {
                return Ok(Err(e));
            }
            put(out, keys::volume(name), &volume);
            Ok(Ok(VolumeReply::Appended { first_seq }))
        }
        VolumeCommand::Rewrite {
            name,
            epoch,
            seq,
            data,
        } => {
            if let Err(e) = writable(kv, name, *epoch)? {
                return Ok(Err(e));
            }
            let key = keys::volume_journal(name, *seq);
            let Some(mut entry) = read::<JournalEntry>(kv, &key)? else {
                return Ok(Err(MetaError::Conflict(format!(
                    "volume {name}: journal entry {seq} is gone (merged meanwhile)"
                ))));
            };
            if let Err(e) = check_entry_data(name, entry.len, data) {
                return Ok(Err(e));
            }
            let old = entry.data.replace(data.clone());
            if old.is_none() {
                return Ok(Err(MetaError::InvalidArgument(format!(
                    "volume {name}: journal entry {seq} holds zeros, not bytes"
                ))));
            }
            let mut refs = StripeRefs::default();
            refs.add(&old, -1, (name, HolderKind::Journal, *seq));
            refs.add(&entry.data, 1, (name, HolderKind::Journal, *seq));
            put(out, key, &entry);
            // Its bytes are the whole new data now, not a slice of a batch, and settled.
            out.push(Mutation::Delete(keys::volume_journal_slice(name, *seq)));
            put(out, keys::volume_journal_settled(name, *seq), &());
            if let Err(e) = refs.finish(
                kv,
                out,
                format!("volume {name} journal {seq}"),
                now_ms,
                log_index,
            )? {
                return Ok(Err(e));
            }
            Ok(Ok(VolumeReply::Done))
        }
        VolumeCommand::AppendBatch {
            name,
            epoch,
            data,
            writes,
        }
        | VolumeCommand::AppendSettledBatch {
            name,
            epoch,
            data,
            writes,
        } => {
            let settled = matches!(command, VolumeCommand::AppendSettledBatch { .. });
            let mut volume = match writable(kv, name, *epoch)? {
                Ok(v) => v,
                Err(e) => return Ok(Err(e)),
            };
            let Some(batch_len) = stripes_len(data) else {
                return Ok(Err(MetaError::InvalidArgument(format!(
                    "volume {name}: a batch's stripe lengths overflow"
                ))));
            };
            if !matches!(data, ObjectData::Striped { .. }) || writes.is_empty() {
                return Ok(Err(MetaError::InvalidArgument(format!(
                    "volume {name}: a batch is stripes with at least one write"
                ))));
            }
            let first_seq = volume.next_seq;
            let mut refs = StripeRefs::default();
            for w in writes {
                if let Err(e) = check_entry(&volume, w.offset, w.len) {
                    return Ok(Err(e));
                }
                if w.at.checked_add(w.len).is_none_or(|end| end > batch_len) {
                    return Ok(Err(MetaError::InvalidArgument(format!(
                        "volume {name}: batched write {}+{} at {} is outside its {batch_len}-byte batch",
                        w.offset, w.len, w.at
                    ))));
                }
                let seq = volume.next_seq;
                let entry = JournalEntry {
                    epoch: *epoch,
                    offset: w.offset,
                    len: w.len,
                    data: Some(data.clone()),
                };
                refs.add(&entry.data, 1, (name, HolderKind::Journal, seq));
                put(out, keys::volume_journal(name, seq), &entry);
                put(out, keys::volume_journal_slice(name, seq), &w.at);
                if settled {
                    put(out, keys::volume_journal_settled(name, seq), &());
                }
                volume.next_seq += 1;
            }
            if let Err(e) = refs.finish(kv, out, format!("volume {name}"), now_ms, log_index)? {
                return Ok(Err(e));
            }
            put(out, keys::volume(name), &volume);
            Ok(Ok(VolumeReply::Appended { first_seq }))
        }
        VolumeCommand::Spill {
            name,
            epoch,
            data,
            entries,
        } => {
            if let Err(e) = writable(kv, name, *epoch)? {
                return Ok(Err(e));
            }
            let Some(spill_len) = stripes_len(data) else {
                return Ok(Err(MetaError::InvalidArgument(format!(
                    "volume {name}: a spill's stripe lengths overflow"
                ))));
            };
            if !matches!(data, ObjectData::Striped { .. }) || entries.is_empty() {
                return Ok(Err(MetaError::InvalidArgument(format!(
                    "volume {name}: a spill is stripes with at least one entry"
                ))));
            }
            let mut refs = StripeRefs::default();
            let mut seen = std::collections::HashSet::new();
            for e in entries {
                let seq = e.seq;
                let key = keys::volume_journal(name, seq);
                // Gone or no longer inline: the holder's view of the journal is not
                // metadata's (a merge or spill whose answer it lost).
                let Some(mut entry) = read::<JournalEntry>(kv, &key)? else {
                    return Ok(Err(MetaError::Conflict(format!(
                        "volume {name}: journal entry {seq} is gone"
                    ))));
                };
                if !seen.insert(seq) || !matches!(entry.data, Some(ObjectData::Inline(_))) {
                    return Ok(Err(MetaError::Conflict(format!(
                        "volume {name}: journal entry {seq} is not inline (spilled already?)"
                    ))));
                }
                if e.at
                    .checked_add(entry.len)
                    .is_none_or(|end| end > spill_len)
                {
                    return Ok(Err(MetaError::InvalidArgument(format!(
                        "volume {name}: journal entry {seq} ({} bytes) at {} is outside its \
                         {spill_len}-byte spill",
                        entry.len, e.at
                    ))));
                }
                entry.data = Some(data.clone());
                refs.add(&entry.data, 1, (name, HolderKind::Journal, seq));
                put(out, key, &entry);
                put(out, keys::volume_journal_slice(name, seq), &e.at);
                // Committed only with every shard durable.
                put(out, keys::volume_journal_settled(name, seq), &());
            }
            if let Err(e) =
                refs.finish(kv, out, format!("volume {name} spill"), now_ms, log_index)?
            {
                return Ok(Err(e));
            }
            Ok(Ok(VolumeReply::Done))
        }
        VolumeCommand::Merge {
            name,
            epoch,
            extent,
            data,
            merged,
        } => {
            let volume = match writable(kv, name, *epoch)? {
                Ok(v) => v,
                Err(e) => return Ok(Err(e)),
            };
            // Each entry once: its stripes' references are dropped once per listing.
            let mut listed = std::collections::HashSet::new();
            if let Some(seq) = merged.iter().find(|seq| !listed.insert(**seq)) {
                return Ok(Err(MetaError::InvalidArgument(format!(
                    "volume {name}: a merge lists journal entry {seq} twice"
                ))));
            }
            // Bytes past the end would be read after the volume grows.
            if data.is_some()
                && extent
                    .checked_mul(volume.extent_bytes)
                    .is_none_or(|start| start >= volume.size_bytes)
            {
                return Ok(Err(MetaError::InvalidArgument(format!(
                    "volume {name}: extent {extent} is past its end ({} bytes)",
                    volume.size_bytes
                ))));
            }
            let mut refs = StripeRefs::default();
            // Stripes of the merged entries as metadata has them now: repair and drain
            // move shards (`edit_stripe`) without the writer knowing.
            let mut current: std::collections::HashMap<lauscha_core::StripeId, Stripe> =
                Default::default();
            let mut sliced = std::collections::HashSet::new();
            for seq in merged {
                let Some(entry) = read::<JournalEntry>(kv, &keys::volume_journal(name, *seq))?
                else {
                    return Ok(Err(MetaError::Conflict(format!(
                        "volume {name}: journal entry {seq} is gone"
                    ))));
                };
                if entry.offset / volume.extent_bytes != *extent {
                    return Ok(Err(MetaError::InvalidArgument(format!(
                        "volume {name}: journal entry {seq} is not in extent {extent}"
                    ))));
                }
                let is_slice = kv.get(&keys::volume_journal_slice(name, *seq))?.is_some();
                for s in stripes(&entry.data) {
                    if is_slice {
                        sliced.insert(s.id);
                    }
                    current.insert(s.id, s.clone());
                }
                refs.add(&entry.data, -1, (name, HolderKind::Journal, *seq));
                out.push(Mutation::Delete(keys::volume_journal(name, *seq)));
                out.push(Mutation::Delete(keys::volume_journal_slice(name, *seq)));
                out.push(Mutation::Delete(keys::volume_journal_settled(name, *seq)));
            }
            // A merge may adopt an entry's own stripes as the extent, never a batch (whose
            // stripes hold other entries' bytes too); adopted ones are taken as they are now.
            let mut data = data.clone();
            if let Some(ObjectData::Striped { stripes: new, .. }) = &mut data {
                for s in new.iter_mut() {
                    if sliced.contains(&s.id) {
                        return Ok(Err(MetaError::InvalidArgument(format!(
                            "volume {name}: extent {extent} cannot adopt batch stripe {}",
                            s.id
                        ))));
                    }
                    if let Some(now) = current.get(&s.id) {
                        *s = now.clone();
                    }
                }
            }
            let data = &data;
            let key = keys::volume_extent(name, *extent);
            if let Some(old) = read::<Extent>(kv, &key)? {
                refs.add(&Some(old.data), -1, (name, HolderKind::Extent, *extent));
            }
            refs.add(data, 1, (name, HolderKind::Extent, *extent));
            match data {
                Some(d) => put(out, key, &Extent { data: d.clone() }),
                None => out.push(Mutation::Delete(key)),
            }
            if let Err(e) = refs.finish(
                kv,
                out,
                format!("volume {name} extent {extent}"),
                now_ms,
                log_index,
            )? {
                return Ok(Err(e));
            }
            Ok(Ok(VolumeReply::Done))
        }
    }
}

//! Lifecycle rules, run by the maintenance worker: expiration of current versions, of
//! noncurrent versions, removal of delete markers that hide nothing, and aborting old
//! multipart uploads.
//!
//! The plan for one key is pure ([`plan_key`]); every action it leads to is a
//! compare-and-set in the state machine (the current version must still be the one
//! planned on; a locked version is refused there), so a stale plan or two gateways
//! running lifecycle at once never remove more than the rules say.

use lauscha_core::versioning::{LifecycleRule, VersionEntry, VersionView};

/// What lifecycle does to one version.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LifecycleAction {
    /// Expire the current object (a delete marker in a versioned bucket, removal
    /// otherwise), if it is still this internal version id.
    ExpireCurrent {
        /// The key.
        key: String,
        /// Its current version's internal id.
        if_current: String,
    },
    /// Remove this version (a noncurrent object, or a lone delete marker) for good.
    RemoveVersion {
        /// The key.
        key: String,
        /// The version (S3 form).
        version_id: String,
    },
}

/// The actions the enabled `rules` call for on one key, given its versions newest first
/// (as ListObjectVersions returns them). A version became noncurrent when its successor
/// was written: that is the time `noncurrent_days` count from.
pub fn plan_key(
    rules: &[LifecycleRule],
    versions: &[VersionView],
    now_ms: u64,
    day_ms: u64,
) -> Vec<LifecycleAction> {
    let Some(first) = versions.first() else {
        return Vec::new();
    };
    let key = &first.key;
    let applicable: Vec<&LifecycleRule> = rules
        .iter()
        .filter(|r| r.enabled && key.starts_with(&r.prefix))
        .collect();
    if applicable.is_empty() {
        return Vec::new();
    }
    let older_than = |written_ms: u64, days: Option<u32>| {
        days.is_some_and(|d| written_ms.saturating_add(u64::from(d) * day_ms) <= now_ms)
    };
    let mut actions = Vec::new();
    for (i, v) in versions.iter().enumerate() {
        match (&v.entry, v.is_latest) {
            (VersionEntry::Object(o), true) => {
                if applicable
                    .iter()
                    .any(|r| older_than(o.last_modified_ms, r.expiration_days))
                {
                    actions.push(LifecycleAction::ExpireCurrent {
                        key: key.clone(),
                        if_current: o.version_id.clone(),
                    });
                }
            }
            (VersionEntry::Object(_), false) => {
                let became_noncurrent_ms = versions[..i]
                    .last()
                    .map_or(0, |newer| newer.entry.last_modified_ms());
                if applicable
                    .iter()
                    .any(|r| older_than(became_noncurrent_ms, r.noncurrent_days))
                {
                    actions.push(LifecycleAction::RemoveVersion {
                        key: key.clone(),
                        version_id: v.s3_version_id.clone(),
                    });
                }
            }
            (VersionEntry::DeleteMarker { .. }, true) => {
                // A marker that hides nothing any more.
                if versions.len() == 1 && applicable.iter().any(|r| r.expired_object_delete_marker)
                {
                    actions.push(LifecycleAction::RemoveVersion {
                        key: key.clone(),
                        version_id: v.s3_version_id.clone(),
                    });
                }
            }
            (VersionEntry::DeleteMarker { .. }, false) => {}
        }
    }
    actions
}

#[cfg(test)]
mod tests {
    use super::*;
    use lauscha_core::{ObjectData, ObjectVersion};

    const DAY: u64 = 1000;

    fn object(key: &str, id: &str, written_ms: u64, latest: bool) -> VersionView {
        VersionView {
            key: key.into(),
            s3_version_id: id.into(),
            is_latest: latest,
            entry: VersionEntry::Object(ObjectVersion {
                version_id: id.into(),
                size_bytes: 0,
                etag: String::new(),
                last_modified_ms: written_ms,
                content_type: None,
                headers: Default::default(),
                user_metadata: Default::default(),
                checksums: Default::default(),
                data: ObjectData::Inline(Vec::new()),
            }),
        }
    }

    fn marker(key: &str, id: &str, written_ms: u64, latest: bool) -> VersionView {
        VersionView {
            key: key.into(),
            s3_version_id: id.into(),
            is_latest: latest,
            entry: VersionEntry::DeleteMarker {
                version_id: id.into(),
                last_modified_ms: written_ms,
            },
        }
    }

    fn rule(prefix: &str) -> LifecycleRule {
        LifecycleRule {
            enabled: true,
            prefix: prefix.into(),
            ..Default::default()
        }
    }

    #[test]
    fn current_versions_expire_after_their_days_and_only_under_the_prefix() {
        let rules = [LifecycleRule {
            expiration_days: Some(2),
            ..rule("logs/")
        }];
        let old = [object("logs/a", "v1", 0, true)];
        assert_eq!(
            plan_key(&rules, &old, 2 * DAY, DAY),
            vec![LifecycleAction::ExpireCurrent {
                key: "logs/a".into(),
                if_current: "v1".into()
            }]
        );
        assert!(plan_key(&rules, &old, 2 * DAY - 1, DAY).is_empty());
        assert!(plan_key(&rules, &[object("data/a", "v1", 0, true)], 9 * DAY, DAY).is_empty());
        let disabled = [LifecycleRule {
            enabled: false,
            ..rules[0].clone()
        }];
        assert!(plan_key(&disabled, &old, 9 * DAY, DAY).is_empty());
    }

    #[test]
    fn noncurrent_days_count_from_the_successor_and_lone_markers_go() {
        let rules = [LifecycleRule {
            noncurrent_days: Some(1),
            expired_object_delete_marker: true,
            ..rule("")
        }];
        // v1 written at 0, replaced by v2 at 5 days, marker at 10 days.
        let versions = [
            marker("k", "m", 10 * DAY, true),
            object("k", "v2", 5 * DAY, false),
            object("k", "v1", 0, false),
        ];
        // At 10.5 days v1 (noncurrent since 5) goes, v2 (since 10) stays, the marker
        // still hides v2.
        assert_eq!(
            plan_key(&rules, &versions, 10 * DAY + DAY / 2, DAY),
            vec![LifecycleAction::RemoveVersion {
                key: "k".into(),
                version_id: "v1".into()
            }]
        );
        // At 11 days both go; the marker goes on a later pass, once it is alone.
        let later = plan_key(&rules, &versions, 11 * DAY, DAY);
        assert_eq!(later.len(), 2);
        assert_eq!(
            plan_key(&rules, &[marker("k", "m", 10 * DAY, true)], 11 * DAY, DAY),
            vec![LifecycleAction::RemoveVersion {
                key: "k".into(),
                version_id: "m".into()
            }]
        );
    }
}

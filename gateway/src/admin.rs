//! The admin API: JSON over HTTP, signed with an administrator key (see
//! `lauscha_core::admin_auth`). The CLI and a web console use it; each later feature
//! (tenants, keys, nodes, volumes) adds its routes here.

use bytes::Bytes;
use http::request::Parts;
use http::{Method, Response, StatusCode};
use http_body_util::Full;
use lauscha_core::AccessKeyId;
use lauscha_core::admin_auth;
use serde::Serialize;
use tracing::warn;

use std::sync::atomic::Ordering;

use lauscha_core::{NodeId, NodeState};

use crate::gateway::Inner;
use crate::http::full;
use crate::maintenance::Maintenance;
use crate::s3::now_ms;

/// An error as JSON: `{"error": "..."}`.
pub fn json_error(status: StatusCode, message: &str) -> Response<Full<Bytes>> {
    full(
        status,
        "application/json",
        serde_json::json!({ "error": message }).to_string(),
    )
}

fn json<T: Serialize>(value: &T) -> Response<Full<Bytes>> {
    match serde_json::to_vec_pretty(value) {
        Ok(body) => full(StatusCode::OK, "application/json", body),
        Err(e) => json_error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    }
}

/// Checks the request's signature and that its key is an administrator's.
async fn authorize(inner: &Inner, parts: &Parts, body: &[u8]) -> Result<(), Response<Full<Bytes>>> {
    let unauthorized = |m: &str| json_error(StatusCode::UNAUTHORIZED, m);
    let authorization = parts
        .headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| {
            unauthorized("missing Authorization header; the lauscha CLI signs requests")
        })?;
    let date: u64 = parts
        .headers
        .get(admin_auth::DATE_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| unauthorized("missing or invalid x-lauscha-date header"))?;
    let key_id = admin_auth::key_id(authorization)
        .ok_or_else(|| unauthorized("malformed Authorization header"))?;
    let key = inner
        .access_key(&AccessKeyId(key_id.to_string()))
        .await
        .map_err(|_| unauthorized("unknown access key"))?;
    let path_and_query = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    if !admin_auth::verify(
        authorization,
        &key.secret,
        parts.method.as_str(),
        path_and_query,
        date,
        now_ms() / 1000,
        body,
    ) {
        return Err(unauthorized(
            "signature does not match (or the clock differs by more than 5 minutes)",
        ));
    }
    if !key.is_admin {
        return Err(json_error(
            StatusCode::FORBIDDEN,
            "this key is not an administrator key",
        ));
    }
    Ok(())
}

/// Cluster status as the CLI prints it.
#[derive(Serialize)]
pub struct ClusterStatus {
    /// Every configured metadata voter.
    pub metadata: Vec<VoterStatus>,
    /// Every storage node in the map.
    pub nodes: Vec<NodeStatus>,
}

/// One metadata voter as it reports itself.
#[derive(Serialize)]
pub struct VoterStatus {
    /// The endpoint asked.
    pub endpoint: String,
    /// Whether it answered.
    pub reachable: bool,
    /// Its id.
    pub node_id: Option<u64>,
    /// Leader, follower, candidate, learner.
    pub state: Option<String>,
    /// The leader it knows.
    pub leader_id: Option<u64>,
    /// Current term.
    pub term: Option<u64>,
    /// Last log index it has.
    pub last_log_index: Option<u64>,
    /// Last applied log index.
    pub last_applied_index: Option<u64>,
    /// Members of the membership it knows.
    pub members: Vec<MemberStatus>,
    /// Log appends (fsyncs) since its start.
    pub n_log_appends: Option<u64>,
    /// Entries those appends wrote.
    pub n_log_entries: Option<u64>,
    /// Last index of its current snapshot.
    pub snapshot_index: Option<u64>,
    /// Last purged log index.
    pub purged_index: Option<u64>,
}

/// A member of the metadata group.
#[derive(Serialize)]
pub struct MemberStatus {
    /// Raft node id.
    pub node_id: u64,
    /// Address.
    pub addr: String,
    /// Voter (else learner).
    pub voter: bool,
    /// Matched log index, as the leader sees it.
    pub matched_index: Option<u64>,
}

impl VoterStatus {
    /// From a status reply (or its absence).
    pub(crate) fn from_reply(
        endpoint: &str,
        reply: Option<lauscha_proto::meta::StatusReply>,
    ) -> VoterStatus {
        match reply {
            None => VoterStatus {
                endpoint: endpoint.to_string(),
                reachable: false,
                node_id: None,
                state: None,
                leader_id: None,
                term: None,
                last_log_index: None,
                last_applied_index: None,
                members: Vec::new(),
                n_log_appends: None,
                n_log_entries: None,
                snapshot_index: None,
                purged_index: None,
            },
            Some(s) => VoterStatus {
                endpoint: endpoint.to_string(),
                reachable: true,
                node_id: Some(s.node_id),
                state: Some(s.state),
                leader_id: s.leader_id,
                term: Some(s.term),
                last_log_index: Some(s.last_log_index),
                last_applied_index: Some(s.last_applied_index),
                members: s
                    .members
                    .into_iter()
                    .map(|m| MemberStatus {
                        node_id: m.node_id,
                        addr: m.addr,
                        voter: m.voter,
                        matched_index: m.matched_index,
                    })
                    .collect(),
                n_log_appends: Some(s.n_log_appends),
                n_log_entries: Some(s.n_log_entries),
                snapshot_index: s.snapshot_index,
                purged_index: s.purged_index,
            },
        }
    }
}

/// One storage node.
#[derive(Serialize)]
pub struct NodeStatus {
    /// Free bytes on its filesystem, if it answered.
    pub free_bytes: Option<u64>,
    /// Shards its scrubber verified since start.
    pub n_scrubbed: Option<u64>,
    /// Full scrub passes since start.
    pub n_scrub_passes: Option<u64>,
    /// Corrupt shards its scrubber (or a reader) found, and unreadable ones its scrubber
    /// moved out of service, since start.
    pub n_corrupt_found: Option<u64>,
    /// Scrubber checks that failed with an error since start (a shard that keeps
    /// failing counts once a pass): a failing disk.
    pub n_scrub_errors: Option<u64>,
    /// The most recent of those, as `stripe.shard`.
    pub recent_corrupt: Vec<String>,
    /// Node id.
    pub id: u32,
    /// Site.
    pub site: String,
    /// Host.
    pub host: String,
    /// gRPC address.
    pub addr: String,
    /// State in the map.
    pub state: String,
    /// Placement weight.
    pub capacity_bytes: u64,
    /// Whether it answered just now.
    pub reachable: bool,
    /// Shards held, if it answered.
    pub n_shards: Option<u64>,
    /// Bytes used, if it answered.
    pub used_bytes: Option<u64>,
}

async fn status(inner: &Inner) -> Result<ClusterStatus, String> {
    let metadata = inner.meta.voter_status().await;
    let map = inner
        .nodes
        .current_cluster_map()
        .await
        .map_err(|e| e.to_string())?;
    let probes = map.nodes.values().map(|node| {
        let map = map.clone();
        async move {
            let usage = inner.nodes.node_status(&map, node.id).await;
            NodeStatus {
                id: node.id.0,
                site: node.site.clone(),
                host: node.host.clone(),
                addr: node.addr.clone(),
                state: node.state.as_str().to_string(),
                capacity_bytes: node.capacity_bytes,
                reachable: usage.is_ok(),
                n_shards: usage.as_ref().ok().map(|u| u.n_shards),
                used_bytes: usage.as_ref().ok().map(|u| u.used_bytes),
                free_bytes: usage.as_ref().ok().map(|u| u.free_bytes),
                n_scrubbed: usage.as_ref().ok().map(|u| u.n_scrubbed),
                n_scrub_passes: usage.as_ref().ok().map(|u| u.n_scrub_passes),
                n_corrupt_found: usage.as_ref().ok().map(|u| u.n_corrupt_found),
                n_scrub_errors: usage.as_ref().ok().map(|u| u.n_scrub_errors),
                recent_corrupt: usage
                    .as_ref()
                    .map(|u| u.recent_corrupt.iter().map(ToString::to_string).collect())
                    .unwrap_or_default(),
            }
        }
    });
    Ok(ClusterStatus {
        metadata,
        nodes: futures::future::join_all(probes).await,
    })
}

#[derive(serde::Deserialize)]
struct AddLearnerBody {
    node_id: u64,
    addr: String,
}

fn parse_id(segment: &str) -> Option<u64> {
    segment.parse().ok()
}

async fn membership(
    inner: &Inner,
    method: &Method,
    path: &str,
    body: &[u8],
) -> Option<Response<Full<Bytes>>> {
    let result = match (method, path.strip_prefix("/v1/meta/")?) {
        (&Method::POST, "compact") => {
            let results = inner.meta.compact_logs().await;
            let body: Vec<serde_json::Value> = results
                .into_iter()
                .map(|(endpoint, r)| match r {
                    Ok(index) => serde_json::json!({"endpoint": endpoint, "snapshot_index": index}),
                    Err(e) => serde_json::json!({"endpoint": endpoint, "error": e}),
                })
                .collect();
            return Some(json(&body));
        }
        (&Method::POST, "learners") => match serde_json::from_slice::<AddLearnerBody>(body) {
            Ok(b) => inner.meta.add_learner(b.node_id, &b.addr).await,
            Err(e) => return Some(json_error(StatusCode::BAD_REQUEST, &format!("body: {e}"))),
        },
        (&Method::POST, rest) if rest.starts_with("voters/") => {
            match parse_id(&rest["voters/".len()..]) {
                Some(id) => inner.meta.promote(id).await,
                None => return Some(json_error(StatusCode::BAD_REQUEST, "bad node id")),
            }
        }
        (&Method::DELETE, rest) if rest.starts_with("members/") => {
            match parse_id(&rest["members/".len()..]) {
                Some(id) => inner.meta.remove_member(id).await,
                None => return Some(json_error(StatusCode::BAD_REQUEST, "bad node id")),
            }
        }
        _ => return None,
    };
    Some(match result {
        Ok(()) => json(&serde_json::json!({ "ok": true })),
        Err(e) => {
            warn!(error = %e, "membership change failed");
            json_error(StatusCode::CONFLICT, &e.to_string())
        }
    })
}

#[derive(serde::Deserialize)]
struct AddNodeBody {
    node_id: u32,
    site: String,
    host: String,
    addr: String,
    #[serde(default = "default_capacity")]
    capacity_bytes: u64,
}

fn default_capacity() -> u64 {
    1 << 40
}

/// Storage node lifecycle: list, add, drain, undrain, replace, remove.
async fn nodes(
    inner: &Inner,
    maintenance: &Maintenance,
    method: &Method,
    path: &str,
    body: &[u8],
) -> Option<Response<Full<Bytes>>> {
    let rest = path.strip_prefix("/v1/nodes")?;
    let fail = |status: StatusCode, e: &dyn std::fmt::Display| json_error(status, &e.to_string());
    if rest.is_empty() || rest == "/" {
        return Some(match *method {
            Method::GET => match status(inner).await {
                Ok(s) => json(&s.nodes),
                Err(e) => fail(StatusCode::SERVICE_UNAVAILABLE, &e),
            },
            Method::POST => {
                let b: AddNodeBody = match serde_json::from_slice(body) {
                    Ok(b) => b,
                    Err(e) => return Some(fail(StatusCode::BAD_REQUEST, &e)),
                };
                let node = lauscha_core::NodeInfo {
                    id: NodeId(b.node_id),
                    site: b.site,
                    host: b.host,
                    addr: b.addr,
                    capacity_bytes: b.capacity_bytes,
                    state: NodeState::Up,
                };
                match inner.meta.register_node(node).await {
                    Ok(map) => {
                        maintenance.wake();
                        json(&serde_json::json!({"ok": true, "map_epoch": map.epoch}))
                    }
                    Err(e) => fail(StatusCode::BAD_REQUEST, &e),
                }
            }
            _ => fail(StatusCode::METHOD_NOT_ALLOWED, &"GET or POST"),
        });
    }
    let rest = rest.strip_prefix('/')?;
    let (id, action) = rest.split_once('/').unwrap_or((rest, ""));
    let Ok(id) = id.parse::<u32>() else {
        return Some(fail(StatusCode::BAD_REQUEST, &"bad node id"));
    };
    let node = NodeId(id);
    if (method, action) == (&Method::GET, "shards") {
        return Some(match shards_on(inner, node).await {
            Ok(n) => json(&serde_json::json!({"node_id": id, "referenced_shards": n})),
            Err(e) => fail(StatusCode::SERVICE_UNAVAILABLE, &e),
        });
    }
    let result = match (method, action) {
        (&Method::POST, "drain") => inner
            .meta
            .set_node_state(node, NodeState::Draining)
            .await
            .map(|_| ()),
        (&Method::POST, "undrain") => inner
            .meta
            .set_node_state(node, NodeState::Up)
            .await
            .map(|_| ()),
        (&Method::POST, "replace") => {
            // A node whose disk was replaced comes back empty under its id: forget that it
            // was unreachable, take it back into service, and refill it.
            maintenance.forgive(node);
            inner
                .meta
                .set_node_state(node, NodeState::Up)
                .await
                .map(|_| ())
        }
        (&Method::DELETE, "") => match shards_on(inner, node).await {
            Ok(0) => inner
                .meta
                .set_node_state(node, NodeState::Gone)
                .await
                .map(|_| ()),
            Ok(n) => {
                return Some(json_error(
                    StatusCode::CONFLICT,
                    &format!(
                        "node {node} still holds {n} shards of current stripes: drain it first (`lauscha admin node drain {id} --wait`)"
                    ),
                ));
            }
            Err(e) => Err(e),
        },
        _ => return Some(fail(StatusCode::NOT_FOUND, &"no such node action")),
    };
    maintenance.wake();
    Some(match result {
        Ok(()) => json(&serde_json::json!({"ok": true})),
        Err(e) => fail(StatusCode::CONFLICT, &e),
    })
}

/// How many shards of current stripes the map places on `node`.
async fn shards_on(inner: &Inner, node: NodeId) -> Result<u64, crate::GatewayError> {
    let mut n = 0;
    let mut after = None;
    loop {
        let (page, more) = inner.meta.list_stripes(after, 1000).await?;
        after = page.last().map(|s| s.stripe.id);
        n += page
            .iter()
            .map(|s| s.stripe.shards.iter().filter(|l| l.node == node).count() as u64)
            .sum::<u64>();
        if !more {
            return Ok(n);
        }
    }
}

/// Maintenance: run a pass now, see progress, list degraded stripes.
async fn maintenance_routes(
    maintenance: &Maintenance,
    method: &Method,
    path: &str,
    query: &str,
) -> Option<Response<Full<Bytes>>> {
    let dry_run = query.split('&').any(|p| p == "dry_run=true");
    let result = match (method, path) {
        (&Method::POST, "/v1/maintenance/run") => maintenance.pass(dry_run).await,
        (&Method::GET, "/v1/stripes/degraded") => maintenance.pass(true).await,
        (&Method::GET, "/v1/maintenance") => {
            let s = &maintenance.stats;
            return Some(json(&serde_json::json!({
                "passes": s.passes.load(Ordering::Relaxed),
                "shards_rebuilt": s.shards_rebuilt.load(Ordering::Relaxed),
                "bytes_rebuilt": s.bytes_rebuilt.load(Ordering::Relaxed),
                "shards_moved": s.shards_moved.load(Ordering::Relaxed),
                "bytes_moved": s.bytes_moved.load(Ordering::Relaxed),
                "garbage_shards_deleted": s.garbage_shards_deleted.load(Ordering::Relaxed),
                "orphans_deleted": s.orphans_deleted.load(Ordering::Relaxed),
                "tasks_total": s.tasks_total.load(Ordering::Relaxed),
                "tasks_done": s.tasks_done.load(Ordering::Relaxed),
                "last_report": s.last_report(),
            })));
        }
        _ => return None,
    };
    Some(match result {
        Ok(report) => json(&report),
        Err(e) => json_error(StatusCode::SERVICE_UNAVAILABLE, &e.to_string()),
    })
}

/// Prometheus text format, unauthenticated like every scrape target.
fn metrics(inner: &Inner, maintenance: &Maintenance) -> Response<Full<Bytes>> {
    let s = &maintenance.stats;
    let cache = inner.nodes.read_cache_stats();
    let mut out = String::new();
    for (name, help, value) in [
        (
            "lauscha_read_cache_hits_total",
            "Small shard reads answered from the gateway's block cache.",
            cache.map_or(0, |c| c.hits),
        ),
        (
            "lauscha_read_cache_misses_total",
            "Small shard reads the block cache sent to a node.",
            cache.map_or(0, |c| c.misses),
        ),
        (
            "lauscha_read_slices_total",
            "Small shard reads a node answered with a verified slice instead of a block.",
            inner.nodes.slice_reads(),
        ),
        (
            "lauscha_volume_merges_adopted_total",
            "Volume extent merges that adopted the journal's stripes, writing nothing.",
            inner.volume_stats.merges_adopted.load(Ordering::Relaxed),
        ),
        (
            "lauscha_volume_merges_rewritten_total",
            "Volume extent merges that wrote the extent again.",
            inner.volume_stats.merges_rewritten.load(Ordering::Relaxed),
        ),
        (
            "lauscha_volume_journal_batches_total",
            "Batches of small volume writes journaled as one stripe set.",
            inner.volume_stats.journal_batches.load(Ordering::Relaxed),
        ),
        (
            "lauscha_volume_journal_batched_writes_total",
            "Small volume writes journaled in those batches.",
            inner
                .volume_stats
                .journal_batched_writes
                .load(Ordering::Relaxed),
        ),
        (
            "lauscha_volume_journal_spills_total",
            "Spills of inline volume journal entries into one stripe set.",
            inner.volume_stats.journal_spills.load(Ordering::Relaxed),
        ),
        (
            "lauscha_volume_journal_spilled_entries_total",
            "Inline volume journal entries moved into stripes by spills.",
            inner
                .volume_stats
                .journal_spilled_entries
                .load(Ordering::Relaxed),
        ),
        (
            "lauscha_volume_unknown_outcomes_total",
            "Volume commands whose outcome metadata did not answer in time.",
            inner.volume_stats.unknown_outcomes.load(Ordering::Relaxed),
        ),
        (
            "lauscha_volume_new_epochs_total",
            "New lease epochs a volume engine took to fence commands of unknown outcome.",
            inner.volume_stats.new_epochs.load(Ordering::Relaxed),
        ),
        (
            "lauscha_volume_journal_entries_found_total",
            "Journal entries a volume engine found in metadata and did not hold (mostly writes answered with an error that landed anyway).",
            inner.volume_stats.entries_found.load(Ordering::Relaxed),
        ),
        (
            "lauscha_maintenance_passes_total",
            "Maintenance passes completed.",
            s.passes.load(Ordering::Relaxed),
        ),
        (
            "lauscha_repair_shards_total",
            "Shards rebuilt by repair.",
            s.shards_rebuilt.load(Ordering::Relaxed),
        ),
        (
            "lauscha_repair_bytes_total",
            "Bytes written by repair.",
            s.bytes_rebuilt.load(Ordering::Relaxed),
        ),
        (
            "lauscha_moved_shards_total",
            "Shards moved by drain and rebalance.",
            s.shards_moved.load(Ordering::Relaxed),
        ),
        (
            "lauscha_moved_bytes_total",
            "Bytes moved by drain and rebalance.",
            s.bytes_moved.load(Ordering::Relaxed),
        ),
        (
            "lauscha_gc_shards_deleted_total",
            "Garbage shards deleted.",
            s.garbage_shards_deleted.load(Ordering::Relaxed),
        ),
        (
            "lauscha_orphan_shards_deleted_total",
            "Unreferenced shards deleted.",
            s.orphans_deleted.load(Ordering::Relaxed),
        ),
        (
            "lauscha_stripes_degraded",
            "Stripes with fewer than k+m healthy shards at the last pass.",
            s.last_degraded.load(Ordering::Relaxed),
        ),
        (
            "lauscha_maintenance_tasks",
            "Stripe tasks of the current pass.",
            s.tasks_total.load(Ordering::Relaxed),
        ),
        (
            "lauscha_maintenance_tasks_done",
            "Stripe tasks of the current pass done.",
            s.tasks_done.load(Ordering::Relaxed),
        ),
    ] {
        let kind = if name.ends_with("_total") {
            "counter"
        } else {
            "gauge"
        };
        out.push_str(&format!(
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}\n"
        ));
    }
    full(StatusCode::OK, "text/plain; version=0.0.4", out)
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct VolumeBody {
    name: String,
    tenant: String,
    #[serde(default)]
    size_bytes: u64,
    #[serde(default)]
    policy: Option<String>,
    /// Snapshot: the snapshot's own name; clone: the snapshot cloned (`VOLUME@SNAP`).
    #[serde(default)]
    snapshot: Option<String>,
}

/// `POST /v1/volumes {"name","tenant","size_bytes","policy"}` creates,
/// `GET /v1/volumes[?tenant=T]` lists, `POST /v1/volumes/resize {"name","tenant",
/// "size_bytes"}` grows, `POST /v1/volumes/delete {"name","tenant"}` deletes,
/// `POST /v1/volumes/snapshot {"name","tenant","snapshot"}` freezes `name@snapshot`,
/// `POST /v1/volumes/clone {"name","tenant","snapshot"}` makes `name` from a snapshot.
async fn volumes(
    inner: &Inner,
    method: &Method,
    path: &str,
    query: &str,
    body: &[u8],
) -> Option<Response<Full<Bytes>>> {
    use lauscha_core::versioning::{MetaQuery, MetaQueryReply, ObjectCommand};
    use lauscha_core::volume::VolumeCommand;
    if !path.starts_with("/v1/volumes") {
        return None;
    }
    if (method, path) == (&Method::GET, "/v1/volumes") {
        let tenant = match query
            .split('&')
            .find_map(|kv| kv.strip_prefix("tenant="))
            .map(lauscha_core::TenantId::parse)
            .transpose()
        {
            Ok(t) => t,
            Err(e) => return Some(json_error(StatusCode::BAD_REQUEST, &e.to_string())),
        };
        return Some(
            match inner.meta.query(&MetaQuery::ListVolumes { tenant }).await {
                Ok(MetaQueryReply::Volumes(v)) => json(&serde_json::json!({
                    "volumes": v.iter().map(|v| serde_json::json!({
                        "name": v.name,
                        "tenant": v.tenant.0,
                        "size_bytes": v.size_bytes,
                        "policy": v.policy.to_string(),
                        "attached": v.lease.as_ref().is_some_and(|l| l.expires_ms > now_ms()),
                        "snapshot": v.read_only,
                        "epoch": v.epoch,
                    })).collect::<Vec<_>>()
                })),
                Ok(other) => json_error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    &format!("metadata answered {other:?}"),
                ),
                Err(e) => json_error(admin_status(&e), &e.to_string()),
            },
        );
    }
    if method != Method::POST {
        return None;
    }
    let b: VolumeBody = match serde_json::from_slice(body) {
        Ok(b) => b,
        Err(e) => return Some(json_error(StatusCode::BAD_REQUEST, &format!("body: {e}"))),
    };
    let tenant = match lauscha_core::TenantId::parse(&b.tenant) {
        Ok(t) => t,
        Err(e) => return Some(json_error(StatusCode::BAD_REQUEST, &e.to_string())),
    };
    let command = match path {
        "/v1/volumes" => {
            let name = b
                .policy
                .as_deref()
                .unwrap_or(lauscha_core::config::DEFAULT_POLICY_NAME);
            let Some(policy) = inner.config.named_policy(name) else {
                return Some(json_error(
                    StatusCode::BAD_REQUEST,
                    &format!(
                        "no placement policy {name:?}; this cluster has {}",
                        inner.config.policy_names().join(", ")
                    ),
                ));
            };
            VolumeCommand::Create {
                name: b.name.clone(),
                tenant,
                size_bytes: b.size_bytes,
                policy,
            }
        }
        "/v1/volumes/resize" => VolumeCommand::Resize {
            name: b.name.clone(),
            tenant,
            size_bytes: b.size_bytes,
        },
        "/v1/volumes/delete" => VolumeCommand::Delete {
            name: b.name.clone(),
            tenant,
        },
        "/v1/volumes/snapshot" | "/v1/volumes/clone" => {
            let Some(snapshot) = b.snapshot.clone() else {
                return Some(json_error(StatusCode::BAD_REQUEST, "snapshot missing"));
            };
            if path.ends_with("snapshot") {
                VolumeCommand::Snapshot {
                    name: b.name.clone(),
                    tenant,
                    snapshot,
                }
            } else {
                VolumeCommand::Clone {
                    name: b.name.clone(),
                    tenant,
                    snapshot,
                }
            }
        }
        _ => return None,
    };
    Some(
        match inner.meta.execute(&ObjectCommand::Volume(command)).await {
            Ok(_) => json(&serde_json::json!({"volume": b.name, "done": path})),
            Err(e) => json_error(admin_status(&e), &e.to_string()),
        },
    )
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateTenantBody {
    id: String,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct GrantBody {
    bucket: String,
    /// `read`, `write`, `owner`, or `none` to revoke.
    permission: String,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateKeyBody {
    tenant: String,
    #[serde(default)]
    admin: bool,
}

/// Characters of generated key ids and secrets (as AWS: upper case and digits for ids).
const KEY_ID_ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
const SECRET_ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";

fn random_string(alphabet: &[u8], len: usize) -> String {
    (0..len)
        .map(|_| alphabet[rand::random_range(0..alphabet.len())] as char)
        .collect()
}

/// The HTTP status of a metadata refusal on the admin API.
fn admin_status(e: &crate::GatewayError) -> StatusCode {
    use lauscha_proto::MetaErrorKind as K;
    match e {
        crate::GatewayError::Meta { kind, .. } => match kind {
            K::NoSuchTenant | K::NoSuchAccessKey | K::NoSuchVolume => StatusCode::NOT_FOUND,
            K::TenantAlreadyExists | K::AccessKeyAlreadyExists | K::VolumeExists => {
                StatusCode::CONFLICT
            }
            K::Conflict => StatusCode::CONFLICT,
            K::InvalidArgument => StatusCode::BAD_REQUEST,
            K::NoSuchBucket => StatusCode::NOT_FOUND,
            K::AccessDenied => StatusCode::FORBIDDEN,
            K::NotLeader | K::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        },
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// `POST /v1/tenants {"id"}` and `POST /v1/keys {"tenant", "admin"}`: a tenant is a town
/// or district; a key acts for one tenant. The secret is returned once and never again.
async fn tenants_and_keys(
    inner: &Inner,
    method: &Method,
    path: &str,
    body: &[u8],
) -> Option<Response<Full<Bytes>>> {
    let result = match (method, path) {
        (&Method::POST, "/v1/tenants") => {
            let b: CreateTenantBody = match serde_json::from_slice(body) {
                Ok(b) => b,
                Err(e) => return Some(json_error(StatusCode::BAD_REQUEST, &format!("body: {e}"))),
            };
            let id = match lauscha_core::TenantId::parse(&b.id) {
                Ok(id) => id,
                Err(e) => return Some(json_error(StatusCode::BAD_REQUEST, &e.to_string())),
            };
            inner
                .meta
                .create_tenant(&id)
                .await
                .map(|t| serde_json::json!({"tenant": t.id.0, "created_ms": t.created_ms}))
        }
        (&Method::POST, "/v1/keys") => {
            let b: CreateKeyBody = match serde_json::from_slice(body) {
                Ok(b) => b,
                Err(e) => return Some(json_error(StatusCode::BAD_REQUEST, &format!("body: {e}"))),
            };
            let tenant = match lauscha_core::TenantId::parse(&b.tenant) {
                Ok(t) => t,
                Err(e) => return Some(json_error(StatusCode::BAD_REQUEST, &e.to_string())),
            };
            let key = lauscha_core::AccessKey {
                id: AccessKeyId(format!("LK{}", random_string(KEY_ID_ALPHABET, 18))),
                secret: random_string(SECRET_ALPHABET, 40),
                tenant,
                is_admin: b.admin,
                created_ms: now_ms(),
            };
            inner.meta.create_access_key(key).await.map(|k| {
                serde_json::json!({
                    "access_key_id": k.id.0,
                    "secret_access_key": k.secret,
                    "tenant": k.tenant.0,
                    "admin": k.is_admin,
                })
            })
        }
        (&Method::POST, p) if p.starts_with("/v1/keys/") && p.ends_with("/grants") => {
            let id = AccessKeyId(p["/v1/keys/".len()..p.len() - "/grants".len()].to_string());
            let b: GrantBody = match serde_json::from_slice(body) {
                Ok(b) => b,
                Err(e) => return Some(json_error(StatusCode::BAD_REQUEST, &format!("body: {e}"))),
            };
            let bucket = match lauscha_core::BucketName::parse(&b.bucket) {
                Ok(b) => b,
                Err(e) => return Some(json_error(StatusCode::BAD_REQUEST, &e.to_string())),
            };
            let permission = match b.permission.as_str() {
                "none" => None,
                p => match lauscha_core::Permission::parse(p) {
                    Some(p) => Some(p),
                    None => {
                        return Some(json_error(
                            StatusCode::BAD_REQUEST,
                            &format!("permission {p}: read, write, owner or none"),
                        ));
                    }
                },
            };
            let result = inner.meta.grant_key(&id, &bucket, permission).await;
            inner.forget_key(&id);
            result.map(|grants| {
                let grants: serde_json::Map<String, serde_json::Value> = grants
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(b, p)| (b.to_string(), p.as_str().into()))
                    .collect();
                serde_json::json!({"access_key_id": id.0, "grants": grants})
            })
        }
        _ => return None,
    };
    Some(match result {
        Ok(value) => json(&value),
        Err(e) => json_error(admin_status(&e), &e.to_string()),
    })
}

/// Routes one admin request.
pub async fn handle(
    inner: &Inner,
    maintenance: &Maintenance,
    parts: Parts,
    body: Bytes,
) -> Response<Full<Bytes>> {
    if parts.method == Method::GET && parts.uri.path() == "/health" {
        return full(StatusCode::OK, "text/plain", "ok\n");
    }
    if parts.method == Method::GET && parts.uri.path() == "/metrics" {
        return metrics(inner, maintenance);
    }
    if let Err(response) = authorize(inner, &parts, &body).await {
        return response;
    }
    if let Some(response) = membership(inner, &parts.method, parts.uri.path(), &body).await {
        return response;
    }
    if let Some(response) = nodes(inner, maintenance, &parts.method, parts.uri.path(), &body).await
    {
        return response;
    }
    if let Some(response) = tenants_and_keys(inner, &parts.method, parts.uri.path(), &body).await {
        return response;
    }
    let query = parts.uri.query().unwrap_or("");
    if let Some(response) = volumes(inner, &parts.method, parts.uri.path(), query, &body).await {
        return response;
    }
    if let Some(response) =
        maintenance_routes(maintenance, &parts.method, parts.uri.path(), query).await
    {
        return response;
    }
    match (&parts.method, parts.uri.path()) {
        (&Method::GET, "/v1/status") | (&Method::GET, "/v1/meta/status") => {
            match status(inner).await {
                Ok(s) => json(&s),
                Err(e) => {
                    warn!(error = %e, "admin status failed");
                    json_error(StatusCode::SERVICE_UNAVAILABLE, &e)
                }
            }
        }
        _ => json_error(StatusCode::NOT_FOUND, "no such admin endpoint"),
    }
}

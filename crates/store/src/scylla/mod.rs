//! The ScyllaDB backend.
//!
//! Tables come from the versioned CQL migrations in `migrations/scylla/` (applied at
//! start-up, each recorded once in `schema_migrations`). Every statement is prepared
//! once per table. Compare-and-set is a lightweight transaction (`IF NOT EXISTS`,
//! `IF version = ?`) at the configured serial consistency; a write with conditions is a
//! conditional batch on the key's one partition, so the record, the timeline entries
//! and the marks change together or not at all. Scans go by token range. Consistency
//! (LOCAL_QUORUM by default), timeouts, retries, TLS and authentication come from the
//! configuration.

pub mod cql;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use scylla::client::execution_profile::ExecutionProfile;
use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;
use scylla::policies::load_balancing::DefaultPolicy;
use scylla::policies::retry::DefaultRetryPolicy;
use scylla::response::PagingState;
use scylla::statement::batch::{Batch, BatchType};
use scylla::statement::prepared::PreparedStatement;
use scylla::statement::{Consistency, SerialConsistency};
use tokio::sync::RwLock;

use crate::embedded::Clock;
use crate::model::{
    Expect, Outcome, ScanCursor, ScanPage, TableSpec, TimelineCursor, TimelineEntry, TimelinePage,
    TokenRange, Versioned, Write, check_key, from_sortable, sortable,
};
use crate::{Result, Store, StoreError};
use cql::{Cql, MIGRATIONS, Replication, TableStatements};

/// How to reach and use the cluster.
#[derive(Clone, PartialEq)]
pub struct ScyllaConfig {
    /// `host:port` of one or more nodes.
    pub nodes: Vec<String>,
    pub credentials: Option<(String, String)>,
    pub keyspace: String,
    pub replication: Replication,
    pub consistency: Consistency,
    pub request_timeout: Duration,
    /// The local datacenter, preferred for requests.
    pub datacenter: Option<String>,
    /// A PEM CA certificate: TLS on, verifying nodes against it.
    pub tls_ca: Option<std::path::PathBuf>,
}

impl std::fmt::Debug for ScyllaConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScyllaConfig")
            .field("nodes", &self.nodes)
            .field("user", &self.credentials.as_ref().map(|(user, _)| user))
            .field("keyspace", &self.keyspace)
            .field("replication", &self.replication)
            .field("consistency", &self.consistency)
            .field("request_timeout", &self.request_timeout)
            .field("datacenter", &self.datacenter)
            .field("tls_ca", &self.tls_ca)
            .finish()
    }
}

/// What a `scylla://` URI says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScyllaUri {
    pub nodes: Vec<String>,
    pub credentials: Option<(String, String)>,
    pub keyspace: Option<String>,
}

impl ScyllaConfig {
    /// Parses `scylla://[user[:password]@]host[:port][,host[:port]...][/keyspace]`.
    pub fn parse_uri(uri: &str) -> std::result::Result<ScyllaUri, String> {
        let rest = uri.trim().strip_prefix("scylla://").ok_or_else(|| {
            "expected scylla://[user:password@]host[:port][,host...][/keyspace]".to_string()
        })?;
        let (authority, keyspace) = match rest.split_once('/') {
            Some((authority, keyspace)) if !keyspace.is_empty() => {
                (authority, Some(keyspace.to_string()))
            }
            Some((authority, _)) => (authority, None),
            None => (rest, None),
        };
        let (credentials, hosts) = match authority.rsplit_once('@') {
            Some((user_info, hosts)) => {
                let (user, password) = user_info.split_once(':').unwrap_or((user_info, ""));
                (Some((user.to_string(), password.to_string())), hosts)
            }
            None => (None, authority),
        };
        let nodes: Vec<String> = hosts
            .split(',')
            .map(str::trim)
            .filter(|host| !host.is_empty())
            .map(|host| {
                if host.contains(':') {
                    host.to_string()
                } else {
                    format!("{host}:9042")
                }
            })
            .collect();
        if nodes.is_empty() {
            return Err("no host".to_string());
        }
        if let Some(keyspace) = &keyspace
            && !crate::model::is_valid_name(keyspace)
        {
            return Err(format!(
                "keyspace {keyspace:?} must be lower-case letters, digits and _"
            ));
        }
        Ok(ScyllaUri {
            nodes,
            credentials,
            keyspace,
        })
    }
}

/// Parses a consistency level name (`local_quorum`, `quorum`, `one`, ...).
pub fn parse_consistency(name: &str) -> std::result::Result<Consistency, String> {
    Ok(match name.trim().to_ascii_lowercase().as_str() {
        "one" => Consistency::One,
        "two" => Consistency::Two,
        "three" => Consistency::Three,
        "quorum" => Consistency::Quorum,
        "all" => Consistency::All,
        "local_quorum" => Consistency::LocalQuorum,
        "each_quorum" => Consistency::EachQuorum,
        "local_one" => Consistency::LocalOne,
        other => {
            return Err(format!(
                "unknown consistency {other:?} (e.g. local_quorum, quorum, one)"
            ));
        }
    })
}

/// The serial consistency that goes with a consistency: local to the datacenter unless
/// the consistency spans datacenters.
pub fn serial_for(consistency: Consistency) -> SerialConsistency {
    match consistency {
        Consistency::Quorum | Consistency::All | Consistency::EachQuorum => {
            SerialConsistency::Serial
        }
        _ => SerialConsistency::LocalSerial,
    }
}

struct Prepared {
    get_record: PreparedStatement,
    create_record: PreparedStatement,
    set_record: PreparedStatement,
    append: PreparedStatement,
    put_mark_once: PreparedStatement,
    put_mark: PreparedStatement,
    get_mark: PreparedStatement,
    timeline_first: PreparedStatement,
    timeline_after: PreparedStatement,
    timeline_keys: PreparedStatement,
    trim_before: PreparedStatement,
    scan: PreparedStatement,
    delete_key: PreparedStatement,
}

/// The ScyllaDB store. Cheap to clone.
#[derive(Clone)]
pub struct ScyllaStore {
    session: Arc<Session>,
    config: Arc<ScyllaConfig>,
    prepared: Arc<RwLock<HashMap<&'static str, Arc<Prepared>>>>,
}

impl std::fmt::Debug for ScyllaStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScyllaStore")
            .field("nodes", &self.config.nodes)
            .field("keyspace", &self.config.keyspace)
            .finish()
    }
}

fn scylla_error(err: impl std::fmt::Display) -> StoreError {
    StoreError::Scylla(err.to_string())
}

fn execution_error(err: scylla::errors::ExecutionError) -> StoreError {
    use scylla::errors::{DbError, ExecutionError, RequestAttemptError};
    match &err {
        ExecutionError::RequestTimeout(_)
        | ExecutionError::ConnectionPoolError(_)
        | ExecutionError::EmptyPlan
        | ExecutionError::LastAttemptError(RequestAttemptError::DbError(
            DbError::Unavailable { .. }
            | DbError::ReadTimeout { .. }
            | DbError::WriteTimeout { .. }
            | DbError::Overloaded,
            _,
        )) => StoreError::Unavailable(err.to_string()),
        _ => StoreError::Scylla(err.to_string()),
    }
}

/// ScyllaDB's largest TTL: 20 years.
const MAX_TTL_SECONDS: u64 = 630_720_000;

/// Seconds to live for CQL `USING TTL` (0 = for ever), between 1 and the server's
/// maximum when set.
fn ttl_seconds(ttl: Option<Duration>) -> i32 {
    ttl.map_or(0, |ttl| ttl.as_secs().clamp(1, MAX_TTL_SECONDS) as i32)
}

fn timeline_ck(at_ms: i64, id: &[u8]) -> Vec<u8> {
    let mut ck = Vec::with_capacity(8 + id.len());
    ck.extend_from_slice(&sortable(at_ms));
    ck.extend_from_slice(id);
    ck
}

fn split_timeline_ck(ck: &[u8]) -> Result<(i64, Bytes)> {
    let (at, id) = ck
        .split_first_chunk::<8>()
        .ok_or_else(|| StoreError::Corrupt("timeline clustering key too short".to_string()))?;
    Ok((from_sortable(*at), Bytes::copy_from_slice(id)))
}

impl ScyllaStore {
    /// Connects, applies pending migrations, and returns the store.
    pub async fn connect(config: ScyllaConfig) -> Result<Self> {
        if !crate::model::is_valid_name(&config.keyspace) {
            return Err(StoreError::Scylla(format!(
                "keyspace {:?} is not a valid name",
                config.keyspace
            )));
        }
        let mut policy = DefaultPolicy::builder().token_aware(true);
        if let Some(datacenter) = &config.datacenter {
            policy = policy
                .prefer_datacenter(datacenter.clone())
                .permit_dc_failover(false);
        }
        let profile = ExecutionProfile::builder()
            .consistency(config.consistency)
            .serial_consistency(Some(serial_for(config.consistency)))
            .request_timeout(Some(config.request_timeout))
            .load_balancing_policy(policy.build())
            .retry_policy(Arc::new(DefaultRetryPolicy::new()))
            .build();
        let mut builder = SessionBuilder::new()
            .known_nodes(&config.nodes)
            .connection_timeout(config.request_timeout)
            .default_execution_profile_handle(profile.into_handle());
        if let Some((user, password)) = &config.credentials {
            builder = builder.user(user, password);
        }
        if let Some(ca) = &config.tls_ca {
            builder = builder.tls_context(Some(tls_config(ca)?));
        }
        let session = builder.build().await.map_err(|err| {
            StoreError::Unavailable(format!(
                "cannot connect to {}: {err}",
                config.nodes.join(",")
            ))
        })?;
        let store = Self {
            session: Arc::new(session),
            config: Arc::new(config),
            prepared: Arc::new(RwLock::new(HashMap::new())),
        };
        store.migrate().await?;
        Ok(store)
    }

    /// Applies every migration not yet recorded in `schema_migrations`, in order.
    async fn migrate(&self) -> Result<()> {
        let keyspace = &self.config.keyspace;
        let replication = &self.config.replication;
        // The keyspace must exist before the table that records migrations can.
        let first = &MIGRATIONS[0];
        for statement in cql::statements(first, keyspace, replication) {
            self.session
                .query_unpaged(statement, &[])
                .await
                .map_err(|err| migration_error(first, err))?;
        }
        self.session
            .query_unpaged(cql::migrations_table(keyspace), &[])
            .await
            .map_err(|err| migration_error(first, err))?;
        let applied: Vec<i32> = self
            .session
            .query_unpaged(cql::applied_migrations(keyspace), &[])
            .await
            .map_err(scylla_error)?
            .into_rows_result()
            .map_err(scylla_error)?
            .rows::<(i32,)>()
            .map_err(scylla_error)?
            .map(|row| row.map(|(version,)| version))
            .collect::<std::result::Result<_, _>>()
            .map_err(scylla_error)?;
        for migration in MIGRATIONS {
            if applied.contains(&(migration.version as i32)) {
                continue;
            }
            for statement in cql::statements(migration, keyspace, replication) {
                self.session
                    .query_unpaged(statement, &[])
                    .await
                    .map_err(|err| migration_error(migration, err))?;
            }
            self.session
                .query_unpaged(
                    cql::record_migration(keyspace),
                    (migration.version as i32, migration.name),
                )
                .await
                .map_err(|err| migration_error(migration, err))?;
            tracing::info!(
                version = migration.version,
                name = migration.name,
                "applied ScyllaDB migration"
            );
        }
        Ok(())
    }

    async fn statements(&self, table: &TableSpec) -> Result<Arc<Prepared>> {
        if let Some(found) = self.prepared.read().await.get(table.name) {
            return Ok(found.clone());
        }
        table.validate()?;
        let text = TableStatements::new(&self.config.keyspace, table.name);
        let prepare = |statement: Cql| async move {
            let mut prepared = self.session.prepare(statement.text).await.map_err(|err| {
                StoreError::InvalidTable {
                    name: table.name.to_string(),
                    reason: format!("{err} (is there a migration creating it?)"),
                }
            })?;
            // Plain statements can be retried safely; a lightweight transaction whose
            // answer was lost cannot (its outcome is unknown).
            prepared.set_is_idempotent(!statement.lwt);
            Ok::<_, StoreError>(prepared)
        };
        let prepared = Arc::new(Prepared {
            get_record: prepare(text.get_record).await?,
            create_record: prepare(text.create_record).await?,
            set_record: prepare(text.set_record).await?,
            append: prepare(text.append).await?,
            put_mark_once: prepare(text.put_mark_once).await?,
            put_mark: prepare(text.put_mark).await?,
            get_mark: prepare(text.get_mark).await?,
            timeline_first: prepare(text.timeline_first).await?,
            timeline_after: prepare(text.timeline_after).await?,
            timeline_keys: prepare(text.timeline_keys).await?,
            trim_before: prepare(text.trim_before).await?,
            scan: prepare(text.scan).await?,
            delete_key: prepare(text.delete_key).await?,
        });
        self.prepared
            .write()
            .await
            .insert(table.name, prepared.clone());
        Ok(prepared)
    }

    /// The record's version (`None` when never written) and value (`None` when absent
    /// or deleted: a delete keeps the version, so versions never go back).
    async fn read_state(
        &self,
        prepared: &Prepared,
        key: &[u8],
    ) -> Result<(Option<i64>, Option<Versioned>)> {
        let rows = self
            .session
            .execute_unpaged(&prepared.get_record, (key,))
            .await
            .map_err(execution_error)?
            .into_rows_result()
            .map_err(scylla_error)?;
        let row = rows
            .maybe_first_row::<(Option<Vec<u8>>, Option<i64>)>()
            .map_err(scylla_error)?;
        Ok(match row {
            Some((value, Some(version))) => (
                Some(version),
                value.map(|value| Versioned {
                    value: Bytes::from(value),
                    version: version as u64,
                }),
            ),
            _ => (None, None),
        })
    }

    async fn read_record(&self, prepared: &Prepared, key: &[u8]) -> Result<Option<Versioned>> {
        Ok(self.read_state(prepared, key).await?.1)
    }

    /// One attempt at a write: the batch of its statements, conditional when any of
    /// them is a lightweight transaction.
    async fn try_write(
        &self,
        table: &TableSpec,
        prepared: &Prepared,
        write: &Write,
    ) -> Result<Attempt> {
        use scylla::value::CqlValue::{BigInt, Blob, Int};
        let key = write.key.to_vec();
        let mut batch = Batch::new(BatchType::Unlogged);
        let mut values: Vec<Vec<Option<scylla::value::CqlValue>>> = Vec::new();
        let mut conditional = false;
        let mut version = None;
        let mut chose_condition = false;

        if let Some(record) = &write.record {
            let value = record.value.as_ref().map(|value| Blob(value.to_vec()));
            // The version the write is conditioned on: given, or read now.
            let expected = match record.expect {
                Expect::Version(expected) => Some(expected as i64),
                Expect::Absent | Expect::Any => {
                    let (stored, live) = self.read_state(prepared, &key).await?;
                    if record.expect == Expect::Absent && live.is_some() {
                        return Ok(Attempt::Done(self.conflict(prepared, write).await?));
                    }
                    chose_condition = record.expect == Expect::Any;
                    if live.is_none() && value.is_none() {
                        None // deleting what is not there: nothing to do for the record
                    } else if stored.is_none() {
                        batch.append_statement(prepared.create_record.clone());
                        values.push(vec![Some(Blob(key.clone())), value.clone()]);
                        conditional = true;
                        version = Some(1);
                        None
                    } else {
                        stored
                    }
                }
            };
            if let Some(expected) = expected {
                batch.append_statement(prepared.set_record.clone());
                values.push(vec![
                    value.clone(),
                    Some(BigInt(expected + 1)),
                    Some(Blob(key.clone())),
                    Some(BigInt(expected)),
                ]);
                conditional = true;
                version = value.is_some().then_some(expected as u64 + 1);
            }
        }

        let now = Clock::system().now_ms();
        let mut appended = false;
        for entry in &write.appends {
            let ttl = match table.timeline.max_age {
                Some(age) => {
                    let left =
                        i64::try_from(age.as_millis()).unwrap_or(i64::MAX) - (now - entry.at_ms);
                    if left <= 0 {
                        continue; // already older than the table keeps
                    }
                    ttl_seconds(Some(Duration::from_millis(left as u64)))
                }
                None => 0,
            };
            batch.append_statement(prepared.append.clone());
            values.push(vec![
                Some(Blob(key.clone())),
                Some(Blob(timeline_ck(entry.at_ms, &entry.id))),
                Some(Blob(entry.value.to_vec())),
                Some(Int(ttl)),
            ]);
            appended = true;
        }
        for mark in &write.marks {
            let statement = if mark.if_absent {
                conditional = true;
                &prepared.put_mark_once
            } else {
                &prepared.put_mark
            };
            batch.append_statement(statement.clone());
            values.push(vec![
                Some(Blob(key.clone())),
                Some(Blob(mark.id.to_vec())),
                Some(Blob(mark.value.to_vec())),
                Some(Int(ttl_seconds(mark.ttl))),
            ]);
        }
        if values.is_empty() {
            return Ok(Attempt::Done(Outcome::Applied { version }));
        }
        if conditional {
            batch.set_serial_consistency(Some(serial_for(self.config.consistency)));
        }
        let result = self
            .session
            .batch(&batch, values)
            .await
            .map_err(execution_error)?;
        if conditional && !batch_applied(result)? {
            let outcome = self.conflict(prepared, write).await?;
            // A condition this backend chose itself (for an overwrite) only means the
            // record moved under us: try again on its new version.
            return Ok(match &outcome {
                Outcome::Conflict { present_marks, .. }
                    if chose_condition && present_marks.is_empty() =>
                {
                    Attempt::Moved
                }
                _ => Attempt::Done(outcome),
            });
        }
        // Age is handled by the TTLs; the count limit by an occasional trim.
        if appended
            && write
                .appends
                .iter()
                .any(|entry| crate::model::trims_timeline(&entry.id))
        {
            self.trim(prepared, table, &key).await?;
        }
        Ok(Attempt::Done(Outcome::Applied { version }))
    }

    /// What is there now, after a write's conditions failed.
    async fn conflict(&self, prepared: &Prepared, write: &Write) -> Result<Outcome> {
        let record = self.read_record(prepared, &write.key).await?;
        let mut present_marks = Vec::new();
        for mark in write.marks.iter().filter(|mark| mark.if_absent) {
            if self
                .read_mark(prepared, &write.key, &mark.id)
                .await?
                .is_some()
            {
                present_marks.push(mark.id.clone());
            }
        }
        Ok(Outcome::Conflict {
            record,
            present_marks,
        })
    }

    async fn read_mark(&self, prepared: &Prepared, key: &[u8], id: &[u8]) -> Result<Option<Bytes>> {
        let rows = self
            .session
            .execute_unpaged(&prepared.get_mark, (key, id))
            .await
            .map_err(execution_error)?
            .into_rows_result()
            .map_err(scylla_error)?;
        Ok(rows
            .maybe_first_row::<(Option<Vec<u8>>,)>()
            .map_err(scylla_error)?
            .map(|(value,)| Bytes::from(value.unwrap_or_default())))
    }

    /// Drops timeline entries beyond the table's count limit (age is handled by TTL).
    async fn trim(&self, prepared: &Prepared, table: &TableSpec, key: &[u8]) -> Result<()> {
        let keep = table.timeline.max_entries as i32;
        let rows = self
            .session
            .execute_unpaged(&prepared.timeline_keys, (key, keep.saturating_add(1)))
            .await
            .map_err(execution_error)?
            .into_rows_result()
            .map_err(scylla_error)?;
        let keys: Vec<(Vec<u8>,)> = rows
            .rows::<(Vec<u8>,)>()
            .map_err(scylla_error)?
            .collect::<std::result::Result<_, _>>()
            .map_err(scylla_error)?;
        if keys.len() > keep as usize
            && let Some((oldest_kept,)) = keys.get(keep as usize - 1)
        {
            self.session
                .execute_unpaged(&prepared.trim_before, (key, oldest_kept.as_slice()))
                .await
                .map_err(execution_error)?;
        }
        Ok(())
    }
}

/// Attempts of an unconditional write whose read version keeps moving.
const ANY_ATTEMPTS: u32 = 16;

/// How one attempt at a write ended.
enum Attempt {
    Done(Outcome),
    /// The record changed between the read and the write; read again.
    Moved,
}

/// Whether a conditional batch applied: the `[applied]` column of its first row.
fn batch_applied(result: scylla::response::query_result::QueryResult) -> Result<bool> {
    let rows = result.into_rows_result().map_err(scylla_error)?;
    let first = rows
        .rows::<scylla::value::Row>()
        .map_err(scylla_error)?
        .next()
        .transpose()
        .map_err(scylla_error)?;
    Ok(first
        .and_then(|row| row.columns.first().cloned().flatten())
        .and_then(|value| value.as_boolean())
        .unwrap_or(false))
}

fn migration_error(migration: &cql::Migration, err: impl std::fmt::Display) -> StoreError {
    StoreError::Migration {
        version: migration.version,
        name: migration.name.to_string(),
        reason: err.to_string(),
    }
}

fn tls_config(ca: &std::path::Path) -> Result<Arc<rustls::ClientConfig>> {
    let pem = std::fs::read(ca)
        .map_err(|err| StoreError::Scylla(format!("TLS CA {}: {err}", ca.display())))?;
    use rustls_pki_types::pem::PemObject as _;
    let mut roots = rustls::RootCertStore::empty();
    for certificate in rustls_pki_types::CertificateDer::pem_slice_iter(&pem) {
        let certificate = certificate
            .map_err(|err| StoreError::Scylla(format!("TLS CA {}: {err}", ca.display())))?;
        roots
            .add(certificate)
            .map_err(|err| StoreError::Scylla(format!("TLS CA {}: {err}", ca.display())))?;
    }
    Ok(Arc::new(
        rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    ))
}

impl Store for ScyllaStore {
    async fn get(&self, table: &TableSpec, key: &[u8]) -> Result<Option<Versioned>> {
        check_key(key)?;
        let prepared = self.statements(table).await?;
        self.read_record(&prepared, key).await
    }

    async fn write(&self, table: &TableSpec, write: Write) -> Result<Outcome> {
        write.validate()?;
        let prepared = self.statements(table).await?;
        // An unconditional record write is still a compare-and-set on the version it
        // read (every change to a record goes through Paxos), retried if it moved.
        for _ in 0..ANY_ATTEMPTS {
            match self.try_write(table, &prepared, &write).await? {
                Attempt::Done(outcome) => return Ok(outcome),
                Attempt::Moved => continue,
            }
        }
        Err(StoreError::Contended {
            attempts: ANY_ATTEMPTS,
        })
    }

    async fn timeline(
        &self,
        table: &TableSpec,
        key: &[u8],
        after: Option<TimelineCursor>,
        limit: u32,
    ) -> Result<TimelinePage> {
        check_key(key)?;
        let prepared = self.statements(table).await?;
        let seen = after.as_ref().map_or(0, |cursor| cursor.seen);
        let room = table
            .timeline
            .max_entries
            .saturating_sub(seen)
            .min(limit.max(1));
        if room == 0 {
            return Ok(TimelinePage::default());
        }
        let result = match &after {
            Some(cursor) => {
                self.session
                    .execute_unpaged(
                        &prepared.timeline_after,
                        (key, timeline_ck(cursor.at_ms, &cursor.id), room as i32),
                    )
                    .await
            }
            None => {
                self.session
                    .execute_unpaged(&prepared.timeline_first, (key, room as i32))
                    .await
            }
        }
        .map_err(execution_error)?;
        let rows = result.into_rows_result().map_err(scylla_error)?;
        let mut entries = Vec::new();
        for row in rows
            .rows::<(Vec<u8>, Option<Vec<u8>>)>()
            .map_err(scylla_error)?
        {
            let (ck, value) = row.map_err(scylla_error)?;
            let (at_ms, id) = split_timeline_ck(&ck)?;
            entries.push(TimelineEntry {
                at_ms,
                id,
                value: Bytes::from(value.unwrap_or_default()),
            });
        }
        Ok(TimelinePage::of(entries, limit, seen, &table.timeline))
    }

    async fn mark(&self, table: &TableSpec, key: &[u8], id: &[u8]) -> Result<Option<Bytes>> {
        check_key(key)?;
        let prepared = self.statements(table).await?;
        self.read_mark(&prepared, key, id).await
    }

    async fn scan(
        &self,
        table: &TableSpec,
        range: TokenRange,
        after: Option<ScanCursor>,
        limit: u32,
    ) -> Result<ScanPage> {
        let prepared = self.statements(table).await?;
        let mut statement = prepared.scan.clone();
        statement.set_page_size(limit.clamp(1, i32::MAX as u32) as i32);
        let paging = match after {
            Some(ScanCursor(raw)) => PagingState::new_from_raw_bytes(raw.to_vec()),
            None => PagingState::start(),
        };
        // ScyllaDB has no token i64::MIN; the range starts at the first real token.
        let start = range.start.max(i64::MIN + 1);
        let (result, paging) = self
            .session
            .execute_single_page(&statement, (start, range.end), paging)
            .await
            .map_err(execution_error)?;
        let rows = result.into_rows_result().map_err(scylla_error)?;
        let mut records = Vec::new();
        for row in rows
            .rows::<(Vec<u8>, Option<Vec<u8>>, Option<i64>)>()
            .map_err(scylla_error)?
        {
            let (key, value, version) = row.map_err(scylla_error)?;
            if let (Some(value), Some(version)) = (value, version) {
                records.push((
                    Bytes::from(key),
                    Versioned {
                        value: Bytes::from(value),
                        version: version as u64,
                    },
                ));
            }
        }
        let next = match paging.into_paging_control_flow() {
            std::ops::ControlFlow::Continue(state) => state
                .as_bytes_slice()
                .map(|raw| ScanCursor(Bytes::copy_from_slice(raw))),
            std::ops::ControlFlow::Break(()) => None,
        };
        Ok(ScanPage { records, next })
    }

    async fn delete(&self, table: &TableSpec, key: &[u8]) -> Result<()> {
        check_key(key)?;
        let prepared = self.statements(table).await?;
        self.session
            .execute_unpaged(&prepared.delete_key, (key,))
            .await
            .map_err(execution_error)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uris_name_nodes_credentials_and_keyspace() {
        let ScyllaUri {
            nodes,
            credentials,
            keyspace,
        } = ScyllaConfig::parse_uri("scylla://cairn:s3cret@10.0.0.1,10.0.0.2:19042/cairn_prod")
            .unwrap();
        assert_eq!(nodes, vec!["10.0.0.1:9042", "10.0.0.2:19042"]);
        assert_eq!(
            credentials,
            Some(("cairn".to_string(), "s3cret".to_string()))
        );
        assert_eq!(keyspace.as_deref(), Some("cairn_prod"));
        let ScyllaUri {
            nodes,
            credentials,
            keyspace,
        } = ScyllaConfig::parse_uri("scylla://localhost").unwrap();
        assert_eq!(nodes, vec!["localhost:9042"]);
        assert!(credentials.is_none() && keyspace.is_none());
        assert!(ScyllaConfig::parse_uri("cql://x").is_err());
        assert!(ScyllaConfig::parse_uri("scylla://x/Bad-Name").is_err());
    }

    #[test]
    fn consistency_defaults_pair_with_serial_consistency() {
        assert_eq!(
            parse_consistency("LOCAL_QUORUM").unwrap(),
            Consistency::LocalQuorum
        );
        assert_eq!(
            serial_for(Consistency::LocalQuorum),
            SerialConsistency::LocalSerial
        );
        assert_eq!(serial_for(Consistency::Quorum), SerialConsistency::Serial);
        assert!(parse_consistency("most").is_err());
        assert!(parse_consistency("any").is_err(), "ANY cannot read");
        assert_eq!(
            ttl_seconds(Some(Duration::from_secs(u64::MAX))),
            630_720_000
        );
    }

    #[test]
    fn timeline_keys_sort_by_time_then_id() {
        let older = timeline_ck(-5, b"b");
        let newer = timeline_ck(7, b"a");
        assert!(older < newer);
        assert_eq!(
            split_timeline_ck(&newer).unwrap(),
            (7, Bytes::from_static(b"a"))
        );
        assert_eq!(ttl_seconds(None), 0);
        assert_eq!(ttl_seconds(Some(Duration::from_millis(10))), 1);
    }
}

//! The CQL the ScyllaDB backend runs: statement text per table, the migrations, and
//! the settings that shape them (replication, consistency). Pure, so it is unit-tested
//! without a cluster.

/// Timeline rows and marks share a partition with the record (see the migrations).
pub const KIND_TIMELINE: i8 = 1;
pub const KIND_MARK: i8 = 2;

/// One statement and whether it is a lightweight transaction (which the driver must
/// not retry blindly, and which runs at the serial consistency).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cql {
    pub text: String,
    pub lwt: bool,
}

fn plain(text: String) -> Cql {
    Cql { text, lwt: false }
}

fn lwt(text: String) -> Cql {
    Cql { text, lwt: true }
}

/// The statements for one table. Every change to a record is a lightweight transaction
/// on its version; a delete sets the record to null and keeps the version, so versions
/// never go back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableStatements {
    pub get_record: Cql,
    pub create_record: Cql,
    pub set_record: Cql,
    pub append: Cql,
    pub put_mark_once: Cql,
    pub put_mark: Cql,
    pub get_mark: Cql,
    pub timeline_first: Cql,
    pub timeline_after: Cql,
    pub timeline_keys: Cql,
    pub trim_before: Cql,
    pub scan: Cql,
    pub delete_key: Cql,
}

impl TableStatements {
    pub fn new(keyspace: &str, table: &str) -> Self {
        let t = format!("{keyspace}.{table}");
        Self {
            get_record: plain(format!(
                "SELECT record, version FROM {t} WHERE pk = ? LIMIT 1"
            )),
            create_record: lwt(format!(
                "INSERT INTO {t} (pk, record, version) VALUES (?, ?, 1) IF NOT EXISTS"
            )),
            set_record: lwt(format!(
                "UPDATE {t} SET record = ?, version = ? WHERE pk = ? IF version = ?"
            )),
            append: plain(format!(
                "INSERT INTO {t} (pk, kind, ck, value) VALUES (?, {KIND_TIMELINE}, ?, ?) USING TTL ?"
            )),
            put_mark_once: lwt(format!(
                "INSERT INTO {t} (pk, kind, ck, value) VALUES (?, {KIND_MARK}, ?, ?) IF NOT EXISTS USING TTL ?"
            )),
            put_mark: plain(format!(
                "INSERT INTO {t} (pk, kind, ck, value) VALUES (?, {KIND_MARK}, ?, ?) USING TTL ?"
            )),
            get_mark: plain(format!(
                "SELECT value FROM {t} WHERE pk = ? AND kind = {KIND_MARK} AND ck = ?"
            )),
            timeline_first: plain(format!(
                "SELECT ck, value FROM {t} WHERE pk = ? AND kind = {KIND_TIMELINE} LIMIT ?"
            )),
            timeline_after: plain(format!(
                "SELECT ck, value FROM {t} WHERE pk = ? AND kind = {KIND_TIMELINE} AND ck < ? LIMIT ?"
            )),
            timeline_keys: plain(format!(
                "SELECT ck FROM {t} WHERE pk = ? AND kind = {KIND_TIMELINE} LIMIT ?"
            )),
            trim_before: plain(format!(
                "DELETE FROM {t} WHERE pk = ? AND kind = {KIND_TIMELINE} AND ck < ?"
            )),
            scan: plain(format!(
                "SELECT DISTINCT pk, record, version FROM {t} WHERE token(pk) >= ? AND token(pk) <= ?"
            )),
            delete_key: plain(format!("DELETE FROM {t} WHERE pk = ?")),
        }
    }
}

/// How the keyspace is replicated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Replication {
    /// `SimpleStrategy` with this factor (single-datacenter test clusters).
    Simple(u32),
    /// `NetworkTopologyStrategy` with one factor for every datacenter.
    Network(u32),
    /// `NetworkTopologyStrategy` with a factor per named datacenter.
    PerDatacenter(Vec<(String, u32)>),
}

impl Replication {
    /// Parses `simple:1`, `network:3` or `network:dc1=3,dc2=2`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let (class, rest) = text.trim().split_once(':').ok_or_else(|| {
            "expected simple:<factor> or network:<factor> or network:<dc>=<factor>,...".to_string()
        })?;
        let factor = |value: &str| {
            value
                .trim()
                .parse::<u32>()
                .ok()
                .filter(|factor| *factor > 0)
                .ok_or_else(|| format!("replication factor {value:?} is not a positive number"))
        };
        match class.trim() {
            "simple" => Ok(Replication::Simple(factor(rest)?)),
            "network" if !rest.contains('=') => Ok(Replication::Network(factor(rest)?)),
            "network" => {
                let mut datacenters = Vec::new();
                for entry in rest.split(',') {
                    let (name, value) = entry
                        .split_once('=')
                        .ok_or_else(|| format!("{entry:?} is not <datacenter>=<factor>"))?;
                    let name = name.trim();
                    if name.is_empty()
                        || !name
                            .chars()
                            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
                    {
                        return Err(format!("datacenter name {name:?} is not valid"));
                    }
                    datacenters.push((name.to_string(), factor(value)?));
                }
                Ok(Replication::PerDatacenter(datacenters))
            }
            other => Err(format!("unknown strategy {other:?}; use simple or network")),
        }
    }

    /// The CQL map for `WITH replication = ...`.
    pub fn to_cql(&self) -> String {
        match self {
            Replication::Simple(factor) => {
                format!("{{'class': 'SimpleStrategy', 'replication_factor': {factor}}}")
            }
            Replication::Network(factor) => {
                format!("{{'class': 'NetworkTopologyStrategy', 'replication_factor': {factor}}}")
            }
            Replication::PerDatacenter(datacenters) => {
                let entries: Vec<String> = datacenters
                    .iter()
                    .map(|(name, factor)| format!("'{name}': {factor}"))
                    .collect();
                format!(
                    "{{'class': 'NetworkTopologyStrategy', {}}}",
                    entries.join(", ")
                )
            }
        }
    }
}

/// One versioned migration kept in `migrations/scylla/`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Migration {
    pub version: u32,
    pub name: &'static str,
    pub cql: &'static str,
}

/// Every migration, in order. New ones are appended with the next number.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "keyspace",
        cql: include_str!("../../migrations/scylla/0001_keyspace.cql"),
    },
    Migration {
        version: 2,
        name: "tables",
        cql: include_str!("../../migrations/scylla/0002_tables.cql"),
    },
    Migration {
        version: 3,
        name: "profile_index",
        cql: include_str!("../../migrations/scylla/0003_profile_index.cql"),
    },
    Migration {
        version: 4,
        name: "enrichers",
        cql: include_str!("../../migrations/scylla/0004_enrichers.cql"),
    },
];

/// The table that records which migrations ran.
pub fn migrations_table(keyspace: &str) -> String {
    format!(
        "CREATE TABLE IF NOT EXISTS {keyspace}.schema_migrations (version int PRIMARY KEY, name text, applied_at timestamp)"
    )
}

pub fn record_migration(keyspace: &str) -> String {
    format!(
        "INSERT INTO {keyspace}.schema_migrations (version, name, applied_at) VALUES (?, ?, toTimestamp(now())) IF NOT EXISTS"
    )
}

pub fn applied_migrations(keyspace: &str) -> String {
    format!("SELECT version FROM {keyspace}.schema_migrations")
}

/// The statements of a migration with its placeholders filled in: comments dropped,
/// split on `;`.
pub fn statements(migration: &Migration, keyspace: &str, replication: &Replication) -> Vec<String> {
    let text: String = migration
        .cql
        .lines()
        .map(|line| match line.find("--") {
            Some(index) => &line[..index],
            None => line,
        })
        .collect::<Vec<_>>()
        .join("\n");
    text.split(';')
        .map(|statement| statement.split_whitespace().collect::<Vec<_>>().join(" "))
        .filter(|statement| !statement.is_empty())
        .map(|statement| {
            statement
                .replace("{keyspace}", keyspace)
                .replace("{replication}", &replication.to_cql())
        })
        .collect()
}

/// Whether `name` can be used unquoted as a keyspace or table name.
pub fn is_identifier(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 48
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_changes_are_lightweight_transactions() {
        let cql = TableStatements::new("cairn", "profiles");
        assert_eq!(
            cql.create_record,
            lwt(
                "INSERT INTO cairn.profiles (pk, record, version) VALUES (?, ?, 1) IF NOT EXISTS"
                    .into()
            )
        );
        assert_eq!(
            cql.set_record,
            lwt(
                "UPDATE cairn.profiles SET record = ?, version = ? WHERE pk = ? IF version = ?"
                    .into()
            )
        );
        assert!(cql.put_mark_once.lwt);
        assert!(!cql.append.lwt && !cql.put_mark.lwt && !cql.get_record.lwt);
        // Every statement that says IF is marked a lightweight transaction, and only those.
        for statement in [
            &cql.get_record,
            &cql.create_record,
            &cql.set_record,
            &cql.append,
            &cql.put_mark_once,
            &cql.put_mark,
            &cql.get_mark,
            &cql.timeline_first,
            &cql.timeline_after,
            &cql.timeline_keys,
            &cql.trim_before,
            &cql.scan,
            &cql.delete_key,
        ] {
            assert_eq!(
                statement.text.contains(" IF "),
                statement.lwt,
                "{}",
                statement.text
            );
        }
    }

    #[test]
    fn timelines_and_marks_live_in_the_record_partition() {
        let cql = TableStatements::new("cairn", "profiles");
        assert_eq!(
            cql.append.text,
            "INSERT INTO cairn.profiles (pk, kind, ck, value) VALUES (?, 1, ?, ?) USING TTL ?"
        );
        assert_eq!(
            cql.timeline_after.text,
            "SELECT ck, value FROM cairn.profiles WHERE pk = ? AND kind = 1 AND ck < ? LIMIT ?"
        );
        assert_eq!(
            cql.put_mark_once.text,
            "INSERT INTO cairn.profiles (pk, kind, ck, value) VALUES (?, 2, ?, ?) IF NOT EXISTS USING TTL ?"
        );
        assert_eq!(
            cql.scan.text,
            "SELECT DISTINCT pk, record, version FROM cairn.profiles WHERE token(pk) >= ? AND token(pk) <= ?"
        );
        assert_eq!(
            cql.delete_key.text,
            "DELETE FROM cairn.profiles WHERE pk = ?"
        );
    }

    #[test]
    fn replication_settings_become_cql() {
        assert_eq!(
            Replication::parse("simple:1").unwrap().to_cql(),
            "{'class': 'SimpleStrategy', 'replication_factor': 1}"
        );
        assert_eq!(
            Replication::parse("network:3").unwrap().to_cql(),
            "{'class': 'NetworkTopologyStrategy', 'replication_factor': 3}"
        );
        assert_eq!(
            Replication::parse("network:eu=3,us-east=2")
                .unwrap()
                .to_cql(),
            "{'class': 'NetworkTopologyStrategy', 'eu': 3, 'us-east': 2}"
        );
        assert!(
            Replication::parse("network:0")
                .unwrap_err()
                .contains("positive")
        );
        assert!(
            Replication::parse("ring:3")
                .unwrap_err()
                .contains("unknown strategy")
        );
        assert!(
            Replication::parse("network:dc'1=3")
                .unwrap_err()
                .contains("not valid")
        );
    }

    #[test]
    fn migrations_are_numbered_in_order_and_fill_their_placeholders() {
        for (index, migration) in MIGRATIONS.iter().enumerate() {
            assert_eq!(migration.version as usize, index + 1);
        }
        let keyspace = statements(&MIGRATIONS[0], "cairn_test", &Replication::Simple(1));
        assert_eq!(
            keyspace,
            vec![
                "CREATE KEYSPACE IF NOT EXISTS cairn_test WITH replication = {'class': 'SimpleStrategy', 'replication_factor': 1} AND durable_writes = true AND tablets = {'enabled': false}"
            ]
        );
        let tables: Vec<String> = MIGRATIONS[1..]
            .iter()
            .flat_map(|migration| statements(migration, "cairn_test", &Replication::Simple(1)))
            .collect();
        assert!(tables.len() >= 5);
        for statement in &tables {
            assert!(
                statement.starts_with("CREATE TABLE IF NOT EXISTS cairn_test."),
                "{statement}"
            );
            assert!(
                statement.contains("record blob STATIC, version bigint STATIC"),
                "{statement}"
            );
            assert!(!statement.contains('{'), "{statement}");
        }
    }
}

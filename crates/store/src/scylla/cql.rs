//! The CQL the ScyllaDB backend runs: statement text per table, the migrations, and
//! the settings that shape them (replication, consistency). Pure, so it is unit-tested
//! without a cluster.

/// Timeline rows and marks share a partition with the record (see the migrations).
pub const KIND_TIMELINE: i8 = 1;
pub const KIND_MARK: i8 = 2;

/// The statements for one table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableStatements {
    pub get_record: String,
    pub create_record: String,
    pub update_record: String,
    pub overwrite_record: String,
    pub delete_record_if: String,
    pub delete_record: String,
    pub append: String,
    pub put_mark_once: String,
    pub put_mark: String,
    pub get_mark: String,
    pub timeline_first: String,
    pub timeline_after: String,
    pub timeline_keys: String,
    pub trim_before: String,
    pub scan: String,
    pub delete_key: String,
}

impl TableStatements {
    pub fn new(keyspace: &str, table: &str) -> Self {
        let t = format!("{keyspace}.{table}");
        Self {
            get_record: format!("SELECT record, version FROM {t} WHERE pk = ? LIMIT 1"),
            create_record: format!(
                "INSERT INTO {t} (pk, record, version) VALUES (?, ?, 1) IF NOT EXISTS"
            ),
            update_record: format!(
                "UPDATE {t} SET record = ?, version = ? WHERE pk = ? IF version = ?"
            ),
            overwrite_record: format!("UPDATE {t} SET record = ?, version = ? WHERE pk = ?"),
            delete_record_if: format!(
                "DELETE record, version FROM {t} WHERE pk = ? IF version = ?"
            ),
            delete_record: format!("DELETE record, version FROM {t} WHERE pk = ?"),
            append: format!(
                "INSERT INTO {t} (pk, kind, ck, value) VALUES (?, {KIND_TIMELINE}, ?, ?) USING TTL ?"
            ),
            put_mark_once: format!(
                "INSERT INTO {t} (pk, kind, ck, value) VALUES (?, {KIND_MARK}, ?, ?) IF NOT EXISTS USING TTL ?"
            ),
            put_mark: format!(
                "INSERT INTO {t} (pk, kind, ck, value) VALUES (?, {KIND_MARK}, ?, ?) USING TTL ?"
            ),
            get_mark: format!(
                "SELECT value FROM {t} WHERE pk = ? AND kind = {KIND_MARK} AND ck = ?"
            ),
            timeline_first: format!(
                "SELECT ck, value FROM {t} WHERE pk = ? AND kind = {KIND_TIMELINE} LIMIT ?"
            ),
            timeline_after: format!(
                "SELECT ck, value FROM {t} WHERE pk = ? AND kind = {KIND_TIMELINE} AND ck < ? LIMIT ?"
            ),
            timeline_keys: format!(
                "SELECT ck FROM {t} WHERE pk = ? AND kind = {KIND_TIMELINE} LIMIT ?"
            ),
            trim_before: format!(
                "DELETE FROM {t} WHERE pk = ? AND kind = {KIND_TIMELINE} AND ck < ?"
            ),
            scan: format!(
                "SELECT DISTINCT pk, record, version FROM {t} WHERE token(pk) >= ? AND token(pk) <= ?"
            ),
            delete_key: format!("DELETE FROM {t} WHERE pk = ?"),
        }
    }

    /// The statements that are lightweight transactions (serial consistency applies).
    pub fn is_lwt(statement: &str) -> bool {
        statement.contains(" IF ")
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
    fn record_statements_use_lightweight_transactions() {
        let cql = TableStatements::new("cairn", "profiles");
        assert_eq!(
            cql.create_record,
            "INSERT INTO cairn.profiles (pk, record, version) VALUES (?, ?, 1) IF NOT EXISTS"
        );
        assert_eq!(
            cql.update_record,
            "UPDATE cairn.profiles SET record = ?, version = ? WHERE pk = ? IF version = ?"
        );
        assert!(TableStatements::is_lwt(&cql.create_record));
        assert!(TableStatements::is_lwt(&cql.update_record));
        assert!(TableStatements::is_lwt(&cql.delete_record_if));
        assert!(TableStatements::is_lwt(&cql.put_mark_once));
        assert!(!TableStatements::is_lwt(&cql.append));
        assert!(!TableStatements::is_lwt(&cql.overwrite_record));
        assert!(!TableStatements::is_lwt(&cql.get_record));
    }

    #[test]
    fn timelines_and_marks_live_in_the_record_partition() {
        let cql = TableStatements::new("cairn", "profiles");
        assert_eq!(
            cql.append,
            "INSERT INTO cairn.profiles (pk, kind, ck, value) VALUES (?, 1, ?, ?) USING TTL ?"
        );
        assert_eq!(
            cql.timeline_after,
            "SELECT ck, value FROM cairn.profiles WHERE pk = ? AND kind = 1 AND ck < ? LIMIT ?"
        );
        assert_eq!(
            cql.put_mark_once,
            "INSERT INTO cairn.profiles (pk, kind, ck, value) VALUES (?, 2, ?, ?) IF NOT EXISTS USING TTL ?"
        );
        assert_eq!(
            cql.scan,
            "SELECT DISTINCT pk, record, version FROM cairn.profiles WHERE token(pk) >= ? AND token(pk) <= ?"
        );
        assert_eq!(cql.delete_key, "DELETE FROM cairn.profiles WHERE pk = ?");
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
                "CREATE KEYSPACE IF NOT EXISTS cairn_test WITH replication = {'class': 'SimpleStrategy', 'replication_factor': 1} AND durable_writes = true"
            ]
        );
        let tables = statements(&MIGRATIONS[1], "cairn_test", &Replication::Simple(1));
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

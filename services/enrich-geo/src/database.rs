//! MaxMind-format databases, read into memory (a file replaced while mapped could fault
//! the process) and reloaded when their file changes.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::SystemTime;

use cairn_enricher::{EnrichError, FactSet};
use maxminddb::Reader;
use serde::de::{IgnoredAny, MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};

/// Where an address is, as far as the databases know.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Location {
    /// ISO 3166-1 alpha-2 country code.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub country: Option<String>,
    /// The first subdivision (state, region), by its English name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub city: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub postal_code: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latitude: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub longitude: Option<f64>,
    /// IANA time zone, e.g. `Europe/London`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timezone: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub asn: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub as_organization: Option<String>,
}

impl Location {
    pub fn is_empty(&self) -> bool {
        *self == Location::default()
    }

    /// The location as facts (only what is known).
    pub fn facts(&self) -> FactSet {
        match serde_json::to_value(self) {
            Ok(serde_json::Value::Object(facts)) => facts,
            _ => FactSet::new(),
        }
    }

    /// Takes from `other` what this location does not know yet.
    fn complete_from(&mut self, other: Location) {
        fn fill<T>(mine: &mut Option<T>, theirs: Option<T>) {
            if mine.is_none() {
                *mine = theirs;
            }
        }
        fill(&mut self.country, other.country);
        fill(&mut self.region, other.region);
        fill(&mut self.city, other.city);
        fill(&mut self.postal_code, other.postal_code);
        fill(&mut self.latitude, other.latitude);
        fill(&mut self.longitude, other.longitude);
        fill(&mut self.timezone, other.timezone);
        fill(&mut self.asn, other.asn);
        fill(&mut self.as_organization, other.as_organization);
    }
}

/// One record in either layout: GeoIP2/GeoLite2 (nested, names by language) or
/// ip-location-db (flat).
#[derive(Deserialize)]
struct Record<'a> {
    #[serde(borrow)]
    country: Option<Coded<'a>>,
    #[serde(borrow)]
    registered_country: Option<Coded<'a>>,
    #[serde(borrow)]
    city: Option<CityName<'a>>,
    #[serde(borrow)]
    subdivisions: Option<Vec<Subdivision<'a>>>,
    #[serde(borrow)]
    postal: Option<Postal<'a>>,
    #[serde(borrow)]
    location: Option<Coordinates<'a>>,
    autonomous_system_number: Option<u32>,
    #[serde(borrow)]
    autonomous_system_organization: Option<&'a str>,
    // The flat layout.
    #[serde(borrow)]
    country_code: Option<&'a str>,
    #[serde(borrow)]
    state1: Option<&'a str>,
    #[serde(borrow)]
    postcode: Option<&'a str>,
    latitude: Option<f64>,
    longitude: Option<f64>,
    #[serde(borrow)]
    timezone: Option<&'a str>,
}

#[derive(Deserialize)]
struct Coded<'a> {
    #[serde(borrow)]
    iso_code: Option<&'a str>,
}

#[derive(Deserialize)]
struct Names<'a> {
    #[serde(borrow)]
    en: Option<&'a str>,
}

#[derive(Deserialize)]
struct Subdivision<'a> {
    #[serde(borrow)]
    iso_code: Option<&'a str>,
    #[serde(borrow)]
    names: Option<Names<'a>>,
}

#[derive(Deserialize)]
struct Postal<'a> {
    #[serde(borrow)]
    code: Option<&'a str>,
}

#[derive(Deserialize)]
struct Coordinates<'a> {
    latitude: Option<f64>,
    longitude: Option<f64>,
    #[serde(borrow)]
    time_zone: Option<&'a str>,
}

/// `city`: a record with names by language (GeoIP2), or the name itself (flat).
struct CityName<'a>(Option<&'a str>);

impl<'de: 'a, 'a> Deserialize<'de> for CityName<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct CityVisitor<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for CityVisitor<'a> {
            type Value = CityName<'a>;

            fn expecting(&self, formatter: &mut std::fmt::Formatter) -> std::fmt::Result {
                formatter.write_str("a city name or a city record")
            }

            fn visit_borrowed_str<E>(self, name: &'de str) -> Result<Self::Value, E> {
                Ok(CityName(Some(name)))
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut name = None;
                while let Some(key) = map.next_key::<&'de str>()? {
                    if key == "names" {
                        name = map.next_value::<Names<'de>>()?.en;
                    } else {
                        map.next_value::<IgnoredAny>()?;
                    }
                }
                Ok(CityName(name))
            }
        }
        deserializer.deserialize_any(CityVisitor(std::marker::PhantomData))
    }
}

impl Record<'_> {
    fn location(self) -> Location {
        let text = |value: Option<&str>| {
            value
                .map(str::trim)
                .filter(|value| !value.is_empty())
                .map(str::to_string)
        };
        let subdivision = self.subdivisions.and_then(|all| all.into_iter().next());
        let (latitude, longitude, time_zone) = match self.location {
            Some(at) => (at.latitude, at.longitude, at.time_zone),
            None => (None, None, None),
        };
        Location {
            country: text(
                self.country
                    .and_then(|country| country.iso_code)
                    .or(self.country_code)
                    .or(self.registered_country.and_then(|country| country.iso_code)),
            ),
            region: text(
                subdivision
                    .as_ref()
                    .and_then(|subdivision| subdivision.names.as_ref()?.en)
                    .or(subdivision
                        .as_ref()
                        .and_then(|subdivision| subdivision.iso_code))
                    .or(self.state1),
            ),
            city: text(self.city.and_then(|city| city.0)),
            postal_code: text(self.postal.and_then(|postal| postal.code).or(self.postcode)),
            latitude: latitude.or(self.latitude),
            longitude: longitude.or(self.longitude),
            timezone: text(time_zone.or(self.timezone)),
            asn: self.autonomous_system_number,
            as_organization: text(self.autonomous_system_organization),
        }
    }
}

/// Whether the databases can know where `address` is: private, loopback, link-local,
/// shared (CGNAT) and unspecified addresses are nowhere in particular.
pub fn is_public(address: IpAddr) -> bool {
    match address {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            !(v4.is_private()
                || v4.is_loopback()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || (a == 100 && (64..128).contains(&b)))
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public(IpAddr::V4(v4));
            }
            let first = v6.segments()[0];
            !(v6.is_loopback()
                || v6.is_unspecified()
                || (first & 0xfe00) == 0xfc00 // unique local
                || (first & 0xffc0) == 0xfe80) // link-local
        }
    }
}

/// `address` without its last octet (IPv4, also written as IPv4-mapped IPv6) or its
/// last 80 bits (IPv6).
pub fn anonymize(address: IpAddr) -> IpAddr {
    match address.to_canonical() {
        IpAddr::V4(v4) => {
            let [a, b, c, _] = v4.octets();
            IpAddr::V4([a, b, c, 0].into())
        }
        IpAddr::V6(v6) => {
            let mut segments = v6.segments();
            segments[3..].fill(0);
            IpAddr::V6(segments.into())
        }
    }
}

/// What a file looked like when it was read: a change means a new database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileStamp {
    modified: Option<SystemTime>,
    len: u64,
}

fn stamp(path: &Path) -> std::io::Result<FileStamp> {
    let metadata = std::fs::metadata(path)?;
    Ok(FileStamp {
        modified: metadata.modified().ok(),
        len: metadata.len(),
    })
}

fn read(path: &Path) -> Result<(Reader<Vec<u8>>, FileStamp), EnrichError> {
    let unusable = |err: &dyn std::fmt::Display| {
        EnrichError::Data(format!("geo database {}: {err}", path.display()))
    };
    let stamp = stamp(path).map_err(|err| unusable(&err))?;
    let reader = Reader::open_readfile(path).map_err(|err| unusable(&err))?;
    Ok((reader, stamp))
}

struct Database {
    path: PathBuf,
    reader: RwLock<Arc<Reader<Vec<u8>>>>,
    stamp: Mutex<FileStamp>,
}

/// The configured databases, asked in order: the first to know a field gives it.
pub struct Databases {
    databases: Vec<Database>,
}

impl Databases {
    /// Reads every database; an unreadable one is an error that names it.
    pub fn open(paths: &[PathBuf]) -> Result<Self, EnrichError> {
        let mut databases = Vec::new();
        for path in paths {
            let (reader, stamp) = read(path)?;
            tracing::info!(path = %path.display(), kind = %reader.metadata().database_type, "geo database loaded");
            databases.push(Database {
                path: path.clone(),
                reader: RwLock::new(Arc::new(reader)),
                stamp: Mutex::new(stamp),
            });
        }
        Ok(Self { databases })
    }

    /// Where `address` is; `None` for private addresses and addresses no database knows.
    pub fn locate(&self, address: IpAddr) -> Option<Location> {
        if !is_public(address) {
            return None;
        }
        let mut found = Location::default();
        for database in &self.databases {
            let reader = match database.reader.read() {
                Ok(reader) => reader.clone(),
                Err(poisoned) => poisoned.into_inner().clone(),
            };
            let record = reader
                .lookup(address)
                .and_then(|result| result.decode::<Record<'_>>());
            match record {
                Ok(Some(record)) => found.complete_from(record.location()),
                Ok(None) => {}
                Err(err) => {
                    tracing::debug!(path = %database.path.display(), error = %err, "geo lookup failed")
                }
            }
        }
        (!found.is_empty()).then_some(found)
    }

    /// Reads again every database whose file changed. A file that cannot be read (being
    /// written, say) keeps the previous database until a later check.
    pub fn reload_changed(&self) {
        for database in &self.databases {
            let Ok(mut known) = database.stamp.lock() else {
                continue;
            };
            match stamp(&database.path) {
                Ok(now) if now == *known => continue,
                Ok(_) => {}
                Err(err) => {
                    tracing::warn!(path = %database.path.display(), error = %err, "cannot check the geo database; keeping the loaded one");
                    continue;
                }
            }
            match read(&database.path) {
                Ok((reader, stamp)) => {
                    tracing::info!(path = %database.path.display(), kind = %reader.metadata().database_type, "geo database reloaded");
                    if let Ok(mut current) = database.reader.write() {
                        *current = Arc::new(reader);
                        *known = stamp;
                    }
                }
                Err(err) => {
                    tracing::warn!(error = %err, "cannot reload the geo database; keeping the loaded one")
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn testdata(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../testdata/geo")
            .join(name)
    }

    fn open(names: &[&str]) -> Databases {
        let paths: Vec<PathBuf> = names.iter().map(|name| testdata(name)).collect();
        Databases::open(&paths).unwrap()
    }

    fn at(databases: &Databases, ip: &str) -> Option<Location> {
        databases.locate(ip.parse().unwrap())
    }

    #[test]
    fn a_london_address_is_in_london() {
        let databases = open(&["GeoIP2-City-Test.mmdb"]);
        let london = at(&databases, "81.2.69.142").unwrap();
        assert_eq!(london.country.as_deref(), Some("GB"));
        assert_eq!(london.city.as_deref(), Some("London"));
        assert_eq!(london.region.as_deref(), Some("England"));
        assert_eq!(london.timezone.as_deref(), Some("Europe/London"));
        assert!((london.latitude.unwrap() - 51.5142).abs() < 0.01);
        assert!((london.longitude.unwrap() + 0.0931).abs() < 0.01);
    }

    #[test]
    fn ipv6_addresses_are_found_too() {
        let databases = open(&["GeoLite2-City-Test.mmdb"]);
        let found = at(&databases, "2001:218:85a3::8a2e:370:7334").unwrap();
        assert_eq!(found.country.as_deref(), Some("JP"));
        assert_eq!(found.timezone.as_deref(), Some("Asia/Tokyo"));
    }

    #[test]
    fn a_city_and_an_asn_database_complete_each_other() {
        let databases = open(&["GeoIP2-City-Test.mmdb", "GeoLite2-ASN-Test.mmdb"]);
        let found = at(&databases, "1.128.0.1").unwrap();
        assert_eq!(found.asn, Some(1221));
        assert_eq!(found.as_organization.as_deref(), Some("Telstra Pty Ltd"));
    }

    #[test]
    fn private_loopback_and_unknown_addresses_are_nowhere() {
        let databases = open(&["GeoIP2-City-Test.mmdb"]);
        for ip in [
            "10.1.2.3",
            "192.168.1.10",
            "172.16.0.1",
            "127.0.0.1",
            "169.254.1.1",
            "100.64.0.1",
            "0.0.0.0",
            "::1",
            "fd00::1",
            "fe80::1",
            "::ffff:10.0.0.1",
            "8.8.8.8",
        ] {
            assert_eq!(at(&databases, ip), None, "{ip}");
        }
    }

    #[test]
    fn anonymising_drops_the_host_part() {
        assert_eq!(
            anonymize("81.2.69.142".parse().unwrap()),
            "81.2.69.0".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            anonymize("::ffff:81.2.69.142".parse().unwrap()),
            "81.2.69.0".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            anonymize("2001:db8:1:2:3:4:5:6".parse().unwrap()),
            "2001:db8:1::".parse::<IpAddr>().unwrap()
        );
    }

    #[test]
    fn a_database_swapped_on_disk_is_read_again() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("geo.mmdb");
        std::fs::copy(testdata("GeoIP2-City-Test.mmdb"), &path).unwrap();
        let databases = Databases::open(std::slice::from_ref(&path)).unwrap();
        assert_eq!(
            at(&databases, "81.2.69.142").unwrap().city.as_deref(),
            Some("London")
        );

        // Replaced the way deployments do it: written beside, then renamed over.
        let next = dir.path().join("geo.mmdb.new");
        std::fs::copy(testdata("GeoIP2-Country-Test.mmdb"), &next).unwrap();
        std::fs::rename(&next, &path).unwrap();
        databases.reload_changed();
        let now = at(&databases, "81.2.69.142").unwrap();
        assert_eq!(now.country.as_deref(), Some("GB"));
        assert_eq!(now.city, None);

        // A broken file keeps the database that works.
        std::fs::write(&path, b"not a database").unwrap();
        databases.reload_changed();
        assert_eq!(
            at(&databases, "81.2.69.142").unwrap().country.as_deref(),
            Some("GB")
        );
    }

    #[test]
    fn a_missing_database_is_an_error_that_names_it() {
        let err = Databases::open(&[PathBuf::from("/nowhere/geo.mmdb")])
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("/nowhere/geo.mmdb"), "{err}");
    }

    /// A one-network IPv4 database in the flat layout of ip-location-db, written by the
    /// test (the format: a binary search tree, 16 zero bytes, the data, the metadata).
    fn flat_database(network: [u8; 3], record: &[(&str, Value)]) -> Vec<u8> {
        const BITS: usize = 24;
        let node_count = BITS as u32;
        let mut file = Vec::new();
        for depth in 0..BITS {
            let bit = (network[depth / 8] >> (7 - depth % 8)) & 1;
            let next = if depth + 1 == BITS {
                node_count + 16 // the data section's first (and only) record
            } else {
                depth as u32 + 1
            };
            let (left, right) = if bit == 0 {
                (next, node_count)
            } else {
                (node_count, next)
            };
            for value in [left, right] {
                file.extend_from_slice(&value.to_be_bytes()[1..]);
            }
        }
        file.extend_from_slice(&[0; 16]);
        encode_map(&mut file, record);
        file.extend_from_slice(b"\xAB\xCD\xEFMaxMind.com");
        encode_map(
            &mut file,
            &[
                ("node_count", Value::U32(node_count)),
                ("record_size", Value::U16(24)),
                ("ip_version", Value::U16(4)),
                ("database_type", Value::Text("ip-location-db-test")),
                ("binary_format_major_version", Value::U16(2)),
                ("binary_format_minor_version", Value::U16(0)),
                ("build_epoch", Value::U64(1_700_000_000)),
                ("languages", Value::Empty),
                ("description", Value::NoPairs),
            ],
        );
        file
    }

    enum Value {
        Text(&'static str),
        Double(f64),
        U16(u16),
        U32(u32),
        U64(u64),
        /// An empty array.
        Empty,
        /// An empty map.
        NoPairs,
    }

    fn encode_map(out: &mut Vec<u8>, pairs: &[(&str, Value)]) {
        out.push((7 << 5) | pairs.len() as u8);
        for (key, value) in pairs {
            out.push((2 << 5) | key.len() as u8);
            out.extend_from_slice(key.as_bytes());
            match value {
                Value::Text(text) => {
                    out.push((2 << 5) | text.len() as u8);
                    out.extend_from_slice(text.as_bytes());
                }
                Value::Double(number) => {
                    out.push((3 << 5) | 8);
                    out.extend_from_slice(&number.to_be_bytes());
                }
                Value::U16(number) => {
                    out.push((5 << 5) | 2);
                    out.extend_from_slice(&number.to_be_bytes());
                }
                Value::U32(number) => {
                    out.push((6 << 5) | 4);
                    out.extend_from_slice(&number.to_be_bytes());
                }
                Value::U64(number) => {
                    out.extend_from_slice(&[8, 9 - 7]); // extended type 9, 8 bytes
                    out.extend_from_slice(&number.to_be_bytes());
                }
                Value::Empty => out.extend_from_slice(&[0, 11 - 7]),
                Value::NoPairs => out.push(7 << 5),
            }
        }
    }

    #[test]
    fn the_flat_ip_location_db_layout_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dbip-city.mmdb");
        std::fs::write(
            &path,
            flat_database(
                [81, 2, 69],
                &[
                    ("city", Value::Text("London")),
                    ("country_code", Value::Text("GB")),
                    ("state1", Value::Text("England")),
                    ("postcode", Value::Text("EC1A")),
                    ("latitude", Value::Double(51.5)),
                    ("longitude", Value::Double(-0.12)),
                    ("timezone", Value::Text("Europe/London")),
                ],
            ),
        )
        .unwrap();
        let databases = Databases::open(&[path]).unwrap();
        let found = at(&databases, "81.2.69.200").unwrap();
        assert_eq!(
            found,
            Location {
                country: Some("GB".into()),
                region: Some("England".into()),
                city: Some("London".into()),
                postal_code: Some("EC1A".into()),
                latitude: Some(51.5),
                longitude: Some(-0.12),
                timezone: Some("Europe/London".into()),
                asn: None,
                as_organization: None,
            }
        );
        assert_eq!(at(&databases, "81.2.70.1"), None);
    }
}

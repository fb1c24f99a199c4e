//! `cairn.profile.v1.Profiles`: Get, Timeline and Export for readers, Delete for admins.

use bytes::Bytes;
use cairn_bus::{Bus, Outgoing, subjects};
use cairn_proto::event::v1::IdentifiedEvent;
use cairn_proto::identity::v1 as identity_pb;
use cairn_proto::profile::v1 as pb;
use cairn_proto::profile::v1::profiles_server::Profiles;
use cairn_runtime::auth::{Principal, Role, require_role};
use cairn_runtime::clock::now_ms;
use cairn_store::{Expect, ScanCursor, Store, TimelineCursor, TokenRange, Write};
use prost::Message as _;
use tonic::{Request, Response, Status};

use crate::error::ProfileError;
use crate::profile::Identifier;
use crate::store::{self, PROFILE_INDEX, PROFILES};

#[derive(Clone)]
pub struct ProfilesService<S> {
    pub store: S,
    pub bus: Bus,
}

fn authorize<T>(request: &Request<T>, role: Role) -> Result<(), ProfileError> {
    require_role(request.extensions().get::<Principal>(), role)?;
    Ok(())
}

fn required(value: &str, field: &str) -> Result<(), ProfileError> {
    if value.trim().is_empty() {
        return Err(ProfileError::InvalidArgument(format!("{field}: required")));
    }
    Ok(())
}

/// A timeline cursor as an opaque page token: `at.seen.hex(id)`.
fn page_token(cursor: &TimelineCursor) -> String {
    let id = cairn_runtime::encoding::hex(&cursor.id);
    format!("{}.{}.{id}", cursor.at_ms, cursor.seen)
}

fn parse_page_token(token: &str) -> Result<TimelineCursor, ProfileError> {
    let invalid = || {
        ProfileError::InvalidArgument(
            "page_token: not a token from a previous response".to_string(),
        )
    };
    let mut parts = token.splitn(3, '.');
    let at_ms = parts
        .next()
        .and_then(|part| part.parse().ok())
        .ok_or_else(invalid)?;
    let seen = parts
        .next()
        .and_then(|part| part.parse().ok())
        .ok_or_else(invalid)?;
    let hex = parts.next().ok_or_else(invalid)?.as_bytes();
    if hex.len() % 2 != 0 {
        return Err(invalid());
    }
    let digit = |byte: u8| char::from(byte).to_digit(16).ok_or_else(invalid);
    let id = hex
        .chunks_exact(2)
        .map(|pair| Ok((digit(pair[0])? * 16 + digit(pair[1])?) as u8))
        .collect::<Result<Vec<u8>, ProfileError>>()?;
    Ok(TimelineCursor {
        at_ms,
        id: Bytes::from(id),
        seen,
    })
}

#[tonic::async_trait]
impl<S: Store> Profiles for ProfilesService<S> {
    async fn get(
        &self,
        request: Request<pb::GetRequest>,
    ) -> Result<Response<pb::GetResponse>, Status> {
        authorize(&request, Role::Read)?;
        let found = match &request.get_ref().key {
            Some(pb::get_request::Key::ProfileId(id)) => {
                required(id, "profile_id")?;
                store::read(&self.store, id).await?
            }
            Some(pb::get_request::Key::Identifier(identifier)) => {
                required(&identifier.r#type, "identifier.type")?;
                required(&identifier.value, "identifier.value")?;
                let identifier = Identifier {
                    kind: identifier.r#type.clone(),
                    value: normalise(&identifier.r#type, &identifier.value),
                };
                store::lookup(&self.store, &identifier).await?
            }
            None => {
                return Err(ProfileError::InvalidArgument(
                    "key: give profile_id or identifier".to_string(),
                )
                .into());
            }
        };
        let stored = found.ok_or_else(|| ProfileError::NotFound("no such profile".to_string()))?;
        Ok(Response::new(pb::GetResponse {
            profile_id: stored.profile.id.clone(),
            version: stored.version,
            profile_json: stored.profile.view_json(now_ms()),
        }))
    }

    async fn timeline(
        &self,
        request: Request<pb::TimelineRequest>,
    ) -> Result<Response<pb::TimelineResponse>, Status> {
        authorize(&request, Role::Read)?;
        let body = request.get_ref();
        required(&body.profile_id, "profile_id")?;
        let size = match body.page_size {
            0 => 50,
            size if size > 500 => {
                return Err(
                    ProfileError::InvalidArgument("page_size: at most 500".to_string()).into(),
                );
            }
            size => size,
        };
        let cursor = match body.page_token.as_str() {
            "" => None,
            token => Some(parse_page_token(token)?),
        };
        let stored = store::read(&self.store, &body.profile_id)
            .await?
            .ok_or_else(|| ProfileError::NotFound(format!("no profile {}", body.profile_id)))?;
        let page = self
            .store
            .timeline(&PROFILES, stored.profile.id.as_bytes(), cursor, size)
            .await
            .map_err(ProfileError::from)?;
        let entries = page
            .entries
            .iter()
            .map(|entry| {
                let event_json = IdentifiedEvent::decode(entry.value.clone())
                    .ok()
                    .and_then(|event| event.envelope)
                    .map(|envelope| String::from_utf8_lossy(&envelope.raw).into_owned())
                    .unwrap_or_default();
                pb::TimelineEntry {
                    at: Some(cairn_runtime::clock::timestamp(entry.at_ms)),
                    message_id: String::from_utf8_lossy(&entry.id).into_owned(),
                    event_json,
                }
            })
            .collect();
        Ok(Response::new(pb::TimelineResponse {
            entries,
            next_page_token: page.next.as_ref().map(page_token).unwrap_or_default(),
        }))
    }

    async fn delete(
        &self,
        request: Request<pb::DeleteRequest>,
    ) -> Result<Response<pb::DeleteResponse>, Status> {
        authorize(&request, Role::Admin)?;
        let id = &request.get_ref().profile_id;
        required(id, "profile_id")?;
        let stored = store::read(&self.store, id)
            .await?
            .ok_or_else(|| ProfileError::NotFound(format!("no profile {id}")))?;
        let profile = stored.profile;
        // The profile, what was merged into it, and every way to find them.
        for gone in std::iter::once(&profile.id).chain(&profile.merged_from) {
            self.store
                .delete(&PROFILES, gone.as_bytes())
                .await
                .map_err(ProfileError::from)?;
        }
        for identifier in &profile.identifiers {
            let write = Write::new(store::index_key(identifier)).delete_record(Expect::Any);
            self.store
                .write(&PROFILE_INDEX, write)
                .await
                .map_err(ProfileError::from)?;
        }
        let identifiers: Vec<identity_pb::Identifier> = profile
            .identifiers
            .iter()
            .map(|identifier| identity_pb::Identifier {
                r#type: identifier.kind.clone(),
                value: identifier.value.clone(),
            })
            .collect();
        let deleted = pb::ProfileDeleted {
            profile_id: profile.id.clone(),
            identifiers: identifiers.clone(),
            at: Some(cairn_runtime::clock::timestamp(now_ms())),
        };
        self.bus
            .publish_all(vec![Outgoing {
                subject: subjects::PROFILES_DELETED.to_string(),
                message_id: Some(format!("deleted/{}", profile.id)),
                headers: async_nats::HeaderMap::new(),
                payload: Bytes::from(deleted.encode_to_vec()),
            }])
            .await
            .map_err(ProfileError::from)?;
        tracing::info!(profile_id = %profile.id, identifiers = identifiers.len(), "profile deleted");
        Ok(Response::new(pb::DeleteResponse { identifiers }))
    }

    type ExportStream = tokio_stream::wrappers::ReceiverStream<Result<pb::ExportResponse, Status>>;

    async fn export(
        &self,
        request: Request<pb::ExportRequest>,
    ) -> Result<Response<Self::ExportStream>, Status> {
        authorize(&request, Role::Read)?;
        let (sender, receiver) = tokio::sync::mpsc::channel(64);
        let store = self.store.clone();
        tokio::spawn(async move {
            let now = now_ms();
            let mut cursor: Option<ScanCursor> = None;
            loop {
                let page = match store.scan(&PROFILES, TokenRange::FULL, cursor, 200).await {
                    Ok(page) => page,
                    Err(err) => {
                        let _ = sender.send(Err(ProfileError::from(err).into())).await;
                        return;
                    }
                };
                for (_, record) in &page.records {
                    let Ok(profile) = store::decode(&record.value) else {
                        continue;
                    };
                    if profile.merged_into.is_some() {
                        continue;
                    }
                    let item = pb::ExportResponse {
                        profile_id: profile.id.clone(),
                        profile_json: profile.view_json(now),
                    };
                    if sender.send(Ok(item)).await.is_err() {
                        return; // the client went away
                    }
                }
                cursor = page.next;
                if cursor.is_none() {
                    return;
                }
            }
        });
        Ok(Response::new(tokio_stream::wrappers::ReceiverStream::new(
            receiver,
        )))
    }
}

/// Identifiers are looked up as identity normalises them.
fn normalise(kind: &str, value: &str) -> String {
    let value = value.trim();
    match kind {
        "email" => value.to_lowercase(),
        "phone" => value.chars().filter(char::is_ascii_digit).collect(),
        _ => value.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_tokens_round_trip_and_refuse_garbage() {
        let cursor = TimelineCursor {
            at_ms: -5,
            id: Bytes::from_static(b"m.1"),
            seen: 40,
        };
        assert_eq!(parse_page_token(&page_token(&cursor)).unwrap(), cursor);
        assert!(parse_page_token("nonsense").is_err());
        assert!(parse_page_token("1.2.zz").is_err());
        assert!(parse_page_token("1.2.éé").is_err(), "not hex, and no panic");
        assert!(parse_page_token("1.2.+1").is_err());
    }
}

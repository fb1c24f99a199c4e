//! `cairn.identity.v1.Identity`: Resolve and Explain for readers, Split for writers.

use std::sync::Arc;

use cairn_bus::Bus;
use cairn_proto::identity::v1 as pb;
use cairn_proto::identity::v1::identity_server::Identity;
use cairn_runtime::auth::{Principal, Role, require_role};
use cairn_runtime::clock::now_ms;
use cairn_store::Store;
use tonic::{Request, Response, Status};

use crate::error::IdentityError;
use crate::graph::Graph;
use crate::handler::merge_message;
use crate::proto;
use crate::rules::Identifier;

#[derive(Clone)]
pub struct IdentityService<S> {
    pub graph: Arc<Graph<S>>,
    pub bus: Bus,
}

fn authorize<T>(request: &Request<T>, role: Role) -> Result<(), IdentityError> {
    require_role(request.extensions().get::<Principal>(), role)?;
    Ok(())
}

impl<S: Store> IdentityService<S> {
    /// An identifier from the API, normalised like the ones in events.
    fn identifier(
        &self,
        given: Option<&pb::Identifier>,
        field: &str,
    ) -> Result<Identifier, IdentityError> {
        let given =
            given.ok_or_else(|| IdentityError::InvalidArgument(format!("{field}: required")))?;
        if self.graph.rules().get(&given.r#type).is_none() {
            return Err(IdentityError::InvalidArgument(format!(
                "{field}.type: unknown identifier type {:?} (known: {})",
                given.r#type,
                self.graph
                    .rules()
                    .types()
                    .iter()
                    .map(|kind| kind.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        self.graph
            .rules()
            .identifier(&given.r#type, &given.value)
            .ok_or_else(|| {
                IdentityError::InvalidArgument(format!(
                    "{field}.value: {:?} is blocked or not a valid {}",
                    given.value, given.r#type
                ))
            })
    }
}

#[tonic::async_trait]
impl<S: Store> Identity for IdentityService<S> {
    async fn resolve(
        &self,
        request: Request<pb::ResolveRequest>,
    ) -> Result<Response<pb::ResolveResponse>, Status> {
        authorize(&request, Role::Read)?;
        let identifier = self.identifier(request.get_ref().identifier.as_ref(), "identifier")?;
        let profile = self
            .graph
            .lookup(&identifier)
            .await?
            .ok_or_else(|| IdentityError::NotFound(format!("no profile has {identifier}")))?;
        Ok(Response::new(pb::ResolveResponse {
            profile_id: profile.id,
            identifiers: profile.identifiers.iter().map(proto::identifier).collect(),
        }))
    }

    async fn explain(
        &self,
        request: Request<pb::ExplainRequest>,
    ) -> Result<Response<pb::ExplainResponse>, Status> {
        authorize(&request, Role::Read)?;
        let id = &request.get_ref().profile_id;
        if id.is_empty() {
            return Err(IdentityError::InvalidArgument("profile_id: required".to_string()).into());
        }
        let (profile_id, history) = self.graph.history(id).await?;
        Ok(Response::new(pb::ExplainResponse {
            profile_id,
            history: history.iter().map(proto::merge_record).collect(),
        }))
    }

    async fn split(
        &self,
        request: Request<pb::SplitRequest>,
    ) -> Result<Response<pb::SplitResponse>, Status> {
        authorize(&request, Role::Write)?;
        let body = request.get_ref();
        if body.profile_id.is_empty() {
            return Err(IdentityError::InvalidArgument("profile_id: required".to_string()).into());
        }
        let mut identifiers = Vec::with_capacity(body.identifiers.len());
        for (index, given) in body.identifiers.iter().enumerate() {
            identifiers.push(self.identifier(Some(given), &format!("identifiers[{index}]"))?);
        }
        let split = self
            .graph
            .split(&body.profile_id, &identifiers, now_ms())
            .await?;
        self.bus
            .publish_all(vec![merge_message(&split.entry, self.bus.partitions())?])
            .await
            .map_err(IdentityError::from)?;
        tracing::info!(from = %split.entry.from, into = %split.entry.into, "profile split");
        Ok(Response::new(pb::SplitResponse {
            profile_id: split.entry.into,
            from_profile_id: split.entry.from,
        }))
    }
}

//! `cairn.dispatch.v1.Templates`: templates saved (checked strictly, versioned), read,
//! listed, and previewed for a profile; `cairn.dispatch.v1.Suppressions`: addresses
//! kept from campaign emails, by hand.

use cairn_proto::dispatch::v1 as pb;
use cairn_proto::dispatch::v1::suppressions_server::Suppressions;
use cairn_proto::dispatch::v1::templates_server::Templates;
use cairn_runtime::auth::{Principal, Role, require_role};
use cairn_runtime::clock::timestamp;
use cairn_store::Store;
use tonic::{Request, Response, Status};

use crate::error::DispatchError;
use crate::send;
use crate::templates::{self, Template};

#[derive(Clone)]
pub struct TemplatesService<S> {
    pub store: S,
    pub config: crate::DispatchConfig,
}

fn authorize<T>(request: &Request<T>, role: Role) -> Result<(), Status> {
    require_role(request.extensions().get::<Principal>(), role)
        .map(|_| ())
        .map_err(|err| cairn_runtime::error::to_status(&err))
}

fn to_proto(template: Template) -> pb::Template {
    pb::Template {
        name: template.name,
        subject: template.subject,
        text: template.text,
        html: template.html.unwrap_or_default(),
        list: template.list.unwrap_or_default(),
        version: template.version,
        updated_at: Some(timestamp(template.updated_ms)),
    }
}

#[tonic::async_trait]
impl<S: Store> Templates for TemplatesService<S> {
    async fn put(
        &self,
        request: Request<pb::PutRequest>,
    ) -> Result<Response<pb::PutResponse>, Status> {
        authorize(&request, Role::Write)?;
        let template = request.into_inner().template.ok_or_else(|| {
            Status::invalid_argument("template: required (name, subject, text or html)")
        })?;
        let saved = templates::put(
            &self.store,
            Template {
                name: template.name,
                subject: template.subject,
                text: template.text,
                html: Some(template.html).filter(|html| !html.trim().is_empty()),
                list: Some(template.list.trim().to_string()).filter(|list| !list.is_empty()),
                version: 0,
                updated_ms: 0,
            },
        )
        .await?;
        Ok(Response::new(pb::PutResponse {
            template: Some(to_proto(saved)),
        }))
    }

    async fn get(
        &self,
        request: Request<pb::GetRequest>,
    ) -> Result<Response<pb::GetResponse>, Status> {
        authorize(&request, Role::Read)?;
        let template = templates::get(&self.store, &request.into_inner().name).await?;
        Ok(Response::new(pb::GetResponse {
            template: Some(to_proto(template)),
        }))
    }

    async fn list(
        &self,
        request: Request<pb::ListRequest>,
    ) -> Result<Response<pb::ListResponse>, Status> {
        authorize(&request, Role::Read)?;
        let templates = templates::list(&self.store).await?;
        Ok(Response::new(pb::ListResponse {
            templates: templates.into_iter().map(to_proto).collect(),
        }))
    }

    async fn preview(
        &self,
        request: Request<pb::PreviewRequest>,
    ) -> Result<Response<pb::PreviewResponse>, Status> {
        authorize(&request, Role::Read)?;
        let request = request.into_inner();
        let params = if request.params_json.trim().is_empty() {
            serde_json::Value::Object(Default::default())
        } else {
            serde_json::from_str(&request.params_json)
                .map_err(|err| Status::invalid_argument(format!("params_json: not JSON: {err}")))?
        };
        // The template must exist: a missing one is NotFound, not a failed email.
        templates::get(&self.store, &request.name).await?;
        let send::Composed { to, rendered, .. } = send::compose(
            &self.store,
            &self.config,
            &request.name,
            &request.profile_id,
            "preview",
            params,
        )
        .await?
        .map_err(|reason| {
            Status::from(DispatchError::InvalidArgument(format!(
                "template {} for profile {}: {reason}",
                request.name, request.profile_id
            )))
        })?;
        Ok(Response::new(pb::PreviewResponse {
            to: to.email.to_string(),
            subject: rendered.subject,
            text: rendered.text,
            html: rendered.html.unwrap_or_default(),
        }))
    }
}

#[derive(Clone)]
pub struct SuppressionsService {
    pub bucket: async_nats::jetstream::kv::Store,
}

/// The address and list of a request: a valid address, and a list name or nothing.
fn address_and_list(email: &str, list: &str) -> Result<(String, Option<String>), Status> {
    let email = email.trim();
    let address: lettre::Address = email.parse().map_err(|err| {
        Status::invalid_argument(format!("email: {email:?} is not an address: {err}"))
    })?;
    let list = list.trim();
    if !list.is_empty() && !cairn_bus::suppressions::list_name_ok(list) {
        return Err(Status::invalid_argument(format!(
            "list: {list:?} must be 1 to 64 lower-case letters, digits, _ or -"
        )));
    }
    Ok((
        address.to_string(),
        Some(list.to_string()).filter(|list| !list.is_empty()),
    ))
}

#[tonic::async_trait]
impl Suppressions for SuppressionsService {
    async fn add(
        &self,
        request: Request<pb::SuppressionsAddRequest>,
    ) -> Result<Response<pb::SuppressionsAddResponse>, Status> {
        authorize(&request, Role::Write)?;
        let request = request.into_inner();
        let (email, list) = address_and_list(&request.email, &request.list)?;
        let reason = request.reason.trim();
        if reason.is_empty() || reason.len() > 200 {
            return Err(Status::invalid_argument(
                "reason: required, at most 200 characters (e.g. complained)",
            ));
        }
        cairn_bus::suppressions::add(&self.bucket, &email, list.as_deref(), reason)
            .await
            .map_err(|err| Status::from(DispatchError::Bus(err)))?;
        tracing::info!(
            list = list.as_deref().unwrap_or("*"),
            reason,
            "an address suppressed by hand"
        );
        Ok(Response::new(pb::SuppressionsAddResponse {}))
    }

    async fn remove(
        &self,
        request: Request<pb::SuppressionsRemoveRequest>,
    ) -> Result<Response<pb::SuppressionsRemoveResponse>, Status> {
        authorize(&request, Role::Write)?;
        let request = request.into_inner();
        let (email, list) = address_and_list(&request.email, &request.list)?;
        let removed = cairn_bus::suppressions::remove(&self.bucket, &email, list.as_deref())
            .await
            .map_err(|err| Status::from(DispatchError::Bus(err)))?;
        Ok(Response::new(pb::SuppressionsRemoveResponse { removed }))
    }

    async fn get(
        &self,
        request: Request<pb::SuppressionsGetRequest>,
    ) -> Result<Response<pb::SuppressionsGetResponse>, Status> {
        authorize(&request, Role::Read)?;
        let request = request.into_inner();
        let (email, list) = address_and_list(&request.email, &request.list)?;
        let reason = cairn_bus::suppressions::find(&self.bucket, &email, list.as_deref())
            .await
            .map_err(|err| Status::from(DispatchError::Bus(err)))?;
        Ok(Response::new(pb::SuppressionsGetResponse {
            suppressed: reason.is_some(),
            reason: reason.unwrap_or_default(),
        }))
    }
}

//! `cairn.dispatch.v1.Templates`: templates saved (checked strictly, versioned), read,
//! listed, and previewed for a profile.

use cairn_proto::dispatch::v1 as pb;
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

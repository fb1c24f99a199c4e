//! `GET /v1/personalize?anonymousId=...`: what a visitor on the site now is shown,
//! answered from the PERSONALIZATION bucket the segmenter keeps warm (see
//! [`cairn_bus::personalization`]): two key reads, the id's key leading to the
//! profile's answer. Nothing is evaluated on the request. Browsers send their write key
//! and anonymous id; servers holding a read token may look people up by `userId`
//! (tried first) too.
//!
//! The answer names the profile, the segments it is in, and the web content of each
//! campaign that has some for it, entered less than `CAIRN_WEB_CONTENT_TTL` ago. A
//! visitor never seen, or in no segment and no campaign, gets an empty answer.

use std::time::Duration;

use async_nats::jetstream::kv;
use cairn_bus::BusError;
use cairn_bus::personalization::{identifier_key, profile_key};
use cairn_proto::personalize::v1::Answer;
use cairn_runtime::clock::{text, timestamp_ms};
use prost::Message as _;
use serde::{Deserialize, Serialize};

use crate::error::CollectorError;

/// The query of a personalization request. The write key may come in the query (a
/// browser sends no `Authorization` header without a preflight) or as Basic auth.
#[derive(Debug, Default, Deserialize)]
pub struct PersonalizeQuery {
    #[serde(rename = "writeKey")]
    pub write_key: Option<String>,
    #[serde(rename = "anonymousId")]
    pub anonymous_id: Option<String>,
    #[serde(rename = "userId")]
    pub user_id: Option<String>,
}

/// The answer, as JSON.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Personalized {
    /// `null` for a visitor with no answer.
    pub profile_id: Option<String>,
    /// The segments the profile is in, by name.
    pub segments: Vec<String>,
    /// Web campaign content due now, newest first.
    pub content: Vec<Content>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Content {
    pub campaign: String,
    pub state: String,
    /// The content with its parameters filled in.
    pub content: String,
    pub params: serde_json::Value,
    /// When the profile entered the state (RFC 3339).
    pub at: String,
}

/// Reads answers from the bucket.
#[derive(Clone)]
pub struct Personalizer {
    bucket: kv::Store,
    content_ttl: Duration,
}

impl Personalizer {
    pub fn new(bucket: kv::Store, content_ttl: Duration) -> Self {
        Self {
            bucket,
            content_ttl,
        }
    }

    /// The answer for the visitor `query` names, as of `now_ms`.
    pub async fn answer(
        &self,
        query: &PersonalizeQuery,
        now_ms: i64,
    ) -> Result<Personalized, CollectorError> {
        let given: Vec<(&str, &str)> = [
            ("user_id", query.user_id.as_deref()),
            ("anonymous_id", query.anonymous_id.as_deref()),
        ]
        .into_iter()
        .filter_map(|(kind, value)| Some((kind, value?.trim())))
        .filter(|(_, value)| !value.is_empty())
        .collect();
        if given.is_empty() {
            return Err(CollectorError::BadQuery(
                "anonymousId or userId: give at least one (neither was given)".to_string(),
            ));
        }
        for (kind, value) in given {
            let Some(key) = identifier_key(kind, value) else {
                continue;
            };
            let Some(profile_id) = self.get(&key).await? else {
                continue;
            };
            let Some(answer_key) = profile_key(&String::from_utf8_lossy(&profile_id)) else {
                continue;
            };
            if let Some(value) = self.get(&answer_key).await? {
                let answer = Answer::decode(value).map_err(|err| {
                    CollectorError::Bus(BusError::Unavailable(format!(
                        "answer {answer_key} is damaged: {err}"
                    )))
                })?;
                return Ok(personalized(&answer, now_ms, self.content_ttl));
            }
        }
        Ok(Personalized::default())
    }

    async fn get(&self, key: &str) -> Result<Option<bytes::Bytes>, CollectorError> {
        self.bucket.get(key).await.map_err(|err| {
            CollectorError::Bus(BusError::Unavailable(format!(
                "{}: {key}: {err}",
                cairn_bus::personalization::BUCKET
            )))
        })
    }
}

/// What `answer` shows at `now_ms`: its segments, and the web content entered within
/// `ttl` (none from the future), newest first.
pub fn personalized(answer: &Answer, now_ms: i64, ttl: Duration) -> Personalized {
    let ttl_ms = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX);
    let mut content: Vec<(i64, Content)> = answer
        .web
        .iter()
        .filter_map(|(campaign, web)| {
            let at_ms = web.at.as_ref().map_or(0, timestamp_ms);
            let due = at_ms <= now_ms && now_ms - at_ms < ttl_ms;
            due.then(|| {
                let params = serde_json::from_str(&web.params_json)
                    .unwrap_or(serde_json::Value::Object(Default::default()));
                (
                    at_ms,
                    Content {
                        campaign: campaign.clone(),
                        state: web.state.clone(),
                        content: web.content.clone(),
                        params,
                        at: text(at_ms),
                    },
                )
            })
        })
        .collect();
    content.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.campaign.cmp(&b.1.campaign)));
    Personalized {
        profile_id: Some(answer.profile_id.clone()),
        segments: answer
            .segments
            .iter()
            .filter(|(_, membership)| membership.member)
            .map(|(segment, _)| segment.clone())
            .collect(),
        content: content.into_iter().map(|(_, content)| content).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_proto::personalize::v1::{Membership, WebContent};
    use cairn_runtime::clock::timestamp;

    fn web(at_ms: i64, content: &str) -> WebContent {
        WebContent {
            state: "offered".into(),
            content: content.into(),
            params_json: r#"{"section":"shoes"}"#.into(),
            entry: 1,
            at: Some(timestamp(at_ms)),
            idempotency_key: String::new(),
        }
    }

    #[test]
    fn an_answer_shows_current_segments_and_content_due_now_newest_first() {
        let member = |member| Membership {
            member,
            profile_version: 1,
            at: None,
        };
        let answer = Answer {
            profile_id: "p1".into(),
            identifiers: Vec::new(),
            segments: [
                ("vip".into(), member(true)),
                ("churned".into(), member(false)),
            ]
            .into_iter()
            .collect(),
            web: [
                ("old".into(), web(1_000, "expired")),
                ("offer".into(), web(50_000, "1+1 on shoes")),
                ("welcome".into(), web(60_000, "Register and win $5")),
                ("later".into(), web(90_000, "not yet")),
            ]
            .into_iter()
            .collect(),
        };
        let shown = personalized(&answer, 61_000, Duration::from_secs(30));
        assert_eq!(shown.profile_id.as_deref(), Some("p1"));
        assert_eq!(shown.segments, vec!["vip".to_string()]);
        let content: Vec<&str> = shown.content.iter().map(|c| c.content.as_str()).collect();
        assert_eq!(content, vec!["Register and win $5", "1+1 on shoes"]);
        assert_eq!(shown.content[1].params["section"], "shoes");
        assert_eq!(shown.content[1].campaign, "offer");
    }
}

//! `cairn bench dispatch`: emails/s through the dispatcher to a local SMTP server over
//! 8 connections: campaign sends queued on `campaign.sends`, each rendered from a
//! template for its profile and sent once (send records, the daily cap, the
//! suppression check, the SMTP exchange).
//!
//! The SMTP server is a minimal one started here that accepts every email and counts
//! it (what is measured is the dispatcher, not a mail server); `--smtp URL` sends to
//! another instead.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use cairn_bus::{Bus, BusConfig, Outgoing, subjects};
use cairn_proto::campaign::v1::Action;
use cairn_runtime::Settings;
use cairn_store::{Expect, Store as _, Write};
use prost::Message as _;
use serde_json::json;
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};

use super::DispatchArgs;
use crate::modules;

/// An SMTP server that takes every email: answers each command, reads each message to
/// its end, counts it.
async fn smtp_sink(accepted: Arc<AtomicUsize>) -> anyhow::Result<String> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("smtp://{}", listener.local_addr()?);
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            let accepted = accepted.clone();
            tokio::spawn(async move {
                // Replies are small: no waiting to fill packets.
                let _ = socket.set_nodelay(true);
                let (read, mut write) = socket.into_split();
                let mut lines = BufReader::new(read).lines();
                if write.write_all(b"220 bench ESMTP\r\n").await.is_err() {
                    return;
                }
                let mut in_data = false;
                while let Ok(Some(line)) = lines.next_line().await {
                    let reply: &[u8] = if in_data {
                        if line != "." {
                            continue;
                        }
                        in_data = false;
                        accepted.fetch_add(1, Ordering::Relaxed);
                        b"250 2.0.0 accepted\r\n"
                    } else {
                        let verb = line.get(..4).unwrap_or_default().to_ascii_uppercase();
                        match verb.as_str() {
                            "EHLO" => b"250 bench\r\n",
                            "DATA" => {
                                in_data = true;
                                b"354 go on\r\n"
                            }
                            "QUIT" => {
                                let _ = write.write_all(b"221 bye\r\n").await;
                                return;
                            }
                            _ => b"250 OK\r\n",
                        }
                    };
                    if write.write_all(reply).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    Ok(url)
}

pub async fn run(args: DispatchArgs) -> anyhow::Result<()> {
    let settings = Settings::from_env(&modules::all_vars())?;
    let dir = tempfile::tempdir()?;
    let (nats_url, _server) = super::nats(&settings, &dir.path().join("nats")).await?;
    let accepted = Arc::new(AtomicUsize::new(0));
    let smtp = match &args.smtp {
        Some(url) => url.clone(),
        None => smtp_sink(accepted.clone()).await?,
    };
    let store = super::embedded_store(&dir.path().join("store"))?;
    cairn_dispatcher::templates::put(
        &store,
        cairn_dispatcher::templates::Template {
            name: "reminder".into(),
            subject: "{{ profile.traits.name }}, your {{ params.section }} are waiting".into(),
            text: "Hi {{ profile.traits.name }},\n\nyour cart is waiting: {{ params.section }}.\n".into(),
            html: Some("<p>Hi {{ profile.traits.name }},</p><p>your cart is waiting: <b>{{ params.section }}</b>.</p>".into()),
            list: None,
            version: 0,
            updated_ms: 0,
        },
    )
    .await?;
    for n in 0..args.profiles {
        let profile = cairn_profile_store::profile::Profile {
            id: format!("p{n:08}"),
            traits: [
                ("email", json!(format!("person{n}@example.com"))),
                ("name", json!(format!("Person {n}"))),
            ]
            .into_iter()
            .map(|(name, value)| {
                (
                    name.to_string(),
                    cairn_profile_store::profile::Stamped { value, at: 1 },
                )
            })
            .collect(),
            ..Default::default()
        };
        store
            .write(
                &cairn_profile_store::store::PROFILES,
                Write::new(Bytes::from(profile.id.clone()))
                    .record(Expect::Any, cairn_profile_store::store::encode(&profile)?),
            )
            .await?;
    }
    let connections = args.connections.to_string();
    let context = super::context(
        &nats_url,
        &[
            ("CAIRN_EMAIL_TRANSPORT", "smtp"),
            ("CAIRN_SMTP_URL", smtp.as_str()),
            ("CAIRN_SMTP_CONNECTIONS", connections.as_str()),
            ("CAIRN_EMAIL_QUIET_HOURS", "off"),
            ("CAIRN_EMAIL_DAILY_CAP", "0"),
            ("CAIRN_EMAIL_LINK_SECRET", "bench-link-secret-0123"),
        ],
    )?;
    let bus_config = BusConfig::for_url(&nats_url);
    let bus = Bus::connect(&bus_config, "cairn-bench").await?;
    bus.ensure_stream(cairn_bus::streams::campaigns(&bus_config))
        .await?;
    let sends: Vec<Outgoing> = (0..args.emails)
        .map(|n| {
            let profile_id = format!("p{:08}", n % args.profiles);
            let action = Action {
                campaign: "bench".into(),
                profile_id: profile_id.clone(),
                state: "abandoned".into(),
                channel: "email".into(),
                target: "reminder".into(),
                params_json: json!({"section": "shoes"}).to_string(),
                entry: 1,
                at: Some(std::time::SystemTime::now().into()),
                idempotency_key: format!("bench:{n}"),
                send_at: String::new(),
                untracked: false,
            };
            Outgoing {
                subject: subjects::campaign_sends(bus.partitions().of(&profile_id)),
                message_id: Some(format!("bench-send-{n}")),
                headers: async_nats::HeaderMap::new(),
                payload: Bytes::from(action.encode_to_vec()),
            }
        })
        .collect();
    // The sends wait in the stream; the clock starts when the dispatcher does.
    for chunk in sends.chunks(5_000) {
        bus.publish_all(chunk.to_vec()).await?;
    }
    println!(
        "cairn bench dispatch: {} emails to {} profiles, {} SMTP connections to {}",
        args.emails,
        args.profiles,
        args.connections,
        if args.smtp.is_some() {
            "the given server"
        } else {
            "a local server that accepts all"
        }
    );
    let started = Instant::now();
    let module = cairn_dispatcher::start(&context, store).await?;
    let served = super::serve(module, &context).await?;
    super::drained(
        &bus,
        cairn_bus::streams::CAMPAIGNS,
        cairn_dispatcher::send::SERVICE,
    )
    .await?;
    let elapsed = started.elapsed();
    context.shutdown.trigger();
    served.host.await??;
    let per_second = args.emails as f64 / elapsed.as_secs_f64().max(1e-6);
    let counted = accepted.load(Ordering::Relaxed);
    println!(
        "  {} emails sent in {:.1} s: {per_second:.0} emails/s{}",
        args.emails,
        elapsed.as_secs_f64(),
        if args.smtp.is_none() {
            format!(" ({counted} accepted by the server)")
        } else {
            String::new()
        }
    );
    println!(
        "{}",
        json!({"emails_per_s": per_second.round(), "emails": args.emails, "connections": args.connections})
    );
    if args.smtp.is_none() && counted != args.emails {
        anyhow::bail!("the server accepted {counted} emails, not {}", args.emails);
    }
    tokio::time::sleep(Duration::from_millis(10)).await;
    Ok(())
}

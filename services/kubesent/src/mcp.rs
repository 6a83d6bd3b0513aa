//! `kubesent mcp`: KubeSent for agents, as a Model Context Protocol server (the official Rust SDK, rmcp)
//! over stdio or Streamable HTTP. Read-only tools answer what `kubesent incidents`, `incidents show`,
//! `diagnose`, `policy show` and `resume` would: incidents, one incident's whole history, a live pod's
//! diagnosis, the policy and guardrail state, what waits for approval. Write tools (approve, reject, undo,
//! pause, resume) exist only with `--allow-writes` and an operator credential, each attributed to the MCP
//! client's declared name and the operator's NATS user, each refusing what the CLI refuses.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use anyhow::Context as _;
use async_nats::jetstream;
use clap::{Args, Parser};
use kubesent_common::nats::{self, NatsArgs, Role};
use kubesent_proto::{
    self as proto, IncidentId,
    autonomy::{self as earned, ActionClass, ClassRecord, Override},
    intent::Phase,
};
use kubesent_remediator::{
    guardrails::{LEDGER_KEY, Ledger, PAUSE_KEY},
    operator::{Operator, Taken},
};
use rmcp::{
    ErrorData, RoleServer, ServerHandler, ServiceExt as _,
    handler::server::{router::tool::ToolRouter, wrapper::Parameters},
    model::{CallToolResult, ContentBlock, ServerCapabilities, ServerConfig},
    schemars::{self, JsonSchema},
    service::RequestContext,
    tool, tool_handler, tool_router,
};
use secrecy::{ExposeSecret as _, SecretString};
use serde::Deserialize;
use serde_json::{Value, json};
use tracing::info;

/// The largest answer a tool gives (its JSON and text are cut beyond, saying so).
pub const MAX_ANSWER_BYTES: usize = 96 * 1024;
/// The most incidents `list_incidents` returns.
pub const MAX_INCIDENTS: usize = 200;

/// `kubesent mcp`
#[derive(Debug, Args)]
pub struct McpArgs {
    /// How to reach NATS to read (the reader's user by default: `KUBESENT_NATS_USER`, …).
    #[command(flatten)]
    pub nats: NatsArgs,
    /// Serve Streamable HTTP on this address (at `/mcp`) instead of stdio.
    #[arg(long, env = "KUBESENT_MCP_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Offer the write tools (approve, reject, undo, pause, resume); they need an operator credential.
    #[arg(long, env = "KUBESENT_MCP_ALLOW_WRITES")]
    pub allow_writes: bool,
    /// The operator's NATS user the write tools act as.
    #[arg(long, env = "KUBESENT_MCP_OPERATOR_USER", default_value = "kubesent-operator")]
    pub operator_user: String,
    /// The operator's NATS password (from a Secret).
    #[arg(long, env = "KUBESENT_MCP_OPERATOR_PASSWORD", hide_env_values = true)]
    pub operator_password: Option<SecretString>,
    /// The remediators' hourly action budget (their `--max-actions-per-hour`), for the budget left.
    #[arg(long, env = "KUBESENT_MAX_ACTIONS_PER_HOUR", default_value_t = 30)]
    pub max_actions_per_hour: u32,
    /// Kubernetes API URL for `undo`; unset: in-cluster configuration or the kubeconfig (which
    /// `diagnose_pod` always reads, as `kubesent diagnose` does).
    #[arg(long, env = "KUBESENT_KUBE_API_URL")]
    pub kube_api_url: Option<String>,
}

/// KubeSent's MCP server.
#[derive(Clone)]
pub struct KubeSentMcp {
    js: jetstream::Context,
    operator: Option<Arc<Operator>>,
    kube_api_url: Option<String>,
    /// The remediators' hourly action budget.
    budget: u32,
    /// This session's subscriptions to incidents (clients of protocols before 2026-07-28), by URI.
    subscriptions:
        Arc<std::sync::Mutex<std::collections::BTreeMap<String, tokio_util::sync::CancellationToken>>>,
    tool_router: ToolRouter<Self>,
}

/// `list_incidents`' arguments.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListIncidents {
    /// Only this namespace.
    #[serde(default)]
    pub namespace: Option<String>,
    /// Only incidents whose latest result is this (healed, denied, suggested, diagnosis_only, awaiting_approval, …).
    #[serde(default)]
    pub result: Option<String>,
    /// Only incidents recorded this recently: 30m, 12h, 7d.
    #[serde(default)]
    pub since: Option<String>,
    /// Only this workload (a Deployment's, StatefulSet's, … name, or a bare pod's): with `namespace`, what
    /// happened to `shop/checkout`.
    #[serde(default)]
    pub workload: Option<String>,
}

/// An incident.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct IncidentArg {
    /// The incident id: `inc-` and 24 hex digits.
    pub incident: String,
}

/// A rejection.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RejectArg {
    /// The incident id: `inc-` and 24 hex digits.
    pub incident: String,
    /// Why (recorded in the outcome).
    pub reason: String,
}

/// A pod.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PodArg {
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub pod: String,
}

/// Why the kill switch is turned on.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PauseArg {
    /// Why (recorded in every outcome while paused).
    pub reason: String,
}

fn invalid(message: impl Into<String>) -> ErrorData {
    ErrorData::invalid_params(message.into(), None)
}

fn failed(error: impl std::fmt::Display) -> ErrorData {
    ErrorData::internal_error(error.to_string(), None)
}

/// `text` checked as an incident id.
fn incident(text: &str) -> Result<IncidentId, ErrorData> {
    IncidentId::parse(text)
        .ok_or_else(|| invalid(format!("{text:?} is not an incident id (inc- and 24 hex digits)")))
}

/// `text` cut to at most `max` bytes at a character boundary; whether it was cut.
fn cut(text: &mut String, max: usize) -> bool {
    if text.len() <= max {
        return false;
    }
    let mut at = max;
    while !text.is_char_boundary(at) {
        at -= 1;
    }
    text.truncate(at);
    true
}

/// A DNS-1123 subdomain (a pod's name) of at most 253 characters.
fn is_object_name(text: &str) -> bool {
    !text.is_empty() && text.len() <= 253 && text.split('.').all(proto::is_dns_label)
}

/// A short free text (a reason), without control characters.
fn reason(text: &str) -> Result<String, ErrorData> {
    let text = text.trim();
    if text.is_empty() || text.len() > 500 || text.chars().any(char::is_control) {
        return Err(invalid("a reason is 1 to 500 characters of text"));
    }
    Ok(text.to_owned())
}

/// A tool's answer: a text summary and the JSON, cut to [`MAX_ANSWER_BYTES`].
fn answer(summary: String, value: &Value) -> CallToolResult {
    let mut json = serde_json::to_string_pretty(value).unwrap_or_default();
    if cut(&mut json, MAX_ANSWER_BYTES) {
        json.push_str("\n… (cut: the answer is larger than the limit; narrow the question)");
    }
    CallToolResult::success(vec![ContentBlock::text(summary), ContentBlock::text(json)])
}

/// Who a write is recorded as: the MCP client's declared name.
fn client_name(context: &RequestContext<RoleServer>) -> String {
    let name = context.client_info().map(|i| i.name).unwrap_or_else(|| "an unnamed client".into());
    let name: String = name.chars().filter(|c| !c.is_control()).take(80).collect();
    format!("mcp:{name}")
}

#[tool_router]
impl KubeSentMcp {
    /// A server reading with `js`; writes with `operator` when given.
    pub fn new(js: jetstream::Context, operator: Option<Operator>, kube_api_url: Option<String>) -> Self {
        Self::with(js, operator.map(Arc::new), kube_api_url, 30)
    }

    /// The same, with the remediators' hourly action budget.
    pub fn with_budget(mut self, budget: u32) -> Self {
        self.budget = budget;
        self
    }

    /// A server for one more session, sharing the connections.
    fn with(
        js: jetstream::Context,
        operator: Option<Arc<Operator>>,
        kube_api_url: Option<String>,
        budget: u32,
    ) -> Self {
        Self {
            js,
            operator,
            kube_api_url,
            budget,
            subscriptions: Arc::default(),
            tool_router: Self::tool_router(),
        }
    }

    fn operator(&self, context: &RequestContext<RoleServer>) -> Result<Operator, ErrorData> {
        let operator = self.operator.as_ref().ok_or_else(|| {
            ErrorData::invalid_request(
                "writes are off: start `kubesent mcp --allow-writes` with an operator credential (KUBESENT_MCP_OPERATOR_PASSWORD) to approve, reject, undo, pause or resume",
                None,
            )
        })?;
        Ok(operator.acting_as(&client_name(context)))
    }

    /// List KubeSent's incidents (newest first), as `kubesent incidents` does.
    #[tool(annotations(title = "List incidents", read_only_hint = true))]
    async fn list_incidents(
        &self,
        Parameters(args): Parameters<ListIncidents>,
    ) -> Result<CallToolResult, ErrorData> {
        if let Some(ns) = &args.namespace
            && !proto::is_dns_label(ns)
        {
            return Err(invalid(format!("{ns:?} is not a namespace name")));
        }
        if let Some(since) = &args.since {
            crate::incidents::parse_age(since).map_err(|e| invalid(e.to_string()))?;
        }
        if let Some(result) = &args.result
            && (result.len() > 40
                || !result
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b == b'_' || b == b' ' || b == b'(' || b == b')'))
        {
            return Err(invalid(format!("{result:?} is not a result")));
        }
        if let Some(workload) = &args.workload
            && !is_object_name(workload)
        {
            return Err(invalid(format!("{workload:?} is not a Kubernetes name")));
        }
        let filter =
            crate::incidents::Filter { namespace: args.namespace, result: args.result, since: args.since };
        let now = jiff::Timestamp::now();
        let records = crate::incidents::load_list(&self.js, &filter, now).await.map_err(failed)?;
        let mut list = match crate::incidents::json_list(&records) {
            Value::Array(items) => items,
            _ => Vec::new(),
        };
        if let Some(workload) = &args.workload {
            list.retain(|row| {
                row["workload"]["name"] == workload.as_str() || row["pod"] == workload.as_str()
            });
        }
        list.sort_by(|a, b| b["at"].as_str().cmp(&a["at"].as_str()));
        let total = list.len();
        list.truncate(MAX_INCIDENTS);
        let summary = format!(
            "{total} incidents{}",
            if total > MAX_INCIDENTS {
                format!(" (the newest {MAX_INCIDENTS} listed)")
            } else {
                String::new()
            }
        );
        Ok(answer(summary, &json!({"total": total, "incidents": list})))
    }

    /// One incident's whole history (failure, detection, diagnosis, each remediation step, outcomes), as
    /// `kubesent incidents show` prints it, with the JSON.
    #[tool(annotations(title = "Show an incident", read_only_hint = true))]
    async fn show_incident(
        &self,
        Parameters(args): Parameters<IncidentArg>,
    ) -> Result<CallToolResult, ErrorData> {
        let incident = incident(&args.incident)?;
        let Some((record, caused)) = crate::incidents::load_one(&self.js, &incident).await.map_err(failed)?
        else {
            return Err(ErrorData::resource_not_found(
                format!("no incident {incident} in the audit log or the intents"),
                None,
            ));
        };
        let borrowed: Vec<(&IncidentId, proto::Diagnosis)> =
            caused.iter().map(|(id, d)| (id, d.clone())).collect();
        let timeline = crate::incidents::timeline(&incident, &record, &borrowed);
        Ok(answer(timeline, &crate::incidents::json_one(&incident, &record, &caused)))
    }

    /// Diagnose a live pod (its spec, logs, events, owner and node) with KubeSent's rules, as `kubesent
    /// diagnose namespace/pod --offline` does; nothing is changed.
    #[tool(annotations(title = "Diagnose a pod", read_only_hint = true))]
    async fn diagnose_pod(&self, Parameters(args): Parameters<PodArg>) -> Result<CallToolResult, ErrorData> {
        if !proto::is_dns_label(&args.namespace) || !is_object_name(&args.pod) {
            return Err(invalid("namespace and pod must be Kubernetes names"));
        }
        #[derive(Parser)]
        struct Diagnose {
            #[command(flatten)]
            args: crate::diagnose::DiagnoseArgs,
        }
        let target = format!("{}/{}", args.namespace, args.pod);
        let command = ["diagnose".to_owned(), target, "--offline".to_owned()];
        let parsed = Diagnose::try_parse_from(command).map_err(|e| invalid(e.to_string()))?;
        let verdict =
            crate::diagnose::verdict_json(&parsed.args).await.map_err(|e| invalid(format!("{e:#}")))?;
        let summary = format!(
            "{}: {} (action {}, confidence {})",
            format_args!("{}/{}", args.namespace, args.pod),
            verdict["root_cause"].as_str().unwrap_or_default(),
            verdict["action"]["type"].as_str().unwrap_or("none"),
            verdict["confidence"]
        );
        Ok(answer(summary, &verdict))
    }

    /// KubeSent's policy and guardrail state: the kill switch, actions in the last hour, the circuit
    /// breaker, workloads cooling down, and per action class its record and any promotion or demotion.
    #[tool(annotations(title = "Policy and guardrails", read_only_hint = true))]
    async fn policy_state(&self) -> Result<CallToolResult, ErrorData> {
        let bucket = nats::existing_bucket(&self.js, proto::INTENTS_BUCKET).await.map_err(failed)?;
        let get = |key: String| {
            let bucket = bucket.clone();
            async move { bucket.get(key).await.ok().flatten() }
        };
        let paused = get(PAUSE_KEY.to_owned()).await.map(|v| String::from_utf8_lossy(&v).into_owned());
        let ledger: Ledger = get(LEDGER_KEY.to_owned())
            .await
            .and_then(|v| serde_json::from_slice(&v).ok())
            .unwrap_or_default();
        let now = jiff::Timestamp::now();
        let hour_ago = now - jiff::SignedDuration::from_hours(1);
        let actions = ledger.actions.iter().filter(|t| **t > hour_ago).count();
        let breaker = ledger.breaker_open_until.filter(|until| *until > now);
        let since = now - jiff::SignedDuration::from_hours(30 * 24);
        let mut classes = Vec::new();
        for class in ActionClass::ALL {
            let record: ClassRecord = get(earned::record_key(class))
                .await
                .and_then(|v| serde_json::from_slice(&v).ok())
                .unwrap_or_default();
            let overrides: Option<Override> = match earned::override_key(class, None) {
                Ok(key) => get(key).await.and_then(|v| serde_json::from_slice(&v).ok()),
                Err(_) => None,
            };
            classes.push(
                json!({"class": class, "record": record.tally(since, |_| true), "override": overrides}),
            );
        }
        let value = json!({
            "paused": paused,
            "actions_last_hour": actions,
            "budget_left": (self.budget as usize).saturating_sub(actions),
            "breaker_open_until": breaker,
            "cooling_down": ledger.last_action,
            "classes": classes,
        });
        let summary = format!(
            "{}; {actions} actions in the last hour ({} of the budget left); circuit breaker {}",
            paused.as_deref().map_or_else(|| "not paused".to_owned(), |r| format!("paused: {r}")),
            (self.budget as usize).saturating_sub(actions),
            breaker.map_or_else(|| "closed".to_owned(), |t| format!("open until {t}"))
        );
        Ok(answer(summary, &value))
    }

    /// What waits for a human: fixes awaiting approval, and fixes only suggested while a guardrail held them
    /// (approvable too).
    #[tool(annotations(title = "Waiting for approval", read_only_hint = true))]
    async fn pending_approvals(&self) -> Result<CallToolResult, ErrorData> {
        let bucket = nats::existing_bucket(&self.js, proto::INTENTS_BUCKET).await.map_err(failed)?;
        let intents = kubesent_remediator::intent::Intents::new(bucket);
        let waiting: Vec<Value> = intents
            .unfinished()
            .await
            .map_err(failed)?
            .into_iter()
            .filter(|(intent, _)| intent.phase == Phase::AwaitingApproval)
            .map(|(intent, _)| {
                json!({"incident": intent.incident, "target": intent.target, "action": intent.action,
                "why": intent.detail, "since": intent.updated_at})
            })
            .collect();
        let suggested: Vec<Value> = intents
            .suggested_verdicts()
            .await
            .map_err(failed)?
            .into_iter()
            .map(|v| {
                json!({"incident": v.incident, "workload": v.key.workload, "namespace": v.key.namespace,
                "action": v.action, "root_cause": v.root_cause})
            })
            .collect();
        let summary =
            format!("{} awaiting approval, {} only suggested and approvable", waiting.len(), suggested.len());
        Ok(answer(summary, &json!({"awaiting_approval": waiting, "suggested": suggested})))
    }

    /// Approve a fix that waits for approval: the leading remediator checks it against the cluster again
    /// and carries it out. Recorded with this client's name and the operator's NATS user.
    #[tool(annotations(title = "Approve a fix", destructive_hint = true, read_only_hint = false))]
    async fn approve(
        &self,
        Parameters(args): Parameters<IncidentArg>,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, ErrorData> {
        let incident = incident(&args.incident)?;
        let operator = self.operator(&context)?;
        let taken =
            operator.approve(&incident, Duration::from_secs(30)).await.map_err(|e| invalid(e.to_string()))?;
        let by = operator.attribution();
        info!(%incident, %by, "approved through MCP");
        let text = match taken {
            Taken::Taken(_) => format!(
                "approved {incident} as {by}: the leading remediator checks it against the cluster again and carries it out"
            ),
            Taken::Pending => {
                format!("approval of {incident} recorded as {by}; no leading remediator has taken it yet")
            }
        };
        Ok(answer(text, &json!({"incident": incident, "approved_by": by})))
    }

    /// Reject a fix that waits for approval: it is recorded as denied and nothing changes.
    #[tool(annotations(title = "Reject a fix", destructive_hint = true, read_only_hint = false))]
    async fn reject(
        &self,
        Parameters(args): Parameters<RejectArg>,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, ErrorData> {
        let incident = incident(&args.incident)?;
        let why = reason(&args.reason)?;
        let operator = self.operator(&context)?;
        let taken = operator
            .reject(&incident, &why, Duration::from_secs(30))
            .await
            .map_err(|e| invalid(e.to_string()))?;
        let by = operator.attribution();
        let detail = match taken {
            Taken::Taken(outcome) => outcome.map(|o| o.detail).unwrap_or_else(|| "recorded as denied".into()),
            Taken::Pending => "recorded; no leading remediator has taken it yet".into(),
        };
        Ok(answer(
            format!("rejected {incident} as {by}: {detail}"),
            &json!({"incident": incident, "rejected_by": by}),
        ))
    }

    /// Reverse the change KubeSent made for an incident (with this server's Kubernetes credentials) and
    /// record the reversal.
    #[tool(annotations(title = "Undo a fix", destructive_hint = true, read_only_hint = false))]
    async fn undo(
        &self,
        Parameters(args): Parameters<IncidentArg>,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, ErrorData> {
        let incident = incident(&args.incident)?;
        let operator = self.operator(&context)?;
        operator.remediation(&incident).await.map_err(|e| invalid(e.to_string()))?;
        let kube = kubesent_common::kube_client(self.kube_api_url.as_deref()).await.map_err(failed)?;
        let undone = operator.undo(&kube, &incident).await.map_err(|e| invalid(e.to_string()))?;
        let by = operator.attribution();
        Ok(answer(
            format!("reverted {}: {} (as {by})", undone.target, undone.detail),
            &json!({"incident": incident, "reverted_by": by}),
        ))
    }

    /// Turn the kill switch on: every remediator only suggests until resumed.
    #[tool(annotations(title = "Pause KubeSent", destructive_hint = true, read_only_hint = false))]
    async fn pause(
        &self,
        Parameters(args): Parameters<PauseArg>,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, ErrorData> {
        let why = reason(&args.reason)?;
        let operator = self.operator(&context)?;
        let recorded = operator.pause(&why).await.map_err(failed)?;
        Ok(answer(
            format!("paused: remediators only suggest until resumed ({recorded})"),
            &json!({"paused": recorded}),
        ))
    }

    /// Turn the kill switch off; lists the fixes only suggested meanwhile (approvable).
    #[tool(annotations(title = "Resume KubeSent", destructive_hint = true, read_only_hint = false))]
    async fn resume(&self, context: RequestContext<RoleServer>) -> Result<CallToolResult, ErrorData> {
        let operator = self.operator(&context)?;
        let suggested = operator.resume().await.map_err(failed)?;
        let incidents: Vec<&IncidentId> = suggested.iter().map(|v| &v.incident).collect();
        Ok(answer(
            format!(
                "resumed: remediators act again; {} fixes were only suggested meanwhile",
                incidents.len()
            ),
            &json!({"suggested": incidents}),
        ))
    }
}

/// The URI of an incident's resource.
pub fn incident_uri(incident: &IncidentId) -> String {
    format!("{INCIDENT_URI_PREFIX}{incident}")
}

/// The prefix of incident resources' URIs.
pub const INCIDENT_URI_PREFIX: &str = "kubesent://incidents/";
/// The most incidents `resources/list` names (the newest of the last week).
const MAX_RESOURCES: usize = 100;

#[tool_handler(router = self.tool_router)]
impl ServerHandler for KubeSentMcp {
    fn get_info(&self) -> ServerConfig {
        let writes = if self.operator.is_some() {
            "with writes (approve, reject, undo, pause, resume)"
        } else {
            "read-only"
        };
        ServerConfig::new(
            ServerCapabilities::builder().enable_tools().enable_resources().enable_resources_subscribe().build(),
        ).with_instructions(format!(
            "KubeSent heals failing Kubernetes workloads. Ask it what happened to a workload (list_incidents, show_incident, or the resources kubesent://incidents/<id>), why a pod fails (diagnose_pod), what its policy allows (policy_state) and what waits for a human (pending_approvals). This server is {writes}."
        ))
    }

    /// The newest incidents of the last week, as `kubesent://incidents/<id>`.
    async fn list_resources(
        &self,
        _request: Option<rmcp::model::PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<rmcp::model::ListResourcesResult, ErrorData> {
        let filter = crate::incidents::Filter { since: Some("7d".into()), ..Default::default() };
        let records =
            crate::incidents::load_list(&self.js, &filter, jiff::Timestamp::now()).await.map_err(failed)?;
        let rows = match crate::incidents::json_list(&records) {
            Value::Array(rows) => rows,
            _ => Vec::new(),
        };
        let mut listed: Vec<(String, rmcp::model::Resource)> = rows
            .iter()
            .filter_map(|row| {
                let id = row["incident"].as_str()?;
                let description = format!(
                    "{}/{} {}: {} → {}",
                    row["namespace"].as_str().unwrap_or_default(),
                    row["workload"]["kind"].as_str().unwrap_or("Pod"),
                    row["workload"]["name"].as_str().or(row["pod"].as_str()).unwrap_or_default(),
                    row["failure"]["kind"].as_str().unwrap_or("failure"),
                    row["state"].as_str().unwrap_or_default()
                );
                let uri = format!("{INCIDENT_URI_PREFIX}{id}");
                let at = row["at"].as_str().unwrap_or_default().to_owned();
                Some((at, rmcp::model::Resource::new(uri, id).with_description(description)))
            })
            .collect();
        listed.sort_by(|a, b| b.0.cmp(&a.0));
        listed.truncate(MAX_RESOURCES);
        Ok(rmcp::model::ListResourcesResult::with_all_items(listed.into_iter().map(|(_, r)| r).collect()))
    }

    /// Subscriptions to incidents' updates: the `kubesent://incidents/<id>` the client asks for.
    fn accepted_subscription_filter(
        &self,
        requested: &rmcp::model::SubscriptionFilter,
    ) -> Option<rmcp::model::SubscriptionFilter> {
        let uris: Vec<String> = requested
            .resource_subscriptions
            .iter()
            .flatten()
            .filter(|uri| uri.strip_prefix(INCIDENT_URI_PREFIX).is_some_and(|id| incident(id).is_ok()))
            .take(MAX_RESOURCES)
            .cloned()
            .collect();
        let mut accepted = rmcp::model::SubscriptionFilter::new();
        accepted.resource_subscriptions = Some(uris);
        Some(accepted)
    }

    /// Tells the client each time an incident it subscribed to gets a record in the audit log.
    async fn listen(&self, context: rmcp::service::SubscriptionContext) -> Result<(), ErrorData> {
        use futures::StreamExt as _;
        let wanted: std::collections::BTreeSet<String> =
            context.accepted().resource_subscriptions.iter().flatten().cloned().collect();
        let mut outcomes = self.js.client().subscribe(proto::OUTCOMES_SUBJECTS).await.map_err(failed)?;
        loop {
            tokio::select! {
                () = context.cancelled() => return Ok(()),
                message = outcomes.next() => {
                    let Some(message) = message else { return Ok(()) };
                    let Some(incident) = message.headers.as_ref().and_then(|h| h.get(proto::headers::INCIDENT)) else { continue };
                    let uri = format!("{INCIDENT_URI_PREFIX}{}", incident.as_str());
                    if wanted.contains(&uri) && context.sink().notify_resource_updated(uri).await.is_err() {
                        return Ok(());
                    }
                }
            }
        }
    }

    /// A subscription to an incident's updates (clients of protocols before 2026-07-28): a
    /// `notifications/resources/updated` each time the incident gets a record in the audit log, until
    /// the client unsubscribes or goes away.
    #[allow(deprecated)]
    async fn subscribe(
        &self,
        request: rmcp::model::SubscribeRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<(), ErrorData> {
        use futures::StreamExt as _;
        let id = request.uri.strip_prefix(INCIDENT_URI_PREFIX).ok_or_else(|| {
            ErrorData::resource_not_found(format!("{} is not a KubeSent resource", request.uri), None)
        })?;
        let incident = incident(id)?;
        let stop = tokio_util::sync::CancellationToken::new();
        {
            let mut subscriptions =
                self.subscriptions.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            if subscriptions.len() >= MAX_RESOURCES {
                return Err(invalid(format!("at most {MAX_RESOURCES} subscriptions per session")));
            }
            if let Some(previous) = subscriptions.insert(request.uri.clone(), stop.clone()) {
                previous.cancel();
            }
        }
        let mut outcomes = self.js.client().subscribe(proto::OUTCOMES_SUBJECTS).await.map_err(failed)?;
        let (peer, uri) = (context.peer.clone(), request.uri.clone());
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    () = stop.cancelled() => return,
                    message = outcomes.next() => {
                        let Some(message) = message else { return };
                        let about = message.headers.as_ref().and_then(|h| h.get(proto::headers::INCIDENT));
                        if about.is_some_and(|i| i.as_str() == incident.as_str()) {
                            let update = rmcp::model::ResourceUpdatedNotificationParam::new(uri.clone());
                            if peer.notify_resource_updated(update).await.is_err() {
                                return;
                            }
                        }
                    }
                }
            }
        });
        Ok(())
    }

    /// Ends a subscription.
    #[allow(deprecated)]
    async fn unsubscribe(
        &self,
        request: rmcp::model::UnsubscribeRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<(), ErrorData> {
        let removed =
            self.subscriptions.lock().unwrap_or_else(std::sync::PoisonError::into_inner).remove(&request.uri);
        if let Some(stop) = removed {
            stop.cancel();
        }
        Ok(())
    }

    /// One incident's whole history as JSON.
    async fn read_resource(
        &self,
        request: rmcp::model::ReadResourceRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<rmcp::model::ReadResourceResponse, ErrorData> {
        let id = request.uri.strip_prefix(INCIDENT_URI_PREFIX).ok_or_else(|| {
            ErrorData::resource_not_found(
                format!("{} is not a KubeSent resource ({INCIDENT_URI_PREFIX}<incident>)", request.uri),
                None,
            )
        })?;
        let incident = incident(id)?;
        let Some((record, caused)) = crate::incidents::load_one(&self.js, &incident).await.map_err(failed)?
        else {
            return Err(ErrorData::resource_not_found(format!("no incident {incident}"), None));
        };
        let value = crate::incidents::json_one(&incident, &record, &caused);
        let mut text = serde_json::to_string_pretty(&value).unwrap_or_default();
        cut(&mut text, MAX_ANSWER_BYTES);
        let contents = rmcp::model::ResourceContents::TextResourceContents {
            uri: request.uri.clone(),
            mime_type: Some("application/json".into()),
            text,
            meta: None,
        };
        Ok(rmcp::model::ReadResourceResult::new(vec![contents]).into())
    }
}

/// Runs `kubesent mcp` until the client goes away (stdio) or a signal (HTTP).
pub async fn run(args: McpArgs) -> anyhow::Result<()> {
    // stdout is the protocol's on stdio: logs go to stderr.
    let _telemetry = kubesent_common::telemetry::init_with(
        "kubesent-mcp",
        kubesent_common::telemetry::TelemetryOptions {
            default_filter: "info,kubesent_common::nats::connect=off,rmcp=warn".into(),
            to_stderr: true,
            ..Default::default()
        },
    );
    let client = nats::connect_as(&args.nats, Role::Reader, "kubesent-mcp").await?;
    let js = jetstream::new(client);
    let operator = if args.allow_writes {
        let password = args.operator_password.as_ref().context(
            "--allow-writes needs an operator credential: set KUBESENT_MCP_OPERATOR_PASSWORD (and KUBESENT_MCP_OPERATOR_USER)",
        )?;
        let nats = args.nats.clone().with_user(&args.operator_user, password.expose_secret().to_owned());
        Some(Operator::connect(&nats, "mcp").await?)
    } else {
        None
    };
    let server =
        KubeSentMcp::new(js, operator, args.kube_api_url.clone()).with_budget(args.max_actions_per_hour);
    match args.listen {
        None => {
            let running =
                server.serve(rmcp::transport::stdio()).await.context("starting the MCP server on stdio")?;
            running.waiting().await.context("serving MCP on stdio")?;
        }
        Some(listen) => {
            use rmcp::transport::streamable_http_server::{
                StreamableHttpService, session::local::LocalSessionManager,
            };
            let service: StreamableHttpService<KubeSentMcp, LocalSessionManager> = StreamableHttpService::new(
                move || {
                    Ok(KubeSentMcp::with(
                        server.js.clone(),
                        server.operator.clone(),
                        server.kube_api_url.clone(),
                        server.budget,
                    ))
                },
                Default::default(),
                Default::default(),
            );
            let router = axum::Router::new().nest_service("/mcp", service);
            let listener =
                tokio::net::TcpListener::bind(listen).await.with_context(|| format!("binding {listen}"))?;
            info!(%listen, "serving MCP over Streamable HTTP at /mcp");
            let shutdown = kubesent_common::shutdown_on_signal();
            axum::serve(listener, router)
                .with_graceful_shutdown(async move { shutdown.cancelled().await })
                .await
                .context("serving MCP over HTTP")?;
        }
    }
    Ok(())
}

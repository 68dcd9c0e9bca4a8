//! The HL7 v2 listener of `hutong serve --mllp-listen`: MLLP over TCP, one engine transaction per
//! message, AA only after the commit, AE/AR with ERR segments otherwise. A message that is not
//! committed is kept for reprocessing before it is NAKed: in the data-quality quarantine of the
//! sending institution (kind `HL7v2Message`, processed again by [`Reprocessor`]), or in
//! `<data>/hl7-quarantine/` when the store cannot take it. Rules and mapping: `docs/HL7V2.md`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use engine::{Engine, EngineError, RequestOptions};
use hl7::{AckCode, AckError, Hl7Error, Message, MllpDecoder};
use store::Ctx;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The listener's settings.
#[derive(Clone)]
pub struct MllpConfig {
    /// Largest message accepted on a connection; a larger frame is refused and the connection closed.
    pub max_message_bytes: usize,
    /// Where messages that were not committed are kept when the store cannot take them
    /// (`<data>/hl7-quarantine`); otherwise they go to the data-quality quarantine.
    pub quarantine: PathBuf,
    /// Who writes: [`listener_principal`].
    pub principal: Arc<access::Principal>,
}

/// What the mappings write (and `Person.u` for the master patient index's link of an ADT^A40
/// merge); nothing is ever deleted.
pub const LISTENER_SCOPES: &str = "system/Patient.crus system/Encounter.crus system/Observation.crus \
     system/DiagnosticReport.crus system/ServiceRequest.crus system/Schedule.crus system/Slot.crus \
     system/Appointment.crus system/DocumentReference.crus system/Binary.crus system/Person.u";

/// The listener writes as a system client of its own, `client/hl7-listener`, whose scopes allow
/// only what the mappings write ([`LISTENER_SCOPES`]), so the policy decision point and the
/// audit trail see it like any other client. MLLP carries no credentials: the sender is named in
/// the audit trail by its address.
pub fn listener_principal() -> access::Principal {
    access::Principal {
        subject: "client/hl7-listener".to_string(),
        role: access::Role::System,
        organization: None,
        region: None,
        practitioner: None,
        patients: Vec::new(),
        scopes: access::Scopes::parse(LISTENER_SCOPES).expect("the listener's scopes are valid SMART scopes"),
        purpose: access::Role::System.default_purpose().to_string(),
        break_glass: None,
    }
}

/// Accepts connections until the process ends; each connection is served on its own task, so
/// one sender's garbage never stops another's messages.
pub async fn serve(listener: TcpListener, engine: Arc<Engine>, config: MllpConfig) {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                let (engine, config) = (engine.clone(), config.clone());
                tokio::spawn(async move {
                    if let Err(e) = connection(stream, peer, &engine, &config).await {
                        tracing::debug!(peer = %peer, error = %e, "MLLP connection ended with an error");
                    }
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, "MLLP accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    }
}

async fn connection(
    mut stream: TcpStream,
    peer: SocketAddr,
    engine: &Engine,
    config: &MllpConfig,
) -> std::io::Result<()> {
    let mut decoder = MllpDecoder::new(config.max_message_bytes);
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        let n = stream.read(&mut buffer).await?;
        if n == 0 {
            if let Err(e) = decoder.finish() {
                tracing::warn!(peer = %peer, error = %e, "MLLP connection closed mid-frame");
            }
            return Ok(());
        }
        decoder.push(&buffer[..n]);
        while let Some(frame) = decoder.next_message() {
            match frame {
                Ok(bytes) => {
                    let ack = process(&bytes, peer, engine, config).await;
                    stream.write_all(&hl7::frame(&ack)).await?;
                }
                Err(e) => {
                    // The stream cannot be resynchronised: answer once and close.
                    tracing::warn!(peer = %peer, error = %e, "MLLP framing error; closing the connection");
                    let error = AckError::error(("102", "Data type error"), e.to_string());
                    let nak = hl7::ack_unparsed(AckCode::Reject, &[error], &control_id(), &now());
                    stream.write_all(&hl7::frame(&nak.to_bytes())).await?;
                    stream.shutdown().await?;
                    // Read what the sender still sends for a moment before closing: closing
                    // with unread bytes resets the connection, and the sender could lose the NAK.
                    let drain = async { while matches!(stream.read(&mut buffer).await, Ok(n) if n > 0) {} };
                    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), drain).await;
                    return Ok(());
                }
            }
        }
    }
}

/// What processing one message gave: the ACK and how an HTTP answer reports it.
pub struct Outcome {
    /// The ACK message's bytes, in the sender's character set.
    pub ack: Vec<u8>,
    /// The HTTP status of `POST /hl7v2`: 200 for AA, 4xx/5xx by the reason otherwise.
    pub http_status: u16,
    /// The ACK's character set, for the HTTP Content-Type.
    pub charset: &'static str,
}

impl Outcome {
    fn new(ack: Message, http_status: u16) -> Outcome {
        let charset = match ack.charset {
            hl7::message::Charset::Utf8 => "utf-8",
            hl7::message::Charset::Gb18030 => "gb18030",
            hl7::message::Charset::Latin1 => "iso-8859-1",
        };
        Outcome { ack: ack.to_bytes(), http_status, charset }
    }
}

/// Handles one message for the MLLP listener (as its system client, the peer's address as
/// the source) and returns the ACK's bytes.
async fn process(bytes: &[u8], peer: SocketAddr, engine: &Engine, config: &MllpConfig) -> Vec<u8> {
    let ctx = Ctx::for_shared(Ctx::next_request_id(), config.principal.clone(), Some(peer.to_string()));
    receive(bytes, &ctx, hl7::message::Charset::Utf8, engine, &config.quarantine).await.ack
}

/// The kind of a held message in the data-quality quarantine.
pub const QUARANTINE_KIND: &str = "HL7v2Message";
/// The media type of a held message.
pub const QUARANTINE_CONTENT_TYPE: &str = "x-application/hl7-v2+er7";

/// Handles one message, whoever carried it (MLLP or `POST /hl7v2`): parse, map, commit as
/// `ctx` in one transaction, answer. A message that is not committed is kept in the
/// data-quality quarantine (the entry committed before the NAK, which names it), or, when the
/// store cannot take it, in a file in `fallback_dir`. `default_charset` applies when MSH-18 is
/// empty.
pub async fn receive(
    bytes: &[u8],
    ctx: &Ctx,
    default_charset: hl7::message::Charset,
    engine: &Engine,
    fallback_dir: &Path,
) -> Outcome {
    match handle(bytes, ctx, default_charset, engine).await {
        Ok(message) => Outcome::new(hl7::ack(&message, AckCode::Accept, &[], &control_id(), &now()), 200),
        Err(failure) => {
            failure.log(ctx);
            let kept = keep(bytes, ctx, default_charset, engine, &failure, fallback_dir).await;
            failure.nak(&kept)
        }
    }
}

/// Why a message was not committed.
enum Failure {
    /// The bytes could not be read as a message.
    Unreadable(Hl7Error),
    /// The message was read but cannot be mapped (or names a record that is not here).
    Mapping(Message, Hl7Error),
    /// The engine refused or failed the transaction (or the merge's link).
    Engine(Message, EngineError),
}

impl Failure {
    /// The quarantine's rule name.
    fn rule(&self) -> &'static str {
        match self {
            Failure::Unreadable(_) => "hl7-parse",
            Failure::Mapping(..) => "hl7-mapping",
            Failure::Engine(..) => "hl7-engine",
        }
    }

    fn message(&self) -> Option<&Message> {
        match self {
            Failure::Unreadable(_) => None,
            Failure::Mapping(m, _) | Failure::Engine(m, _) => Some(m),
        }
    }

    fn ack_code(&self) -> AckCode {
        match self {
            Failure::Unreadable(e) | Failure::Mapping(_, e) if e.rejects() => AckCode::Reject,
            _ => AckCode::Error,
        }
    }

    /// The ERR segment: a table 0357 code and the reason.
    fn ack_error(&self) -> AckError {
        match self {
            Failure::Unreadable(e) | Failure::Mapping(_, e) => AckError::from(e),
            Failure::Engine(_, e) => {
                let (code, text) = engine_error(e);
                AckError::error(code, text)
            }
        }
    }

    /// The HTTP status of `POST /hl7v2`.
    fn http_status(&self) -> u16 {
        match self {
            Failure::Unreadable(_) => 400,
            Failure::Mapping(_, Hl7Error::UnknownKey { .. }) => 404,
            Failure::Mapping(_, e) if e.rejects() => 400,
            Failure::Mapping(..) => 422,
            // The content's faults are 422 like the mapping's; the rest keep the FHIR API's status.
            Failure::Engine(_, e) => match e.http_status() {
                400 => 422,
                other => other,
            },
        }
    }

    /// The reason can quote the message's values (a birth date, a name): the log gets the code
    /// only, the reason is in the NAK and the quarantine; storage failures are logged in full.
    fn log(&self, ctx: &Ctx) {
        let source = ctx.source.as_deref().unwrap_or_default();
        let control_id = self.message().map(Message::control_id).unwrap_or_default();
        let code = self.ack_error().code.0;
        tracing::warn!(source = %source, control_id = %control_id, rule = self.rule(), code = %code, "HL7 message not committed");
        if let Failure::Engine(_, EngineError::Store(detail)) = self {
            tracing::error!(control_id = %control_id, error = %detail, "storage failure on an HL7 message");
        }
    }

    /// The quarantine's finding for this failure.
    fn finding(&self) -> engine::RawFinding {
        let error = self.ack_error();
        let mut codes = serde_json::Map::new();
        codes.insert("ackCode".into(), self.ack_code().as_str().into());
        codes.insert("errorCode".into(), error.code.0.clone().into());
        codes.insert("error".into(), error.code.1.clone().into());
        engine::RawFinding { rule: self.rule().to_string(), message: error.message, codes }
    }

    /// The NAK, its error naming where the message is kept.
    fn nak(&self, kept: &str) -> Outcome {
        let mut error = self.ack_error();
        error.message = format!("{}; {kept}", error.message);
        let ack = match self.message() {
            Some(message) => hl7::ack(message, self.ack_code(), &[error], &control_id(), &now()),
            None => hl7::ack_unparsed(self.ack_code(), &[error], &control_id(), &now()),
        };
        Outcome::new(ack, self.http_status())
    }

    /// The refusal of a reprocessing request (`POST /quality/quarantine/{id}/reprocess`). A
    /// refusal of the caller's authority (403) says nothing about the message: the entry keeps
    /// its reasons.
    fn into_refusal(self) -> engine::RawRefusal {
        if let Failure::Engine(_, error @ EngineError::Forbidden(_)) = self {
            return engine::RawRefusal { error, findings: Vec::new() };
        }
        let finding = self.finding();
        let code = self.ack_code();
        let error = match self {
            Failure::Engine(_, e) => e,
            other => {
                let issue = fhir::Issue::error(
                    fhir::IssueType::Invalid,
                    format!(
                        "[{}] {} {}: {}",
                        other.rule(),
                        code.as_str(),
                        finding.codes["errorCode"].as_str().unwrap_or_default(),
                        finding.message
                    ),
                );
                match code {
                    AckCode::Error => EngineError::Unprocessable(vec![issue]),
                    _ => EngineError::BadRequest(vec![issue]),
                }
            }
        };
        engine::RawRefusal { error, findings: vec![finding] }
    }
}

/// Parses, maps and commits one message as `ctx` (for ADT^A40 also the link in the master
/// patient index). Keeps nothing: the caller decides what a failure becomes.
async fn handle(
    bytes: &[u8],
    ctx: &Ctx,
    default_charset: hl7::message::Charset,
    engine: &Engine,
) -> Result<Message, Failure> {
    let message = Message::parse_with_default(bytes, default_charset).map_err(Failure::Unreadable)?;
    let mapped = match hl7::to_fhir(&message) {
        Ok(m) => m,
        Err(e) => return Err(Failure::Mapping(message, e)),
    };
    let mut bundle = mapped.bundle;
    // ADT^A40: the prior record is read first; the transaction's If-Match on it makes a
    // change in between fail the message rather than be overwritten.
    let mut prior_id = None;
    if let Some(merge) = &mapped.merge {
        match prior_patient(engine, ctx, &merge.identifier_token()).await {
            Ok(Some((prior, version))) => {
                prior_id = prior["id"].as_str().map(str::to_string);
                hl7::adt::complete_merge(&mut bundle, prior, version);
            }
            Ok(None) => {
                let e = Hl7Error::UnknownKey {
                    field: "MRG-1".into(),
                    value: merge.prior_mrn.clone(),
                    why: "no Patient has this prior record number; send the ADT of that record first, or check the \
                          number"
                        .into(),
                };
                return Err(Failure::Mapping(message, e));
            }
            Err(e) => return Err(Failure::Engine(message, e)),
        }
    }
    // The ACK needs no resources back: only the entries' locations (an A40's survivor).
    let minimal = RequestOptions { return_preference: engine::ReturnPreference::Minimal, ..RequestOptions::default() };
    let committed = match engine.bundle(ctx, bundle, &minimal).await {
        Ok(response) => response,
        Err(e) => return Err(Failure::Engine(message, e)),
    };
    // The merge in the master patient index: both records of the sender are one person.
    if let Some(prior) = prior_id {
        let survivor = committed["entry"][0]["response"]["location"]
            .as_str()
            .and_then(|l| l.strip_prefix("Patient/"))
            .and_then(|l| l.split('/').next())
            .unwrap_or_default()
            .to_string();
        let reason =
            format!("HL7 ADT^A40 {} from {}", message.control_id(), message.get("MSH-4-1").unwrap_or_default());
        if let Err(e) = engine.mpi_link_to_person_of(ctx, &prior, &survivor, &reason).await {
            // The records are merged (committed) but not yet linked: the sender sends the
            // message again, which changes nothing but the link.
            tracing::warn!(control_id = %message.control_id(), error = %e, "ADT^A40 committed but not linked in the MPI");
            return Err(Failure::Engine(message, e));
        }
    }
    let source = ctx.source.as_deref().unwrap_or_default();
    tracing::info!(source = %source, control_id = %message.control_id(), "HL7 message committed");
    Ok(message)
}

/// The header fields that tell held messages apart: MSH-4, MSH-9, MSH-10 (read leniently from
/// the first line when the message as a whole could not be read) and MSH-4-1, the sender.
fn header(bytes: &[u8], message: Option<&Message>) -> (serde_json::Value, Option<String>) {
    let (facility, message_type, control, sender) = match message {
        Some(m) => (m.get("MSH-4"), m.get("MSH-9"), m.get("MSH-10"), m.get("MSH-4-1")),
        None => {
            let start = bytes.iter().position(|b| !b.is_ascii_whitespace()).unwrap_or(bytes.len());
            let line = &bytes[start..];
            let line = &line[..line.iter().position(|&b| b == b'\r' || b == b'\n').unwrap_or(line.len())];
            let line = String::from_utf8_lossy(line);
            let mut chars = line.chars().skip(3);
            match (line.starts_with("MSH"), chars.next(), chars.next()) {
                (true, Some(field), Some(component)) if field.is_ascii_punctuation() => {
                    let fields: Vec<&str> = line.split(field).collect();
                    // fields[0] is "MSH" and fields[1] MSH-2: MSH-n is fields[n - 1].
                    let at = |n: usize| fields.get(n - 1).map(|f| f.to_string()).filter(|f| !f.is_empty());
                    let sender = at(4).and_then(|f| f.split(component).next().map(str::to_string));
                    (at(4), at(9), at(10), sender)
                }
                _ => (None, None, None, None),
            }
        }
    };
    (serde_json::json!({"sendingFacility": facility, "messageType": message_type, "controlId": control}), sender)
}

/// Keeps a message that was not committed in the data-quality quarantine, or in a file when
/// the store cannot take it; answers the text the NAK adds.
async fn keep(
    bytes: &[u8],
    ctx: &Ctx,
    default_charset: hl7::message::Charset,
    engine: &Engine,
    failure: &Failure,
    fallback_dir: &Path,
) -> String {
    let (mut details, sender) = header(bytes, failure.message());
    details["charset"] = default_charset.name().into();
    let hold = engine::RawHold {
        kind: QUARANTINE_KIND.into(),
        content_type: QUARANTINE_CONTENT_TYPE.into(),
        bytes: bytes.to_vec(),
        sender,
        findings: vec![failure.finding()],
        details,
    };
    match engine.quarantine_hold(ctx, &hold).await {
        Ok(id) => {
            tracing::info!(entry = %id, rule = failure.rule(), "HL7 message quarantined");
            format!("kept for reprocessing as data-quality quarantine entry {id}")
        }
        Err(e) => {
            tracing::error!(error = %e, "the quarantine could not take an HL7 message; keeping it in a file");
            match quarantine_file(fallback_dir, bytes, &failure.finding().message).await {
                Some(file) => format!("kept for reprocessing as {file}"),
                None => "it could not be kept here: send it again".into(),
            }
        }
    }
}

/// Moves messages kept in files (`<data>/hl7-quarantine/*.hl7`, by a version before the
/// quarantine entries, or when the store could not take them) into the data-quality quarantine,
/// as the listener: each becomes an entry with its reason (`hl7-file`), and its files are
/// removed once the entry is committed. A file that cannot be moved stays. Answers how many moved.
pub async fn adopt_files(dir: &Path, engine: &Engine, principal: Arc<access::Principal>) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "hl7"))
        .collect();
    files.sort();
    let ctx = Ctx::for_shared(Ctx::next_request_id(), principal, Some("hl7-quarantine files".into()));
    let mut moved = 0;
    for file in files {
        let Ok(bytes) = std::fs::read(&file) else { continue };
        let reason_file = file.with_extension("txt");
        let reason = std::fs::read_to_string(&reason_file).unwrap_or_default();
        let (mut details, sender) = header(&bytes, None);
        details["file"] = file.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default().into();
        let message = if reason.trim().is_empty() { "kept in a file; no reason was recorded".into() } else { reason };
        let hold = engine::RawHold {
            kind: QUARANTINE_KIND.into(),
            content_type: QUARANTINE_CONTENT_TYPE.into(),
            bytes,
            sender,
            findings: vec![engine::RawFinding { rule: "hl7-file".into(), message, codes: serde_json::Map::new() }],
            details,
        };
        match engine.quarantine_hold(&ctx, &hold).await {
            Ok(id) => {
                moved += 1;
                let _ = std::fs::remove_file(&file);
                let _ = std::fs::remove_file(&reason_file);
                tracing::info!(entry = %id, "an HL7 message kept in a file is now a quarantine entry");
            }
            Err(e) => tracing::warn!(error = %e, file = %file.display(), "could not move a quarantined HL7 file"),
        }
    }
    moved
}

/// Processes held `HL7v2Message` entries again (`POST /quality/quarantine/{id}/reprocess`),
/// as the caller: the held bytes, or a correction sent as `{"message": "MSH|…"}` (text; it is
/// encoded in the character set its MSH-18 names).
pub struct Reprocessor;

#[async_trait::async_trait]
impl engine::RawReprocessor for Reprocessor {
    async fn reprocess(
        &self,
        engine: &Engine,
        ctx: &Ctx,
        held: engine::HeldRaw<'_>,
        corrected: Option<&serde_json::Value>,
    ) -> Result<serde_json::Value, engine::RawRefusal> {
        let default_charset = held.entry["details"]["charset"]
            .as_str()
            .and_then(|c| hl7::message::Charset::from_msh18(c).ok())
            .unwrap_or(hl7::message::Charset::Utf8);
        let bytes = match corrected {
            None => held.bytes.to_vec(),
            Some(body) => match body["message"].as_str().filter(|_| body.as_object().is_some_and(|o| o.len() == 1)) {
                Some(text) => declared_charset(text).unwrap_or(default_charset).encode(text),
                None => {
                    return Err(engine::RawRefusal {
                        error: EngineError::bad_request(
                            fhir::IssueType::Invalid,
                            "the body must be {\"message\": \"MSH|…\"} with the corrected HL7 v2 message as text \
                             (segments separated by \\r), or empty to retry the message as held",
                        ),
                        findings: Vec::new(),
                    });
                }
            },
        };
        match handle(&bytes, ctx, default_charset, engine).await {
            Ok(message) => {
                Ok(serde_json::json!({"ackCode": AckCode::Accept.as_str(), "controlId": message.control_id(),
                "messageType": message.get("MSH-9")}))
            }
            Err(failure) => {
                failure.log(ctx);
                Err(failure.into_refusal())
            }
        }
    }
}

/// The character set MSH-18 of a message's text names, if it names one this reads.
fn declared_charset(text: &str) -> Option<hl7::message::Charset> {
    let line = text.trim_start().split(['\r', '\n']).next()?;
    let separator = line.strip_prefix("MSH")?.chars().next()?;
    let msh18 = line.split(separator).nth(17)?.split(['^', '~']).next()?.trim();
    if msh18.is_empty() { None } else { hl7::message::Charset::from_msh18(msh18).ok() }
}

/// The prior Patient of a merge (its stored JSON and version), found by its record number.
async fn prior_patient(
    engine: &Engine,
    ctx: &Ctx,
    identifier: &str,
) -> Result<Option<(serde_json::Value, i64)>, EngineError> {
    let params = vec![("identifier".to_string(), identifier.to_string()), ("_count".to_string(), "2".to_string())];
    let found = engine.search(ctx, Some("Patient"), &params, &RequestOptions::default()).await?;
    let entries: Vec<serde_json::Value> = found["entry"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["resource"]["resourceType"] == "Patient")
        .cloned()
        .collect();
    match entries.as_slice() {
        [] => Ok(None),
        [one] => {
            let resource = one["resource"].clone();
            let version = resource["meta"]["versionId"].as_str().and_then(|v| v.parse().ok()).unwrap_or(1);
            Ok(Some((resource, version)))
        }
        _ => Err(EngineError::MultipleMatches("the prior record number (MRG-1) matches more than one Patient".into())),
    }
}

/// `POST /hl7v2`: the same processing, as the authenticated caller.
pub struct HttpReceiver {
    pub engine: Arc<Engine>,
    /// Where messages are kept when the store cannot take them.
    pub quarantine: PathBuf,
}

impl api::hl7v2::Hl7Receiver for HttpReceiver {
    fn receive<'a>(
        &'a self,
        ctx: Ctx,
        body: Vec<u8>,
        charset: Option<String>,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = api::hl7v2::Hl7Reply> + Send + 'a>> {
        Box::pin(async move {
            let default = match charset.as_deref().map(hl7::message::Charset::from_msh18) {
                None => hl7::message::Charset::Utf8,
                Some(Ok(c)) => c,
                Some(Err(e)) => {
                    let nak = hl7::ack_unparsed(AckCode::Error, &[AckError::from(&e)], &control_id(), &now());
                    return api::hl7v2::Hl7Reply { status: 415, charset: "utf-8", body: nak.to_bytes() };
                }
            };
            let outcome = receive(&body, &ctx, default, &self.engine, &self.quarantine).await;
            api::hl7v2::Hl7Reply { status: outcome.http_status, charset: outcome.charset, body: outcome.ack }
        })
    }
}

/// The table 0357 code and the OperationOutcome's text for an engine error.
fn engine_error(e: &EngineError) -> ((&'static str, &'static str), String) {
    match e {
        EngineError::BadRequest(issues) | EngineError::Unprocessable(issues) => {
            let text = issues.iter().map(|i| i.diagnostics.as_str()).collect::<Vec<_>>().join("; ");
            (("102", "Data type error"), text)
        }
        EngineError::MultipleMatches(m) => (("205", "Duplicate key identifier"), m.clone()),
        // Store failures are ours, not the sender's: no SQL in the NAK, the detail goes to the log.
        EngineError::Store(_) => (
            ("207", "Application internal error"),
            "the message could not be stored; it is kept for reprocessing".into(),
        ),
        other => (("207", "Application internal error"), other.to_string()),
    }
}

/// Keeps a message in a file when the store cannot take it: `<id>.hl7` holds the bytes as
/// received and `<id>.txt` the reason. Written to a temporary name, synced, then renamed, so a
/// file present under its final name is complete. Answers the file's name.
async fn quarantine_file(dir: &Path, bytes: &[u8], reason: &str) -> Option<String> {
    let dir = dir.to_path_buf();
    let (bytes, reason) = (bytes.to_vec(), reason.to_string());
    let id = format!("{}-{}", chrono::Utc::now().format("%Y%m%dT%H%M%S%.3fZ"), uuid::Uuid::new_v4().simple());
    let written = tokio::task::spawn_blocking(move || -> std::io::Result<PathBuf> {
        std::fs::create_dir_all(&dir)?;
        write_synced(&dir.join(format!("{id}.txt")), reason.as_bytes())?;
        write_synced(&dir.join(format!("{id}.hl7")), &bytes)?;
        Ok(dir.join(format!("{id}.hl7")))
    })
    .await;
    match written {
        Ok(Ok(path)) => {
            tracing::warn!(file = %path.display(), "HL7 message quarantined in a file (the store could not take it)");
            path.file_name().map(|n| n.to_string_lossy().into_owned())
        }
        Ok(Err(e)) => {
            tracing::error!(error = %e, "could not quarantine an HL7 message (the sender was NAKed)");
            None
        }
        Err(e) => {
            tracing::error!(error = %e, "quarantine task failed");
            None
        }
    }
}

fn write_synced(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let temporary = path.with_extension("partial");
    let mut file = std::fs::File::create(&temporary)?;
    std::io::Write::write_all(&mut file, bytes)?;
    file.sync_all()?;
    std::fs::rename(&temporary, path)
}

/// MSH-7 of an ACK, in UTC with its zone.
fn now() -> String {
    chrono::Utc::now().format("%Y%m%d%H%M%S+0000").to_string()
}

/// MSH-10 of an ACK: unique, at most 20 characters (ST in 2.5).
fn control_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..20].to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use access::Perm;

    #[test]
    fn the_listener_may_write_what_it_maps_only() {
        let scopes = listener_principal().scopes;
        for ty in ["Patient", "Encounter", "Observation", "DiagnosticReport", "ServiceRequest", "Appointment", "Slot"] {
            assert!(
                scopes.allows(ty, Perm::Create) && scopes.allows(ty, Perm::Update) && scopes.allows(ty, Perm::Search)
            );
            assert!(!scopes.allows(ty, Perm::Delete));
        }
        assert!(!scopes.allows("MedicationRequest", Perm::Create));
        assert!(!scopes.allows("Person", Perm::Create) && scopes.allows("Person", Perm::Update));
    }

    /// A message not committed goes to the data-quality quarantine, and its NAK names the
    /// entry; when the store cannot take it, it is kept in a file instead and the NAK says so.
    #[tokio::test]
    async fn a_message_the_store_cannot_take_is_kept_in_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(store_sqlite::SqliteStore::open(dir.path()).unwrap());
        let engine = Engine::new(
            store.clone(),
            engine::EngineConfig { export_dir: dir.path().join("export"), ..Default::default() },
        );
        let ctx = Ctx::for_shared(Ctx::next_request_id(), Arc::new(listener_principal()), Some("192.0.2.1:9".into()));
        let fallback = dir.path().join("hl7-quarantine");
        let unknown_type = b"MSH|^~\\&|FIN|FZ-HOSP|HUTONG|REGION|20261130093000||DFT^P03|C-1|P|2.5\rPID|1||M1\r";
        let error_text = |outcome: &Outcome| Message::parse(&outcome.ack).unwrap().get("ERR-8").unwrap_or_default();

        let held = receive(unknown_type, &ctx, hl7::message::Charset::Utf8, &engine, &fallback).await;
        assert_eq!(held.http_status, 400);
        let text = error_text(&held);
        let id = text.split("quarantine entry ").nth(1).expect("the NAK names the entry").to_string();
        assert!(id.starts_with("unknown|"), "no Organization has the identifier FZ-HOSP: {id}");
        let entry: serde_json::Value = serde_json::from_str(
            &store::ResourceStore::kv_get(&*store, "quality-quarantine", &id).await.unwrap().unwrap(),
        )
        .unwrap();
        assert_eq!(entry["resourceType"], QUARANTINE_KIND);
        assert_eq!(entry["findings"][0]["rule"], "hl7-mapping");
        assert_eq!(
            (&entry["findings"][0]["ackCode"], &entry["findings"][0]["errorCode"]),
            (&"AR".into(), &"200".into())
        );
        assert_eq!(entry["details"]["controlId"], "C-1");
        assert_eq!(crypto::unbase64(entry["data"].as_str().unwrap()).unwrap(), unknown_type);
        assert!(!fallback.exists(), "no file while the store takes the message");

        // The store loses its table of security objects (where quarantine entries live).
        let conn = rusqlite::Connection::open(dir.path().join("hutong.db")).unwrap();
        conn.execute("ALTER TABLE security_object RENAME TO security_object_gone", []).unwrap();
        let kept = receive(unknown_type, &ctx, hl7::message::Charset::Utf8, &engine, &fallback).await;
        assert_eq!(Message::parse(&kept.ack).unwrap().get("MSA-1").as_deref(), Some("AR"));
        let text = error_text(&kept);
        let file = text.split("kept for reprocessing as ").nth(1).expect("the NAK says where it is kept").to_string();
        assert!(file.ends_with(".hl7"), "{text}");
        assert_eq!(std::fs::read(fallback.join(&file)).unwrap(), unknown_type, "the bytes as received");
        let reason = std::fs::read_to_string(fallback.join(file.replace(".hl7", ".txt"))).unwrap();
        assert!(reason.contains("DFT"), "{reason}");

        // A file that cannot be moved stays; once the store is back, the next start moves it
        // into the quarantine with its reason, and removes the files.
        let principal = Arc::new(listener_principal());
        assert_eq!(adopt_files(&fallback, &engine, principal.clone()).await, 0);
        assert!(fallback.join(&file).exists(), "kept while the store cannot take it");
        conn.execute("ALTER TABLE security_object_gone RENAME TO security_object", []).unwrap();
        assert_eq!(adopt_files(&fallback, &engine, principal).await, 1);
        assert_eq!(std::fs::read_dir(&fallback).unwrap().count(), 0, "both files are gone");
        let held = store::ResourceStore::kv_list(&*store, "quality-quarantine", "unknown|", 10).await.unwrap();
        assert_eq!(held.len(), 2, "the first entry and the adopted file");
        let adopted: serde_json::Value = held
            .iter()
            .map(|(_, body)| serde_json::from_str(body).unwrap())
            .find(|e: &serde_json::Value| e["findings"][0]["rule"] == "hl7-file")
            .unwrap();
        assert!(adopted["findings"][0]["message"].as_str().unwrap().contains("DFT"), "{adopted}");
        assert_eq!(crypto::unbase64(adopted["data"].as_str().unwrap()).unwrap(), unknown_type);
        assert_eq!(adopted["details"]["file"], file.as_str());
    }

    #[test]
    fn the_header_of_an_unreadable_message_is_read_leniently() {
        let (details, sender) =
            header(b"\r\nMSH|^~\\&|HIS|FZ-HOSP^1.2.3^ISO|HUTONG||202611300930||ADT^A04|X-9|P|9.9", None);
        assert_eq!(sender.as_deref(), Some("FZ-HOSP"));
        assert_eq!(details["sendingFacility"], "FZ-HOSP^1.2.3^ISO");
        assert_eq!((&details["messageType"], &details["controlId"]), (&"ADT^A04".into(), &"X-9".into()));
        let (details, sender) = header(b"GET / HTTP/1.1", None);
        assert_eq!((sender, &details["controlId"]), (None, &serde_json::Value::Null));
    }

    #[test]
    fn a_correction_is_encoded_in_the_character_set_it_declares() {
        assert_eq!(
            declared_charset("MSH|^~\\&|A|B|C|D|2026||ADT^A04|1|P|2.4||||||GBK\rPID|1"),
            Some(hl7::message::Charset::Gb18030)
        );
        assert_eq!(declared_charset("MSH|^~\\&|A|B|C|D|2026||ADT^A04|1|P|2.4\rPID|1"), None);
        assert_eq!(declared_charset("PID|1"), None);
    }

    #[test]
    fn engine_errors_name_their_table_0357_code_without_internals() {
        let invalid = EngineError::Unprocessable(vec![
            fhir::Issue::error(fhir::IssueType::Value, "Patient.birthDate \"1990-02-30\" is not a valid date"),
            fhir::Issue::error(fhir::IssueType::Value, "second"),
        ]);
        assert_eq!(
            engine_error(&invalid),
            (("102", "Data type error"), "Patient.birthDate \"1990-02-30\" is not a valid date; second".to_string())
        );
        let ((code, _), text) = engine_error(&EngineError::Store(store::StoreError::Backend("SELECT secret".into())));
        assert_eq!(code, "207");
        assert!(!text.contains("SELECT"), "{text}");
    }
}

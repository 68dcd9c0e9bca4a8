//! The HL7 v2 listener of `hutong serve --mllp-listen`: MLLP over TCP, one engine transaction per
//! message, AA only after the commit, AE/AR with ERR segments otherwise. A message that is not
//! committed is kept in `<data>/hl7-quarantine/` for reprocessing before it is NAKed. Rules and
//! mapping: `docs/HL7V2.md`.

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
    /// Where messages that were not committed are kept (`<data>/hl7-quarantine`).
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

/// Handles one message, whoever carried it (MLLP or `POST /hl7v2`): parse, map, commit as
/// `ctx` in one transaction, answer. A message that is not committed is kept in `quarantine`
/// before the NAK is returned. `default_charset` applies when MSH-18 is empty.
pub async fn receive(
    bytes: &[u8],
    ctx: &Ctx,
    default_charset: hl7::message::Charset,
    engine: &Engine,
    quarantine_dir: &Path,
) -> Outcome {
    let source = ctx.source.clone().unwrap_or_default();
    let message = match Message::parse_with_default(bytes, default_charset) {
        Ok(m) => m,
        Err(e) => {
            quarantine(quarantine_dir, bytes, &e.to_string()).await;
            let code = if e.rejects() { AckCode::Reject } else { AckCode::Error };
            return Outcome::new(hl7::ack_unparsed(code, &[AckError::from(&e)], &control_id(), &now()), 400);
        }
    };
    let nak = |e: &Hl7Error| {
        let (code, status) = if e.rejects() { (AckCode::Reject, 400) } else { (AckCode::Error, 422) };
        let status = if matches!(e, Hl7Error::UnknownKey { .. }) { 404 } else { status };
        Outcome::new(hl7::ack(&message, code, &[AckError::from(e)], &control_id(), &now()), status)
    };
    let mapped = match hl7::to_fhir(&message) {
        Ok(m) => m,
        Err(e) => {
            quarantine(quarantine_dir, bytes, &e.to_string()).await;
            return nak(&e);
        }
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
                quarantine(quarantine_dir, bytes, &e.to_string()).await;
                return nak(&e);
            }
            Err(e) => return engine_failure(&message, bytes, &e, quarantine_dir, &source).await,
        }
    }
    let committed = match engine.bundle(ctx, bundle, &RequestOptions::default()).await {
        Ok(response) => response,
        Err(e) => return engine_failure(&message, bytes, &e, quarantine_dir, &source).await,
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
            return engine_failure(&message, bytes, &e, quarantine_dir, &source).await;
        }
    }
    tracing::info!(source = %source, control_id = %message.control_id(), "HL7 message committed");
    Outcome::new(hl7::ack(&message, AckCode::Accept, &[], &control_id(), &now()), 200)
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

/// An engine error: the message is kept and answered AE with the reason.
async fn engine_failure(
    message: &Message,
    bytes: &[u8],
    e: &EngineError,
    quarantine_dir: &Path,
    source: &str,
) -> Outcome {
    let (code, text) = engine_error(e);
    // The reason can quote the message's values (a birth date, a name): the log gets the code
    // only, the reason is in the NAK and the quarantine; storage failures are logged in full.
    tracing::warn!(source = %source, control_id = %message.control_id(), code = code.0, "HL7 message not committed");
    if let EngineError::Store(detail) = e {
        tracing::error!(control_id = %message.control_id(), error = %detail, "storage failure on an HL7 message");
    }
    quarantine(quarantine_dir, bytes, &text).await;
    // The content's faults are 422 like the mapping's; the rest keep the FHIR API's status.
    let status = match e.http_status() {
        400 => 422,
        other => other,
    };
    let ack = hl7::ack(message, AckCode::Error, &[AckError::error(code, text)], &control_id(), &now());
    Outcome::new(ack, status)
}

/// `POST /hl7v2`: the same processing, as the authenticated caller.
pub struct HttpReceiver {
    pub engine: Arc<Engine>,
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

/// Keeps a message that was not committed: `<id>.hl7` holds the bytes as received and
/// `<id>.txt` the reason. Written to a temporary name, synced, then renamed, so a file present
/// under its final name is complete.
async fn quarantine(dir: &Path, bytes: &[u8], reason: &str) {
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
        Ok(Ok(path)) => tracing::info!(file = %path.display(), "HL7 message quarantined"),
        Ok(Err(e)) => tracing::error!(error = %e, "could not quarantine an HL7 message (the sender was NAKed)"),
        Err(e) => tracing::error!(error = %e, "quarantine task failed"),
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

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

/// The listener writes as a system client of its own, `client/hl7-listener`, whose scopes allow
/// only what the mapping writes (Patients and Encounters), so the policy decision point and the
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
        scopes: access::Scopes::parse("system/Patient.crus system/Encounter.crus")
            .expect("the listener's scopes are valid SMART scopes"),
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

/// Handles one message and returns the ACK's bytes.
async fn process(bytes: &[u8], peer: SocketAddr, engine: &Engine, config: &MllpConfig) -> Vec<u8> {
    let message = match Message::parse(bytes) {
        Ok(m) => m,
        Err(e) => {
            quarantine(config, bytes, &e.to_string()).await;
            let code = if e.rejects() { AckCode::Reject } else { AckCode::Error };
            return hl7::ack_unparsed(code, &[AckError::from(&e)], &control_id(), &now()).to_bytes();
        }
    };
    let nak = |e: &Hl7Error| {
        let code = if e.rejects() { AckCode::Reject } else { AckCode::Error };
        hl7::ack(&message, code, &[AckError::from(e)], &control_id(), &now()).to_bytes()
    };
    let bundle = match message.version().and_then(|_| hl7::adt::to_bundle(&message)) {
        Ok(b) => b,
        Err(e) => {
            quarantine(config, bytes, &e.to_string()).await;
            return nak(&e);
        }
    };
    let ctx = Ctx::for_shared(Ctx::next_request_id(), config.principal.clone(), Some(peer.to_string()));
    match engine.bundle(&ctx, bundle, &RequestOptions::default()).await {
        Ok(_) => {
            tracing::info!(peer = %peer, control_id = %message.control_id(), "HL7 message committed");
            hl7::ack(&message, AckCode::Accept, &[], &control_id(), &now()).to_bytes()
        }
        Err(e) => {
            let (code, text) = engine_error(&e);
            tracing::warn!(peer = %peer, control_id = %message.control_id(), error = %text, "HL7 message not committed");
            quarantine(config, bytes, &text).await;
            hl7::ack(&message, AckCode::Error, &[AckError::error(code, text)], &control_id(), &now()).to_bytes()
        }
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
async fn quarantine(config: &MllpConfig, bytes: &[u8], reason: &str) {
    let dir = config.quarantine.clone();
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
    fn the_listener_may_write_patients_and_encounters_only() {
        let scopes = listener_principal().scopes;
        for ty in ["Patient", "Encounter"] {
            assert!(
                scopes.allows(ty, Perm::Create) && scopes.allows(ty, Perm::Update) && scopes.allows(ty, Perm::Search)
            );
            assert!(!scopes.allows(ty, Perm::Delete));
        }
        assert!(!scopes.allows("Observation", Perm::Create));
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

//! The CapabilityStatement: what this server really implements, per resource type, including
//! the official search parameters it does not support and why.

use serde_json::{Value, json};

use crate::Engine;

/// Extension URL listing an unsupported official search parameter on a resource.
pub const UNSUPPORTED_PARAM_EXTENSION: &str =
    "https://hutong.dev/fhir/StructureDefinition/unsupported-search-parameter";

/// Parameters handled by the engine itself rather than the index.
const ENGINE_PARAMS: &[&str] = &["_id", "_lastUpdated"];
/// Official `Resource`/`DomainResource` parameters the server does not implement.
const UNSUPPORTED_COMMON: &[(&str, &str)] = &[
    ("_text", "narrative full-text search is not supported"),
    ("_content", "full-text search is not supported"),
    ("_list", "List-based search is not supported"),
    ("_query", "named queries are not supported"),
    ("_filter", "the _filter syntax is not supported"),
];

/// The websocket endpoint of Subscriptions (`ws://host/fhir/websocket` for `http://host/fhir`).
pub fn websocket_url(base_url: &str) -> String {
    let base = base_url.trim_end_matches('/');
    let base = match base.split_once("://") {
        Some(("https", rest)) => format!("wss://{rest}"),
        Some((_, rest)) => format!("ws://{rest}"),
        None => base.to_string(),
    };
    format!("{base}/websocket")
}

impl Engine {
    /// The CapabilityStatement, true to what is implemented (supported and unsupported search
    /// parameters per type, interactions, operations).
    pub fn capability_statement(&self, base_url: &str) -> Value {
        let unsupported = fhir::index::unsupported_params();
        let mut resources = Vec::new();
        for t in self.defs.resource_types() {
            let mut params = Vec::new();
            let mut missing = Vec::new();
            for p in self.defs.search_params_for(t) {
                let reason =
                    UNSUPPORTED_COMMON.iter().find(|(c, _)| *c == p.code).map(|(_, r)| r.to_string()).or_else(|| {
                        unsupported.iter().find(|(ut, uc, _)| ut == t && *uc == p.code).map(|(_, _, r)| r.clone())
                    });
                match reason {
                    Some(reason) if !ENGINE_PARAMS.contains(&p.code.as_str()) => missing.push(json!({
                        "url": UNSUPPORTED_PARAM_EXTENSION,
                        "extension": [
                            {"url": "code", "valueCode": p.code},
                            {"url": "definition", "valueCanonical": p.url},
                            {"url": "reason", "valueString": reason},
                        ]
                    })),
                    _ => params.push(json!({"name": p.code, "definition": p.url, "type": p.kind.code()})),
                }
            }
            let interactions: Vec<Value> = [
                "read",
                "vread",
                "update",
                "patch",
                "delete",
                "history-instance",
                "history-type",
                "create",
                "search-type",
            ]
            .iter()
            .map(|c| json!({"code": c}))
            .collect();
            let mut resource = json!({
                "type": t,
                "profile": format!("http://hl7.org/fhir/StructureDefinition/{t}"),
                "interaction": interactions,
                "versioning": "versioned-update",
                "readHistory": true,
                "updateCreate": true,
                "conditionalCreate": true,
                "conditionalRead": "not-supported",
                "conditionalUpdate": true,
                "conditionalDelete": "multiple",
                "referencePolicy": ["literal", "logical"],
                "searchInclude": ["*"],
                "searchRevInclude": ["*"],
                "searchParam": params,
            });
            if !missing.is_empty() {
                resource["extension"] = Value::Array(missing);
            }
            if t == "Patient" {
                resource["operation"] = json!([
                    {"name": "everything", "definition": "http://hl7.org/fhir/OperationDefinition/Patient-everything"},
                    {"name": "match", "definition": "http://hl7.org/fhir/OperationDefinition/Patient-match"},
                    {"name": "ihe-pix", "definition": "https://profiles.ihe.net/ITI/PIXm/OperationDefinition/IHE.PIXm.pix"},
                    {"name": "export", "definition": "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/patient-export"}
                ]);
            }
            if t == "Person" {
                resource["operation"] = json!([
                    {"name": "mpi-link", "definition": "https://hutong.dev/fhir/OperationDefinition/Person-mpi-link"},
                    {"name": "mpi-merge", "definition": "https://hutong.dev/fhir/OperationDefinition/Person-mpi-merge"},
                    {"name": "mpi-unmerge", "definition": "https://hutong.dev/fhir/OperationDefinition/Person-mpi-unmerge"},
                    {"name": "mpi-relink", "definition": "https://hutong.dev/fhir/OperationDefinition/Person-mpi-relink"}
                ]);
            }
            if t == "Practitioner" {
                resource["operation"] = json!([
                    {"name": "eligibility", "definition": "https://hutong.dev/fhir/OperationDefinition/Practitioner-eligibility"}
                ]);
            }
            if t == "Group" {
                resource["operation"] = json!([
                    {"name": "export", "definition": "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/group-export"}
                ]);
            }
            if t == "Subscription" {
                resource["documentation"] = json!(
                    "FHIR R4 Subscriptions: criteria are searches on a known type with supported parameters; \
                     channels rest-hook (https or http endpoints on the server's allow-list, https verified against the \
                     trusted roots; no payload: POST to the \
                     endpoint; payload application/fhir+json: PUT endpoint/type/id) and websocket (bind <id> on the \
                     websocket URL of this statement, ping <id> per notification). A Subscription is activated on \
                     write and belongs to the client or user that created it."
                );
            }
            if let Some(operations) = crate::terminology::capability_operations(t) {
                resource["operation"] = operations;
            }
            resources.push(resource);
        }
        json!({
            "resourceType": "CapabilityStatement",
            "status": "active",
            "date": fhir::normalize::format_instant(crate::crud::now_ms()),
            "publisher": "Hutong",
            "kind": "instance",
            "software": {"name": "Hutong", "version": env!("CARGO_PKG_VERSION")},
            "implementation": {"description": "Hutong regional health information platform", "url": base_url},
            "fhirVersion": "4.0.1",
            "format": ["application/fhir+json", "json"],
            "patchFormat": ["application/json-patch+json"],
            "rest": [{
                "mode": "server",
                "extension": [{
                    "url": "http://hl7.org/fhir/StructureDefinition/capabilitystatement-websocket",
                    "valueUri": websocket_url(base_url)
                }],
                "resource": resources,
                "interaction": [{"code": "transaction"}, {"code": "batch"}, {"code": "search-system"}, {"code": "history-system"}],
                "searchParam": [
                    {"name": "_id", "definition": "http://hl7.org/fhir/SearchParameter/Resource-id", "type": "token"},
                    {"name": "_lastUpdated", "definition": "http://hl7.org/fhir/SearchParameter/Resource-lastUpdated", "type": "date"}
                ],
                "operation": [
                    {"name": "export", "definition": "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/export"},
                    {"name": "validate", "definition": "http://hl7.org/fhir/OperationDefinition/Resource-validate"}
                ]
            }]
        })
    }
}

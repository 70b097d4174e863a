//! The Kubernetes manifests (`deploy/kubernetes`) kept in step with the shop: a Deployment,
//! Service and PodDisruptionBudget per service of the registry, on its own port, probed on
//! `/readyz` and `/healthz`, given only variables the service reads, its own credentials, and
//! listed in the kustomization; the orchestrated twin's overlay switches them all and adds the
//! saga. (CI renders the base and the overlay and validates them against the Kubernetes schemas
//! and the operators' CRDs: `.ci/validate_kubernetes.py`.)

use serde::Deserialize;
use serde_norway::Value;
use shop::SERVICES;

const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/kubernetes");

/// Every document of a manifest file.
fn documents(file: &str) -> Vec<Value> {
    let path = format!("{DIR}/{file}");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_norway::Deserializer::from_str(&text)
        .map(|document| Value::deserialize(document).unwrap_or_else(|e| panic!("{path}: {e}")))
        .collect()
}

fn of_kind<'a>(documents: &'a [Value], kind: &str) -> &'a Value {
    documents
        .iter()
        .find(|d| d["kind"].as_str() == Some(kind))
        .unwrap_or_else(|| panic!("a {kind}"))
}

fn text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        other => panic!("not a scalar: {other:?}"),
    }
}

/// The orchestrated twin's overlay: the base, switched, and the services only it runs.
const OVERLAY: &str = "orchestration";

#[test]
fn every_service_has_a_deployment_a_service_and_a_disruption_budget() {
    let read = |file: &str| {
        std::fs::read_to_string(format!("{DIR}/{file}")).unwrap_or_else(|e| panic!("{file}: {e}"))
    };
    let credentials = documents("credentials.yaml");
    // The base deploys the choreographed shop (the default style); the overlay adds the
    // services that run only orchestrated (the saga), each with its credentials in its file.
    for entry in SERVICES {
        let (name, port) = (entry.name, entry.default_addr.port());
        let in_base = entry.runs_in(service_kit::Style::Choreography);
        let (folder, file) = if in_base {
            ("", format!("{name}.yaml"))
        } else {
            ("orchestration/", format!("{OVERLAY}/{name}.yaml"))
        };
        let own = entry.variables;
        let listed = file.trim_start_matches(folder);
        assert!(
            read(&format!("{folder}kustomization.yaml")).contains(&format!("- {listed}")),
            "{file} listed"
        );
        let docs = documents(&file);
        let secrets = &of_kind(if in_base { &credentials } else { &docs }, "Secret")["stringData"];
        let deployment = of_kind(&docs, "Deployment");
        assert_eq!(text(&deployment["metadata"]["name"]), name);
        let container = &deployment["spec"]["template"]["spec"]["containers"][0];
        assert_eq!(
            text(&container["command"][0]),
            entry.binary,
            "{name} runs its binary"
        );
        assert_eq!(
            text(&container["ports"][0]["containerPort"]),
            port.to_string()
        );
        assert_eq!(
            text(&container["readinessProbe"]["httpGet"]["path"]),
            "/readyz"
        );
        assert_eq!(
            text(&container["livenessProbe"]["httpGet"]["path"]),
            "/healthz"
        );
        for probe in ["readinessProbe", "livenessProbe"] {
            assert_eq!(
                text(&container[probe]["httpGet"]["port"]),
                "management",
                "{name}'s {probe} on the management port, never behind customers"
            );
        }
        assert_eq!(text(&container["ports"][1]["name"]), "management");
        assert_eq!(text(&container["ports"][1]["containerPort"]), "9000");
        assert!(
            container["resources"]["requests"]["cpu"].is_string(),
            "{name} requests CPU"
        );
        let env: Vec<(String, &Value)> = container["env"]
            .as_sequence()
            .expect("env")
            .iter()
            .map(|e| (text(&e["name"]), e))
            .collect();
        for (variable, entry) in &env {
            // Secrets come in under helper names and are put into the URLs by $(NAME).
            let helper = entry.get("valueFrom").is_some();
            assert!(
                helper
                    || service_kit::config::VARIABLES.contains(&variable.as_str())
                    || own.contains(&variable.as_str()),
                "{name}: {variable} is not read by the service"
            );
        }
        let value = |variable: &str| {
            env.iter()
                .find(|(v, _)| v == variable)
                .map(|(_, e)| text(&e["value"]))
                .unwrap_or_else(|| panic!("{name}: {variable}"))
        };
        assert_eq!(value("HTTP_ADDR"), format!("0.0.0.0:{port}"));
        assert_eq!(value("HTTP_MANAGEMENT_ADDR"), "0.0.0.0:9000");
        assert!(value("DATABASE_URL").starts_with(&format!("postgres://{name}:")));
        assert!(value("AMQP_URL").starts_with(&format!("amqp://{name}:")));
        for secret in ["db", "amqp"] {
            assert!(
                secrets.get(format!("{name}-{secret}-password")).is_some(),
                "{name}'s {secret} password in shop-credentials"
            );
        }
        let service = of_kind(&docs, "Service");
        assert_eq!(text(&service["spec"]["ports"][0]["port"]), port.to_string());
        let budget = of_kind(&docs, "PodDisruptionBudget");
        assert_eq!(
            budget["spec"]["selector"]["matchLabels"],
            deployment["spec"]["selector"]["matchLabels"]
        );
    }
}

/// The overlay switches every Deployment and the provisioning Job to the orchestrated style and
/// gives the Job the saga's credentials (CI renders it and validates the result).
#[test]
fn the_orchestrated_overlay_switches_every_service_and_provisions_the_saga() {
    let source = std::fs::read_to_string(format!("{DIR}/{OVERLAY}/kustomization.yaml"))
        .expect("the overlay");
    let overlay: Value = serde_norway::from_str(&source).expect("YAML");
    assert_eq!(text(&overlay["resources"][0]), "..", "built on the base");
    let patches = overlay["patches"].as_sequence().expect("patches");
    let patch_of = |kind: &str, name: Option<&str>| -> String {
        patches
            .iter()
            .find(|p| {
                p["target"]["kind"].as_str() == Some(kind) && p["target"]["name"].as_str() == name
            })
            .map(|p| text(&p["patch"]))
            .unwrap_or_else(|| panic!("a patch of {kind} {name:?}"))
    };
    let style = "{name: SHOP_STYLE, value: orchestration}";
    assert!(
        patch_of("Deployment", None).contains(style),
        "every Deployment"
    );
    let job = patch_of("Job", Some("shop-provision"));
    assert!(job.contains(style), "the provisioning Job");
    for secret in ["SAGA_DB_PASSWORD", "SAGA_AMQP_PASSWORD"] {
        assert!(job.contains(secret), "{secret} for the provisioning Job");
    }
}

//! The grants themselves: a service's Postgres role and RabbitMQ permissions, and the RabbitMQ
//! management API that applies the latter.

use sqlx::PgConnection;

#[derive(Debug, thiserror::Error)]
pub enum ProvisionError {
    #[error("database")]
    Database(#[from] sqlx::Error),
    #[error("RabbitMQ")]
    Broker(#[from] lapin::Error),
    #[error("RabbitMQ management API")]
    Http(#[from] reqwest::Error),
    #[error("RabbitMQ management API refused {what}: {status} {body}")]
    Refused {
        what: String,
        status: u16,
        body: String,
    },
}

/// What one service's broker user may do (regular expressions, as RabbitMQ takes them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerPermissions {
    pub configure: String,
    pub write: String,
    pub read: String,
    /// The topic exchange the routing-key rule applies to.
    pub topic_exchange: String,
    pub topic_write: String,
    pub topic_read: String,
}

/// Services that may also read every service's dead-letter queue: the console shows their
/// causes (it peeks: each message stays where it was).
const DEAD_LETTER_READERS: &[&str] = &["console"];

/// The only service that may send commands (write to `<ns>.commands`).
const COMMAND_SENDERS: &[&str] =
    &[<shared_events::participants::Saga as shared_events::Participant>::NAME];

pub fn broker_permissions(namespace: &str, service: &str) -> BrokerPermissions {
    let ns = regex_escape(namespace);
    let svc = regex_escape(service);
    let own = format!("events|{svc}|{svc}\\..+");
    // Declared by every service of the orchestrated style; the marker queues by all.
    let shared = "commands|style\\.[a-z]+";
    // The history: every service may read it (catch up); only the broker writes it.
    let history = "history";
    let write = if COMMAND_SENDERS.contains(&service) {
        format!("^{ns}\\.({own}|commands)$")
    } else {
        format!("^{ns}\\.({own})$")
    };
    let read = if DEAD_LETTER_READERS.contains(&service) {
        format!("^{ns}\\.({own}|{shared}|{history}|[^.]+\\.dlq)$")
    } else {
        format!("^{ns}\\.({own}|{shared}|{history})$")
    };
    BrokerPermissions {
        configure: format!("^{ns}\\.({own}|{shared})$"),
        write,
        read,
        topic_exchange: service_kit::topology::exchange_name(namespace),
        topic_write: format!("^{svc}\\."),
        topic_read: ".*".to_owned(),
    }
}

fn regex_escape(text: &str) -> String {
    text.chars()
        .flat_map(|c| {
            let escape = !(c.is_ascii_alphanumeric() || c == '_');
            escape.then_some('\\').into_iter().chain(std::iter::once(c))
        })
        .collect()
}

/// Creates (or updates) the service's role, gives it its schema, and closes the database to
/// everyone without an explicit grant. Safe to run again, and concurrently.
pub async fn database_role(
    admin: &mut PgConnection,
    database: &str,
    service: &str,
    password: &str,
) -> Result<(), ProvisionError> {
    let create: String =
        sqlx::query_scalar("SELECT format('CREATE ROLE %I LOGIN PASSWORD %L', $1::text, $2::text)")
            .bind(service)
            .bind(password)
            .fetch_one(&mut *admin)
            .await?;
    if let Err(e) = sqlx::query(sqlx::AssertSqlSafe(create))
        .execute(&mut *admin)
        .await
    {
        // Roles are global to the server: it may exist already (from another database, or a
        // concurrent run); then only its password is brought up to date.
        let exists = matches!(&e, sqlx::Error::Database(d) if matches!(d.code().as_deref(), Some("42710" | "23505")));
        if !exists {
            return Err(e.into());
        }
    }
    let statements: Vec<String> = sqlx::query_scalar(
        "SELECT unnest(ARRAY[
            format('ALTER ROLE %I LOGIN PASSWORD %L', $1::text, $2::text),
            format('CREATE SCHEMA IF NOT EXISTS %I AUTHORIZATION %I', $1::text, $1::text),
            format('ALTER SCHEMA %I OWNER TO %I', $1::text, $1::text),
            format('REVOKE ALL ON DATABASE %I FROM PUBLIC', $3::text),
            format('GRANT CONNECT ON DATABASE %I TO %I', $3::text, $1::text)
        ])",
    )
    .bind(service)
    .bind(password)
    .bind(database)
    .fetch_all(&mut *admin)
    .await?;
    for statement in statements {
        sqlx::query(sqlx::AssertSqlSafe(statement))
            .execute(&mut *admin)
            .await?;
    }
    Ok(())
}

/// The RabbitMQ management API, as an administrator.
pub struct Management {
    pub base_url: String,
    pub user: String,
    pub password: String,
    pub http: reqwest::Client,
}

impl Management {
    async fn put(
        &self,
        what: &str,
        path: &str,
        body: serde_json::Value,
    ) -> Result<(), ProvisionError> {
        let response = self
            .http
            .put(format!(
                "{}/api/{path}",
                self.base_url.trim_end_matches('/')
            ))
            .basic_auth(&self.user, Some(&self.password))
            .json(&body)
            .send()
            .await?;
        check(what, response).await
    }

    pub async fn delete(&self, what: &str, path: &str) -> Result<(), ProvisionError> {
        let response = self
            .http
            .delete(format!(
                "{}/api/{path}",
                self.base_url.trim_end_matches('/')
            ))
            .basic_auth(&self.user, Some(&self.password))
            .send()
            .await?;
        check(what, response).await
    }

    pub async fn create_vhost(&self, vhost: &str) -> Result<(), ProvisionError> {
        self.put(
            "vhost",
            &format!("vhosts/{}", encode(vhost)),
            serde_json::json!({}),
        )
        .await
    }

    /// Full rights on `vhost` for `user` (the administrator, tests' spies).
    pub async fn allow_everything(&self, vhost: &str, user: &str) -> Result<(), ProvisionError> {
        self.put(
            "permissions",
            &format!("permissions/{}/{}", encode(vhost), encode(user)),
            serde_json::json!({ "configure": ".*", "write": ".*", "read": ".*" }),
        )
        .await
    }

    /// Creates (or updates) the service's user with exactly [`broker_permissions`].
    pub async fn service_user(
        &self,
        vhost: &str,
        namespace: &str,
        service: &str,
        password: &str,
    ) -> Result<(), ProvisionError> {
        let rules = broker_permissions(namespace, service);
        self.put(
            "user",
            &format!("users/{}", encode(service)),
            serde_json::json!({ "password": password, "tags": "" }),
        )
        .await?;
        self.put(
            "permissions",
            &format!("permissions/{}/{}", encode(vhost), encode(service)),
            serde_json::json!({ "configure": rules.configure, "write": rules.write, "read": rules.read }),
        )
        .await?;
        self.put(
            "topic permissions",
            &format!("topic-permissions/{}/{}", encode(vhost), encode(service)),
            serde_json::json!({
                "exchange": rules.topic_exchange,
                "write": rules.topic_write,
                "read": rules.topic_read,
            }),
        )
        .await
    }
}

async fn check(what: &str, response: reqwest::Response) -> Result<(), ProvisionError> {
    let status = response.status();
    if status.is_success() {
        return Ok(());
    }
    Err(ProvisionError::Refused {
        what: what.to_owned(),
        status: status.as_u16(),
        body: response.text().await.unwrap_or_default(),
    })
}

/// Percent-encodes a path segment (vhost `/` is `%2F`).
fn encode(segment: &str) -> String {
    segment
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_service_may_touch_only_its_own_names_and_publish_only_its_own_keys() {
        let rules = broker_permissions("shop", "payment");
        assert_eq!(
            rules.configure,
            r"^shop\.(events|payment|payment\..+|commands|style\.[a-z]+)$"
        );
        assert_eq!(rules.write, r"^shop\.(events|payment|payment\..+)$");
        assert_eq!(rules.topic_exchange, "shop.events");
        assert_eq!(rules.topic_write, r"^payment\.");
        assert_eq!(
            broker_permissions("shop", "console").read,
            r"^shop\.(events|console|console\..+|commands|style\.[a-z]+|history|[^.]+\.dlq)$",
            "the console may read every dead-letter queue, and write none"
        );
        assert_eq!(
            rules.read, r"^shop\.(events|payment|payment\..+|commands|style\.[a-z]+|history)$",
            "a service reads its own, the commands bound to it, and the shop's history"
        );
        assert!(
            !rules.configure.contains("history") && !rules.write.contains("history"),
            "nobody declares or writes the history but the provisioner and the broker"
        );
        assert_eq!(
            broker_permissions("shop", "saga").write,
            r"^shop\.(events|saga|saga\..+|commands)$",
            "only the saga sends commands"
        );
        let namespace_escaped = broker_permissions("test-1", "orders");
        assert!(namespace_escaped.read.starts_with(r"^test\-1\."));
    }

    #[test]
    fn path_segments_are_encoded() {
        assert_eq!(encode("/"), "%2F");
        assert_eq!(encode("test-abc"), "test-abc");
    }
}

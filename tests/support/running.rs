//! Services running in the test's own process, as their binaries would run them, and the
//! shop they make up, with the HTTP calls the tests make to it.

use super::*;

/// A service running in this process, as its binary would run it.
pub struct RunningService {
    pub name: &'static str,
    pub url: String,
    /// Its management port's, when `HTTP_MANAGEMENT_ADDR` was given.
    pub management_url: Option<String>,
    shutdown: CancellationToken,
    /// `None` once stopped.
    task: Option<JoinHandle<Result<(), service_kit::Error>>>,
}

/// A service a failed test leaves behind is aborted, so it cannot re-declare the queues its
/// environment's cleanup is deleting.
impl Drop for RunningService {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            self.shutdown.cancel();
            task.abort();
        }
    }
}

impl RunningService {
    /// Starts the registry's service `name` and waits until it is ready.
    pub async fn start(name: &str, config: Config) -> Self {
        let entry = shop::registry::find(name).unwrap_or_else(|| panic!("no service {name}"));
        let bound = (entry.bind)(config)
            .await
            .unwrap_or_else(|e| panic!("{name} cannot start: {}", ErrorChain(&e)));
        Self::run(bound).await
    }

    /// Runs a bound service (one of the registry's, or a test double) until stopped.
    pub async fn run(bound: BoundService) -> Self {
        let name = bound.name();
        let url = format!("http://{}", bound.local_addr());
        let management_url = bound.management_addr().map(|addr| format!("http://{addr}"));
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(bound.run(shutdown.clone()));
        let service = Self {
            name,
            url,
            management_url,
            shutdown,
            task: Some(task),
        };
        service.wait_ready().await;
        service
    }

    pub async fn wait_ready(&self) {
        let client = reqwest::Client::new();
        eventually(&format!("{} ready", self.name), || {
            shop::fleet::is_ready(&client, &self.url)
        })
        .await;
    }

    /// Starts a graceful stop, as SIGTERM does, without waiting for it ([`Self::stop`] waits).
    pub fn begin_stop(&self) {
        self.shutdown.cancel();
    }

    /// Graceful stop, as on SIGTERM.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        let Some(task) = self.task.take() else {
            return;
        };
        match task.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => panic!("{} failed: {}", self.name, ErrorChain(&e)),
            Err(e) => panic!("{} panicked: {e}", self.name),
        }
    }
}

/// A running shop: an environment, some services, a spy, an HTTP client.
pub struct Shop {
    // Dropped in this order when a test fails: the services first, the environment last.
    pub services: Vec<RunningService>,
    pub spy: Spy,
    pub http: reqwest::Client,
    pub env: Env,
}

impl Shop {
    /// Every service of the (default) choreographed shop.
    pub async fn start() -> Self {
        Self::start_in(Style::Choreography).await
    }

    /// Every service of a shop of `style` (the orchestrated one runs the saga too).
    pub async fn start_in(style: Style) -> Self {
        Self::start_in_with(style, |_| {}).await
    }

    /// [`Shop::start_in`], each service's test configuration adjusted by `tweak`.
    pub async fn start_in_with(style: Style, tweak: fn(&mut Config)) -> Self {
        let all: Vec<&str> = shop::registry::names_in(style).collect();
        Self::start_styled(style, &all, tweak).await
    }

    pub async fn start_only(names: &[&str]) -> Self {
        Self::start_with(names, |_| {}).await
    }

    /// Starts `names` with their test configuration adjusted by `tweak`.
    pub async fn start_with(names: &[&str], tweak: fn(&mut Config)) -> Self {
        Self::start_styled(Style::Choreography, names, tweak).await
    }

    async fn start_styled(style: Style, names: &[&str], tweak: fn(&mut Config)) -> Self {
        let mut env = Env::new().await;
        env.style = style;
        // The spy first: it declares the exchange and sees every event from the start.
        let spy = Spy::start(&env.namespace).await;
        let mut shop = Self {
            env,
            services: Vec::new(),
            spy,
            http: client(),
        };
        for name in names {
            shop.start_service_with(name, tweak).await;
        }
        shop
    }

    pub fn url(&self, service: &str) -> String {
        self.services
            .iter()
            .find(|s| s.name == service)
            .map(|s| s.url.clone())
            .unwrap_or_else(|| panic!("{service} is not running"))
    }

    /// Where `service` answers probes on connections of their own.
    pub fn management_url(&self, service: &str) -> String {
        self.services
            .iter()
            .find(|s| s.name == service)
            .and_then(|s| s.management_url.clone())
            .unwrap_or_else(|| panic!("{service} has no management port"))
    }

    pub async fn stop_service(&mut self, name: &str) {
        let index = self
            .services
            .iter()
            .position(|s| s.name == name)
            .unwrap_or_else(|| panic!("{name} is not running"));
        self.services.remove(index).stop().await;
    }

    pub async fn start_service(&mut self, name: &str) {
        self.start_service_with(name, |_| {}).await;
    }

    pub async fn start_service_with(&mut self, name: &str, tweak: fn(&mut Config)) {
        let mut config = self.env.config();
        // The console's buttons call this shop's Orders API.
        if let Some(orders) = self.services.iter().find(|s| s.name == "orders") {
            config.set_var("ORDERS_URL", orders.url.clone());
        }
        tweak(&mut config);
        self.services
            .push(RunningService::start(name, config).await);
    }

    /// Starts `name` with its schema in the database at `database_url` (another server's).
    pub async fn start_service_on(&mut self, name: &str, database_url: &str) {
        let mut config = self.env.config();
        config.database_url = database_url.to_owned();
        if let Some(orders) = self.services.iter().find(|s| s.name == "orders") {
            config.set_var("ORDERS_URL", orders.url.clone());
        }
        self.services
            .push(RunningService::start(name, config).await);
    }

    pub async fn stop(self) {
        for service in self.services {
            service.stop().await;
        }
        self.spy.close().await;
        self.env.cleanup().await;
    }

    pub async fn place_order(&self, body: &Value) -> reqwest::Response {
        self.http
            .post(format!("{}/orders", self.url("orders")))
            .json(body)
            .send()
            .await
            .expect("orders reachable")
    }

    /// Places an order that must be accepted; returns its id.
    pub async fn place(&self, body: &Value) -> Uuid {
        let response = self.place_order(body).await;
        assert_eq!(response.status(), 202, "order accepted");
        let placed: Value = response.json().await.expect("JSON body");
        placed["order_id"]
            .as_str()
            .and_then(|id| id.parse().ok())
            .expect("order_id in the response")
    }

    pub async fn get_json(&self, url: &str) -> Value {
        let response = self.http.get(url).send().await.expect("reachable");
        assert!(
            response.status().is_success(),
            "GET {url}: {}",
            response.status()
        );
        response.json().await.expect("JSON body")
    }

    pub async fn order(&self, order_id: Uuid) -> Value {
        self.get_json(&format!("{}/orders/{order_id}", self.url("orders")))
            .await
    }

    /// Waits until the order is settled and returns it.
    pub async fn settled_order(&self, order_id: Uuid) -> Value {
        eventually(&format!("order {order_id} settled"), || async {
            self.order(order_id).await["settled"] == json!(true)
        })
        .await;
        self.order(order_id).await
    }

    /// The messages of one order, events and commands, checked to be exactly `expected` (each
    /// once, any order; a copy the relay published again under the same id counts once), each
    /// correlated by the order id; returned by type for causation checks.
    pub async fn exact_messages(
        &self,
        order_id: Uuid,
        expected: &[&str],
    ) -> std::collections::BTreeMap<String, Seen> {
        let distinct = || {
            self.spy
                .for_order(order_id)
                .into_iter()
                .map(|seen| (seen.envelope.message_id, seen))
                .collect::<std::collections::BTreeMap<_, _>>()
        };
        eventually(&format!("{expected:?} for {order_id}"), || async {
            distinct().len() >= expected.len()
        })
        .await;
        // Anything extra (a second effect, a wrong compensation) would show up within this pause.
        tokio::time::sleep(Duration::from_millis(700)).await;
        let seen = distinct();
        let mut types: Vec<&str> = seen
            .values()
            .map(|s| s.envelope.event_type.as_str())
            .collect();
        types.sort_unstable();
        let mut want = expected.to_vec();
        want.sort_unstable();
        assert_eq!(types, want, "messages of {order_id}");
        seen.into_values()
            .inspect(|s| assert_eq!(s.envelope.correlation_id, order_id))
            .map(|s| (s.envelope.event_type.clone(), s))
            .collect()
    }

    /// Runs the auditor (waiting for orders in flight) and fails the test on any violation.
    pub async fn assert_audit_clean(&self) -> shop::audit::Report {
        let amqp_url = amqp_url();
        let broker = shop::audit::Broker {
            amqp_url: &amqp_url,
            namespace: &self.env.namespace,
        };
        let databases = shop::audit::Databases::single(&self.env.pool);
        let report = shop::audit::audit_until_clean(&databases, Some(&broker), PATIENCE)
            .await
            .expect("the auditor runs");
        assert!(report.is_clean(), "audit failed:\n{report}");
        report
    }

    /// The kinds of notice the customer got for an order, sorted.
    pub async fn notices(&self, order_id: Uuid) -> Vec<String> {
        let url = format!(
            "{}/notifications?order_id={order_id}",
            self.url("notifications")
        );
        let mut kinds: Vec<String> = self
            .get_json(&url)
            .await
            .as_array()
            .expect("a list")
            .iter()
            .filter_map(|n| n["kind"].as_str().map(str::to_owned))
            .collect();
        kinds.sort();
        kinds
    }

    /// Waits until the customer got at least `count` notices for the order, and returns
    /// them all (a test compares them exactly: one too many shows up too).
    pub async fn wait_for_notices(&self, order_id: Uuid, count: usize) -> Vec<String> {
        eventually(&format!("{count} notices for {order_id}"), || async {
            self.notices(order_id).await.len() >= count
        })
        .await;
        self.notices(order_id).await
    }

    /// Waits for the order's notices and checks they are exactly `expected` (sorted).
    pub async fn assert_notices(&self, order_id: Uuid, expected: &[&str]) {
        assert_eq!(
            self.wait_for_notices(order_id, expected.len()).await,
            expected,
            "notices of order {order_id}"
        );
    }

    /// How most tests end: the auditor finds every invariant holding, then the shop stops.
    pub async fn audit_and_stop(self) {
        self.assert_audit_clean().await;
        self.stop().await;
    }

    pub async fn count(&self, sql: &str) -> i64 {
        count(&self.env.pool, sql).await
    }
}

/// A valid order body for the seeded catalog, for `customer` (who must be the caller).
pub fn order_body_for(
    customer: &str,
    sku: &str,
    quantity: u32,
    payment_method: &str,
    country: &str,
) -> Value {
    shop_lab::harness::order_body(customer, sku, quantity, payment_method, country)
}

/// A valid order body for the seeded catalog.
pub fn order_body(sku: &str, quantity: u32, payment_method: &str, country: &str) -> Value {
    shop_lab::harness::order_body(TEST_CUSTOMER, sku, quantity, payment_method, country)
}

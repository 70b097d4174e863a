//! Promises the kit makes in docs/architecture.md ("Delivery guarantees"), each proven against
//! the real broker and database: a transient failure is retried after growing delays, an event
//! no queue is bound for stays unsent until one is, and a stopping service finishes the
//! message and the HTTP request it has in hand.

use std::{
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant},
};

use axum::routing::get;
use service_kit::{
    ApiContext, HandlerError, Routes, Service, ServiceSpec, openapi::OpenApiRouter, topology,
};
use shared_events::{Envelope, Message, OrderConfirmed, StockReserved, participants};
use shop_tests::{Env, RunningService, Spy, TestPublisher, count, eventually, metric};
use tokio::sync::{Notify, Semaphore};
use uuid::Uuid;

/// Stands in for inventory (its tables live in the `inventory` schema of the test's own
/// database): on OrderConfirmed it writes an effect and announces StockReserved, after failing
/// the first `failures` tries with a transient database error, or after waiting for `gate`.
struct Probe {
    failures: usize,
    /// When each try began.
    tries: Mutex<Vec<Instant>>,
    gate: Option<(Arc<Semaphore>, Arc<Notify>)>,
}

type Ctx = service_kit::Ctx<participants::Inventory>;

impl Probe {
    fn new(failures: usize, gate: Option<(Arc<Semaphore>, Arc<Notify>)>) -> Self {
        Self {
            failures,
            tries: Mutex::new(Vec::new()),
            gate,
        }
    }

    async fn confirmed(&self, ctx: &mut Ctx, event: OrderConfirmed) -> Result<(), HandlerError> {
        let tried = {
            let mut tries = self.tries.lock().unwrap_or_else(PoisonError::into_inner);
            tries.push(Instant::now());
            tries.len()
        };
        if tried <= self.failures {
            // A serialization failure: the database's own "try again", neither the message's
            // fault nor an outage.
            sqlx::raw_sql(
                "DO $$ BEGIN RAISE EXCEPTION 'contention; try again'
                 USING ERRCODE = 'serialization_failure'; END $$",
            )
            .execute(ctx.db())
            .await?;
        }
        if let Some((gate, holding)) = &self.gate {
            holding.notify_one();
            gate.acquire()
                .await
                .map_err(|e| HandlerError::Rejected(e.to_string()))?
                .forget();
        }
        sqlx::query("INSERT INTO inventory.effects (message_id, order_id) VALUES ($1, $2)")
            .bind(ctx.message_id())
            .bind(event.order_id)
            .execute(ctx.db())
            .await?;
        ctx.announce(&StockReserved {
            order_id: event.order_id,
            items: vec![],
        });
        Ok(())
    }

    fn tries(&self) -> Vec<Instant> {
        self.tries
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// An HTTP request held open until the test lets it go (one test uses it).
static SLOW_REQUEST_GATE: Semaphore = Semaphore::const_new(0);
static SLOW_REQUEST_HOLDING: Notify = Notify::const_new();

fn slow_api(_: ApiContext) -> OpenApiRouter {
    OpenApiRouter::default().route(
        "/slow",
        get(|| async {
            SLOW_REQUEST_HOLDING.notify_one();
            if let Ok(permit) = SLOW_REQUEST_GATE.acquire().await {
                permit.forget();
            }
            "done"
        }),
    )
}

async fn start(env: &Env, probe: Probe) -> (RunningService, Arc<Probe>) {
    let probe = Arc::new(probe);
    let spec = ServiceSpec {
        migrator: sqlx::migrate!("migrations/probe"),
        routes: Routes::<Shared>::new()
            .on::<OrderConfirmed>(|p, ctx, e| Box::pin(p.0.confirmed(ctx, e))),
        state: Shared(probe.clone()),
        http: Some(Box::new(slow_api)),
        guards_customer_data: false,
        background: None,
        metrics: &[],
    };
    let bound = service_kit::bind(env.config(), spec)
        .await
        .expect("the probe binds");
    (RunningService::run(bound).await, probe)
}

/// The probe, shared with the test that reads its tries.
struct Shared(Arc<Probe>);

impl Service for Shared {
    type Participant = participants::Inventory;
}

fn confirmed() -> (Uuid, Envelope) {
    let order_id = Uuid::now_v7();
    (order_id, Envelope::new(&OrderConfirmed { order_id }, None))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transient_failure_is_retried_after_growing_delays_and_applied_once() {
    let env = Env::new().await;
    let spy = Spy::start(&env.namespace).await;
    // Each failed delivery is tried twice in its batch (with the batch, then alone within its
    // savepoint): six failed tries are three failed deliveries.
    let (service, probe) = start(&env, Probe::new(6, None)).await;
    let publisher = TestPublisher::new(&env.namespace).await;
    let (order_id, message) = confirmed();
    publisher
        .publish(OrderConfirmed::ROUTING_KEY, &message)
        .await;

    let reserved = spy.wait_for::<StockReserved>(order_id).await;
    assert_eq!(reserved.envelope.causation_id, Some(message.message_id));
    let tries = probe.tries();
    assert_eq!(
        tries.len(),
        7,
        "three failed deliveries of two tries, then one"
    );
    let deliveries: Vec<Instant> = tries.iter().step_by(2).copied().collect();
    let waits: Vec<Duration> = deliveries.windows(2).map(|w| w[1] - w[0]).collect();
    // The test schedule (RETRY_DELAYS_MS) is 100 ms then 400 ms, the last delay repeating: a
    // delay queue never hands a message back early.
    let schedule = env.config().retry_delays;
    let expected = [schedule[0], schedule[1], schedule[1]];
    for (waited, delay) in waits.iter().zip(expected) {
        assert!(
            *waited + Duration::from_millis(10) >= delay,
            "waited {waited:?}, the schedule says {delay:?}: {waits:?}"
        );
    }

    let http = reqwest::Client::new();
    assert_eq!(metric(&http, &service.url, "shop_retries_total").await, 3);
    let outcome = |outcome: &str| {
        format!("shop_messages_total{{event=\"OrderConfirmed\",outcome=\"{outcome}\"}}")
    };
    assert_eq!(metric(&http, &service.url, &outcome("retried")).await, 3);
    assert_eq!(metric(&http, &service.url, &outcome("applied")).await, 1);
    assert_eq!(
        count(&env.pool, "SELECT count(*) FROM inventory.effects").await,
        1,
        "one effect for four deliveries"
    );
    assert_eq!(
        count(&env.pool, "SELECT count(*) FROM inventory.outbox").await,
        1,
        "one event announced"
    );
    service.stop().await;
    publisher.close().await;
    spy.close().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_no_queue_is_bound_for_stays_unsent_until_one_is() {
    let env = Env::new().await;
    // No spy yet, and no history (it keeps every event: removed here, as an operator might):
    // nothing in the namespace is bound to StockReserved.
    let (service, _) = start(&env, Probe::new(0, None)).await;
    remove_history(&env.namespace).await;
    let publisher = TestPublisher::new(&env.namespace).await;
    let (order_id, message) = confirmed();
    publisher
        .publish(OrderConfirmed::ROUTING_KEY, &message)
        .await;

    // The broker confirms the publish and returns the message (`mandatory`): not sent.
    eventually("the unroutable publish recorded on its row", || async {
        count(
            &env.pool,
            "SELECT count(*) FROM inventory.outbox WHERE sent_at IS NULL
             AND publish_attempts >= 1 AND last_error LIKE 'unroutable%'",
        )
        .await
            == 1
    })
    .await;
    let http = reqwest::Client::new();
    assert!(metric(&http, &service.url, "shop_outbox_publish_failures_total").await >= 1);
    assert_eq!(
        metric(&http, &service.url, "shop_outbox_published_total").await,
        0
    );

    // A subscriber binds a queue: the relay's sweep delivers the row after all.
    let spy = Spy::start(&env.namespace).await;
    let reserved = spy.wait_for::<StockReserved>(order_id).await;
    assert_eq!(reserved.envelope.causation_id, Some(message.message_id));
    eventually("the row marked sent", || async {
        count(
            &env.pool,
            "SELECT count(*) FROM inventory.outbox WHERE sent_at IS NOT NULL",
        )
        .await
            == 1
    })
    .await;
    service.stop().await;
    publisher.close().await;
    spy.close().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopping_service_finishes_the_message_and_the_request_in_hand() {
    let env = Env::new().await;
    let (gate, holding) = (Arc::new(Semaphore::new(0)), Arc::new(Notify::new()));
    let (service, _) = start(&env, Probe::new(0, Some((gate.clone(), holding.clone())))).await;
    let publisher = TestPublisher::new(&env.namespace).await;
    let (_, message) = confirmed();
    publisher
        .publish(OrderConfirmed::ROUTING_KEY, &message)
        .await;
    holding.notified().await;
    let url = format!("{}/slow", service.url);
    let request = tokio::spawn(async move { reqwest::get(url).await?.text().await });
    SLOW_REQUEST_HOLDING.notified().await;

    // SIGTERM, as it were, with a message and a request in hand; then both may finish.
    let stopping = Instant::now();
    service.begin_stop();
    gate.add_permits(1);
    SLOW_REQUEST_GATE.add_permits(1);
    let answered = request.await.expect("the request task");
    assert_eq!(answered.expect("the request is answered"), "done");
    service.stop().await;
    eprintln!("stopped {:?} after the signal", stopping.elapsed());

    assert_eq!(
        count(&env.pool, "SELECT count(*) FROM inventory.effects").await,
        1,
        "the message in hand was applied"
    );
    // Acked before the consumer went: nothing for the broker to hand out again.
    let queue = topology::queue_name(&env.namespace, "inventory");
    assert_eq!(publisher.ready(&queue).await, 0, "nothing redelivered");
    publisher.close().await;
    env.cleanup().await;
}

/// Deletes the namespace's history stream.
async fn remove_history(namespace: &str) {
    let connection = lapin::Connection::connect(
        &shop_tests::amqp_url(),
        lapin::ConnectionProperties::default(),
    )
    .await
    .expect("the broker");
    let channel = connection.create_channel().await.expect("a channel");
    channel
        .queue_delete(
            service_kit::history::history_name(namespace)
                .as_str()
                .into(),
            lapin::options::QueueDeleteOptions::default(),
        )
        .await
        .expect("the history deleted");
    let _ = connection.close(200, "history removed".into()).await;
}

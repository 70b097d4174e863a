//! Batched consumption (docs/architecture.md, "Batches"), against the real broker and database:
//! the deliveries waiting in the prefetch window are applied in one transaction, a failure
//! touches only its own message, a duplicate in the batch is absorbed, two messages of one order
//! apply in queue order and a message parked behind a batch-mate is freed by the batch's commit.

use std::{sync::Arc, time::Duration};

use service_kit::{Config, Db, HandlerError, Routes, Service, ServiceSpec, headers, topology};
use shared_events::{
    Envelope, Message, OrderConfirmed, OrderPlaced, PaymentCompleted, StockReserved, participants,
};
use shop_lab::harness::order_placed;
use shop_tests::{
    Env, RunningService, Spy, TestPublisher, count, eventually, metric, take_dead_letters,
};
use sqlx::Connection as _;
use tokio::sync::{Notify, Semaphore};
use uuid::Uuid;

/// Stands in for inventory (its tables live in the `inventory` schema of the test's database).
/// OrderConfirmed holds its batch open until the test opens the gate, so what arrives meanwhile
/// waits in the prefetch window and makes the next batch. OrderPlaced records an effect and
/// announces StockReserved (for customer "poison": then fails for good). PaymentCompleted needs
/// its order's OrderPlaced effect first.
struct Gated {
    gate: Arc<Semaphore>,
    holding: Arc<Notify>,
}

impl Service for Gated {
    type Participant = participants::Inventory;
}

type Ctx = service_kit::Ctx<participants::Inventory>;

const POISON: &str = "poison";

impl Gated {
    async fn hold(&self, ctx: &mut Ctx, event: OrderConfirmed) -> Result<(), HandlerError> {
        self.holding.notify_one();
        self.gate
            .acquire()
            .await
            .map_err(|e| HandlerError::Rejected(e.to_string()))?
            .forget();
        effect(ctx, event.order_id).await
    }

    async fn placed(&self, ctx: &mut Ctx, event: OrderPlaced) -> Result<(), HandlerError> {
        effect(ctx, event.order_id).await?;
        ctx.announce(&StockReserved {
            order_id: event.order_id,
            items: vec![],
        });
        if event.customer_id == POISON {
            return Err(HandlerError::Rejected(
                "this order can never be handled".to_owned(),
            ));
        }
        Ok(())
    }

    async fn paid(&self, ctx: &mut Ctx, event: PaymentCompleted) -> Result<(), HandlerError> {
        let placed: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM inventory.effects e JOIN inventory.inbox i USING (message_id)
             WHERE e.order_id = $1 AND i.event_type = 'OrderPlaced'",
        )
        .bind(event.order_id)
        .fetch_one(ctx.db())
        .await?;
        if placed == 0 {
            return Err(HandlerError::Deferred(
                "the order is not placed yet".to_owned(),
            ));
        }
        effect(ctx, event.order_id).await
    }
}

async fn effect(ctx: &mut Ctx, order_id: Uuid) -> Result<(), HandlerError> {
    let message_id = ctx.message_id();
    sqlx::query("INSERT INTO inventory.effects (message_id, order_id) VALUES ($1, $2)")
        .bind(message_id)
        .bind(order_id)
        .execute(ctx.db())
        .await?;
    Ok(())
}

async fn start_gated(
    config: Config,
    gate: &Arc<Semaphore>,
    holding: &Arc<Notify>,
) -> RunningService {
    let spec = ServiceSpec {
        migrator: sqlx::migrate!("migrations/probe"),
        routes: Routes::<Gated>::new()
            .on::<OrderConfirmed>(|p, ctx, e| Box::pin(p.hold(ctx, e)))
            .on::<OrderPlaced>(|p, ctx, e| Box::pin(p.placed(ctx, e)))
            .on::<PaymentCompleted>(|p, ctx, e| Box::pin(p.paid(ctx, e))),
        state: Gated {
            gate: gate.clone(),
            holding: holding.clone(),
        },
        http: None,
        guards_customer_data: false,
        background: None,
        metrics: &[],
    };
    let bound = service_kit::bind(config, spec)
        .await
        .expect("the probe binds");
    RunningService::run(bound).await
}

fn placed(order_id: Uuid, customer: &str) -> Envelope {
    let mut event = order_placed(order_id, "MUG-001", 1);
    event.customer_id = customer.to_owned();
    Envelope::new(&event, None)
}

fn paid(order_id: Uuid) -> Envelope {
    let event = PaymentCompleted {
        order_id,
        payment_id: Uuid::now_v7(),
        amount_cents: 1250,
    };
    Envelope::new(&event, None)
}

/// The probe with a batch of one held open: what is published meanwhile waits in the prefetch
/// window, and [`Held::release`] lets it through as the next batch.
struct Held {
    env: Env,
    spy: Spy,
    probe: RunningService,
    publisher: TestPublisher,
    gate: Arc<Semaphore>,
    /// The message whose handler holds its batch open.
    message: Envelope,
}

impl Held {
    async fn start() -> Self {
        let env = Env::new().await;
        let spy = Spy::start(&env.namespace).await;
        let (gate, holding) = (Arc::new(Semaphore::new(0)), Arc::new(Notify::new()));
        let probe = start_gated(env.config(), &gate, &holding).await;
        let publisher = TestPublisher::new(&env.namespace).await;
        let message = Envelope::new(
            &OrderConfirmed {
                order_id: Uuid::now_v7(),
            },
            None,
        );
        publisher
            .publish(OrderConfirmed::ROUTING_KEY, &message)
            .await;
        holding.notified().await;
        Self {
            env,
            spy,
            probe,
            publisher,
            gate,
            message,
        }
    }

    /// Publishes `batch` in order, waits until the broker has sent it all to the consumer, and
    /// lets the held batch finish.
    async fn release(&self, batch: &[(&str, Envelope)]) {
        for (routing_key, envelope) in batch {
            self.publisher.publish(routing_key, envelope).await;
        }
        let queue = topology::queue_name(&self.env.namespace, "inventory");
        eventually("every message sent to the consumer", || async {
            self.publisher.ready(&queue).await == 0
        })
        .await;
        self.gate.add_permits(1);
    }

    async fn stop(self) {
        self.probe.stop().await;
        self.publisher.close().await;
        self.spy.close().await;
        self.env.cleanup().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_commits_together_and_a_failure_touches_only_its_own_message() {
    let held = Held::start().await;

    // Meanwhile, in queue order: orders placed, one of them poison; a payment after its order
    // (it must see the order's effect, uncommitted, in the same transaction); a payment before
    // its order (parked, then freed by the commit of the batch it shares with its order); one
    // message twice.
    let good: Vec<Uuid> = (0..8).map(|_| Uuid::now_v7()).collect();
    let (early, poison, twice) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
    let twice_placed = placed(twice, "cust-7");
    let mut batch = vec![
        (OrderPlaced::ROUTING_KEY, placed(good[0], "cust-7")),
        (PaymentCompleted::ROUTING_KEY, paid(good[0])),
        (PaymentCompleted::ROUTING_KEY, paid(early)),
        (OrderPlaced::ROUTING_KEY, placed(good[1], "cust-7")),
        (OrderPlaced::ROUTING_KEY, placed(poison, POISON)),
        (OrderPlaced::ROUTING_KEY, twice_placed.clone()),
        (OrderPlaced::ROUTING_KEY, placed(early, "cust-7")),
        (OrderPlaced::ROUTING_KEY, twice_placed),
    ];
    batch.extend(
        good[2..]
            .iter()
            .map(|&order| (OrderPlaced::ROUTING_KEY, placed(order, "cust-7"))),
    );
    held.release(&batch).await;

    let dead = take_dead_letters(&held.env.namespace, "inventory", 1).await;
    assert_eq!(dead[0].envelope().correlation_id, poison);
    assert!(
        dead[0]
            .header(headers::DEAD_LETTER_REASON)
            .is_some_and(|reason| reason.contains("can never be handled")),
        "dead-lettered with its reason"
    );
    for &order in good.iter().chain([&early, &twice]) {
        held.spy.wait_for::<StockReserved>(order).await;
    }
    eventually(
        "the early payment applied once its order committed",
        || async {
            count(
                &held.env.pool,
                &format!("SELECT count(*) FROM inventory.effects WHERE order_id = '{early}'"),
            )
            .await
                == 2
        },
    )
    .await;

    // Two transactions of deliveries: the held one, then everything that waited.
    let http = reqwest::Client::new();
    assert_eq!(
        metric(&http, &held.probe.url, "shop_consumer_batch_size_count").await,
        2
    );
    assert_eq!(
        metric(&http, &held.probe.url, "shop_consumer_batch_size_sum").await,
        1 + batch.len() as u64
    );
    assert_eq!(
        count(
            &held.env.pool,
            &format!(
                "SELECT count(DISTINCT received_at) FROM inventory.inbox
                 WHERE message_id <> '{}' AND NOT (event_type = 'PaymentCompleted' AND correlation_id = '{early}')",
                held.message.message_id
            ),
        )
        .await,
        1,
        "the batch's messages share one transaction"
    );
    // The poison left nothing: no effect, no announcement; its batch-mates all stand.
    assert_eq!(
        count(
            &held.env.pool,
            &format!("SELECT count(*) FROM inventory.effects WHERE order_id = '{poison}'"),
        )
        .await,
        0
    );
    assert_eq!(
        count(
            &held.env.pool,
            &format!("SELECT count(*) FROM inventory.outbox WHERE correlation_id = '{poison}'"),
        )
        .await,
        0
    );
    // held + 8 placed + 1 paid after its order + early placed and paid + twice once.
    assert_eq!(
        count(&held.env.pool, "SELECT count(*) FROM inventory.effects").await,
        13
    );
    assert_eq!(
        count(
            &held.env.pool,
            "SELECT count(*) FROM inventory.outbox WHERE event_type = 'StockReserved'"
        )
        .await,
        10,
        "one StockReserved per order placed, none for the poison, one for the message twice"
    );
    assert_eq!(
        count(
            &held.env.pool,
            "SELECT coalesce(sum(duplicates), 0) FROM inventory.inbox"
        )
        .await,
        1,
        "the copy in the batch absorbed"
    );
    let series = |event: &str, outcome: &str| {
        format!("shop_messages_total{{event=\"{event}\",outcome=\"{outcome}\"}}")
    };
    for (event, outcome, expected) in [
        ("PaymentCompleted", "applied", 1),
        ("PaymentCompleted", "parked", 1),
        ("PaymentCompleted", "unparked", 1),
        ("OrderPlaced", "applied", 10),
        ("OrderPlaced", "duplicate", 1),
        ("OrderPlaced", "rejected", 1),
    ] {
        assert_eq!(
            metric(&http, &held.probe.url, &series(event, outcome)).await,
            expected,
            "{event} {outcome}"
        );
    }
    assert_eq!(
        metric(&http, &held.probe.url, "shop_retries_total").await,
        0
    );
    assert_eq!(
        count(&held.env.pool, "SELECT count(*) FROM inventory.parked").await,
        0
    );

    held.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lone_message_is_a_batch_of_one() {
    let env = Env::new().await;
    let spy = Spy::start(&env.namespace).await;
    let (gate, holding) = (Arc::new(Semaphore::new(0)), Arc::new(Notify::new()));
    let probe = start_gated(env.config(), &gate, &holding).await;
    let publisher = TestPublisher::new(&env.namespace).await;

    for _ in 0..3 {
        let order = Uuid::now_v7();
        publisher
            .publish(OrderPlaced::ROUTING_KEY, &placed(order, "cust-7"))
            .await;
        // Nothing else is published meanwhile: the consumer does not wait for company.
        spy.wait_for::<StockReserved>(order).await;
    }
    let http = reqwest::Client::new();
    assert_eq!(
        metric(&http, &probe.url, "shop_consumer_batch_size_count").await,
        3
    );
    assert_eq!(
        metric(
            &http,
            &probe.url,
            "shop_consumer_batch_size_bucket{le=\"1\"}"
        )
        .await,
        3,
        "each alone in its batch"
    );
    probe.stop().await;
    publisher.close().await;
    spy.close().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_the_inbox_cannot_hold_fails_alone_in_its_batch() {
    let held = Held::start().await;
    // Before Postgres's first timestamp (4713 BC): the batch's one inbox insert is refused.
    let (before, unstorable, after) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
    let mut far = placed(unstorable, "cust-7");
    far.occurred_at = "-5000-01-01T00:00:00Z".parse().expect("a far date");
    let batch = [placed(before, "cust-7"), far, placed(after, "cust-7")]
        .map(|envelope| (OrderPlaced::ROUTING_KEY, envelope));
    held.release(&batch).await;

    let dead = take_dead_letters(&held.env.namespace, "inventory", 1).await;
    assert_eq!(dead[0].envelope().correlation_id, unstorable);
    assert!(
        dead[0]
            .header(headers::DEAD_LETTER_REASON)
            .is_some_and(|reason| reason.contains("cannot store")),
        "{:?}",
        dead[0].header(headers::DEAD_LETTER_REASON)
    );
    held.spy.wait_for::<StockReserved>(before).await;
    held.spy.wait_for::<StockReserved>(after).await;
    let http = reqwest::Client::new();
    assert_eq!(
        metric(&http, &held.probe.url, "shop_consumer_batch_size_count").await,
        2,
        "the three arrived as one batch"
    );
    assert_eq!(
        metric(&http, &held.probe.url, "shop_retries_total").await,
        0
    );
    held.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumer_batch_max_bounds_a_batch() {
    let env = Env::new().await;
    let spy = Spy::start(&env.namespace).await;
    let (gate, holding) = (Arc::new(Semaphore::new(0)), Arc::new(Notify::new()));
    let mut config = env.config();
    config.batch_max = 4;
    let probe = start_gated(config, &gate, &holding).await;
    let publisher = TestPublisher::new(&env.namespace).await;

    // A batch of one held open while ten messages gather in the prefetch window (16).
    let held = Envelope::new(
        &OrderConfirmed {
            order_id: Uuid::now_v7(),
        },
        None,
    );
    publisher.publish(OrderConfirmed::ROUTING_KEY, &held).await;
    holding.notified().await;
    let orders: Vec<Uuid> = (0..10).map(|_| Uuid::now_v7()).collect();
    for order in &orders {
        publisher
            .publish(OrderPlaced::ROUTING_KEY, &placed(*order, "cust-7"))
            .await;
    }
    let queue = topology::queue_name(&env.namespace, "inventory");
    eventually("every message sent to the consumer", || async {
        publisher.ready(&queue).await == 0
    })
    .await;
    gate.add_permits(1);
    for order in &orders {
        spy.wait_for::<StockReserved>(*order).await;
    }

    let http = reqwest::Client::new();
    let batches = metric(&http, &probe.url, "shop_consumer_batch_size_count").await;
    let at_most = |size: u32| {
        let name = format!("shop_consumer_batch_size_bucket{{le=\"{size}\"}}");
        let (http, url) = (&http, &probe.url);
        async move { metric(http, url, &name).await }
    };
    assert_eq!(
        metric(&http, &probe.url, "shop_consumer_batch_size_sum").await,
        11,
        "every delivery in a batch"
    );
    assert_eq!(
        at_most(4).await,
        batches,
        "no batch over CONSUMER_BATCH_MAX"
    );
    assert!(at_most(3).await < batches, "a batch of the full four");
    probe.stop().await;
    publisher.close().await;
    spy.close().await;
    env.cleanup().await;
}

/// A batch given up while it waits for the batch lock (a replica of its service holds it) does
/// not go back to the pool holding the lock in an open transaction: once the lock comes it is
/// rolled back, and the next batch begins at once.
#[tokio::test]
async fn a_batch_given_up_waiting_for_the_lock_leaves_no_transaction_open() {
    let env = Env::new().await;
    let db = Db::connect_lazy(&env.config(), "payment").expect("a database url");
    let mut replica = sqlx::PgConnection::connect(&env.database_url)
        .await
        .expect("the test's database");
    sqlx::query("SELECT pg_advisory_lock(hashtext('payment.batches'))")
        .execute(&mut replica)
        .await
        .expect("the batch lock, as a replica holds it");

    let waiting = "SELECT count(*) FROM pg_stat_activity
                    WHERE datname = current_database() AND application_name = 'payment'
                      AND wait_event = 'advisory'";
    let mut batch = Box::pin(db.begin_batch());
    tokio::select! {
        began = &mut batch => panic!("a batch began while the lock was held: {:?}", began.err()),
        () = eventually("the batch waits for the lock", || async {
            count(&env.pool, waiting).await == 1
        }) => {}
    }
    drop(batch);
    sqlx::query("SELECT pg_advisory_unlock(hashtext('payment.batches'))")
        .execute(&mut replica)
        .await
        .expect("the lock let go");

    eventually(
        "the given-up batch's connection is back in the pool",
        || async { db.pool.size() == 1 && db.pool.num_idle() == 1 },
    )
    .await;
    let open = "SELECT count(*) FROM pg_stat_activity
                 WHERE datname = current_database() AND application_name = 'payment'
                   AND state <> 'idle'";
    let left_open = count(&env.pool, open).await;
    let next_began = match tokio::time::timeout(Duration::from_secs(10), db.begin_batch()).await {
        Ok(Ok(next)) => next.rollback().await.is_ok(),
        _ => false,
    };

    // Asserted once all is closed: a pool left holding the lock would keep the cleanup waiting.
    db.pool.close().await;
    replica.close().await.expect("closed");
    env.cleanup().await;
    assert_eq!(left_open, 0, "no transaction left open");
    assert!(next_began, "the next batch begins at once");
}

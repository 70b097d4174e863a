//! The delivery guarantees (docs/architecture.md, "Delivery guarantees"), each proven against the real broker and database:
//! outbox atomicity, the idempotent inbox, the relay's sweep and its safety with two instances,
//! deferral of events that overtake what they depend on, dead letters for poison.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::atomic::{AtomicU32, Ordering},
    time::Duration,
};

use serde_json::json;
use service_kit::{HandlerError, Routes, Service, ServiceSpec, headers};
use shared_events::{
    Envelope, Message, OrderCancelled, OrderConfirmed, OrderPlaced, PaymentCompleted,
    StockReserved, participants,
};
use shop_lab::harness::order_placed;
use shop_tests::{
    Env, RunningService, Shop, Spy, TestPublisher, count, eventually, insert_outbox_row, metric,
    take_dead_letters,
};
use uuid::Uuid;

fn payment_completed(order_id: Uuid, amount_cents: i64) -> PaymentCompleted {
    PaymentCompleted {
        order_id,
        payment_id: Uuid::now_v7(),
        amount_cents,
    }
}

// ---- A probe service: the kit with handlers that fail on purpose ---------------------------

/// Fails the first `failures` attempts at OrderConfirmed, after announcing an event and writing
/// an effect in the same transaction; always rejects OrderCancelled the same way. It stands in
/// for inventory (the participant whose StockReserved it announces), so its tables live in the
/// `inventory` schema of the test's own database.
struct Probe {
    failures: u32,
    attempts: AtomicU32,
}

impl Service for Probe {
    type Participant = participants::Inventory;
}

type Ctx = service_kit::Ctx<participants::Inventory>;

impl Probe {
    async fn flaky(&self, ctx: &mut Ctx, event: OrderConfirmed) -> Result<(), HandlerError> {
        self.write_effect_and_announce(ctx, event.order_id).await?;
        let attempt = self.attempts.fetch_add(1, Ordering::SeqCst) + 1;
        if attempt <= self.failures {
            return Err(HandlerError::Deferred(format!(
                "failing attempt {attempt} on purpose"
            )));
        }
        Ok(())
    }

    async fn poisoned(&self, ctx: &mut Ctx, event: OrderCancelled) -> Result<(), HandlerError> {
        self.write_effect_and_announce(ctx, event.order_id).await?;
        Err(HandlerError::Rejected(
            "this message can never be handled".to_owned(),
        ))
    }

    async fn write_effect_and_announce(
        &self,
        ctx: &mut Ctx,
        order_id: Uuid,
    ) -> Result<(), HandlerError> {
        let message_id = ctx.message_id();
        sqlx::query("INSERT INTO inventory.effects (message_id, order_id) VALUES ($1, $2)")
            .bind(message_id)
            .bind(order_id)
            .execute(ctx.db())
            .await?;
        ctx.announce(&StockReserved {
            order_id,
            items: vec![],
        });
        Ok(())
    }
}

async fn start_probe(env: &Env, failures: u32) -> RunningService {
    let spec = ServiceSpec {
        migrator: sqlx::migrate!("migrations/probe"),
        routes: Routes::<Probe>::new()
            .on::<OrderConfirmed>(|p, ctx, e| Box::pin(p.flaky(ctx, e)))
            .on::<OrderCancelled>(|p, ctx, e| Box::pin(p.poisoned(ctx, e))),
        state: Probe {
            failures,
            attempts: AtomicU32::new(0),
        },
        http: None,
        guards_customer_data: false,
        background: None,
        metrics: &[],
    };
    let bound = service_kit::bind(env.config(), spec)
        .await
        .expect("the probe binds");
    RunningService::run(bound).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_handler_publishes_nothing_and_its_retry_publishes_once() {
    let env = Env::new().await;
    let spy = Spy::start(&env.namespace).await;
    let probe = start_probe(&env, 2).await;
    let publisher = TestPublisher::new(&env.namespace).await;

    let order_id = Uuid::now_v7();
    let incoming = Envelope::new(&OrderConfirmed { order_id }, None);
    publisher
        .publish(OrderConfirmed::ROUTING_KEY, &incoming)
        .await;

    let announced = spy.wait_for::<StockReserved>(order_id).await;
    assert_eq!(announced.envelope.causation_id, Some(incoming.message_id));
    tokio::time::sleep(Duration::from_millis(700)).await;

    let seen: Vec<_> = spy
        .for_order(order_id)
        .into_iter()
        .map(|s| s.envelope.event_type)
        .collect();
    assert_eq!(
        seen,
        vec!["OrderConfirmed", "StockReserved"],
        "two failed attempts left no event"
    );
    assert_eq!(
        count(&env.pool, "SELECT count(*) FROM inventory.effects").await,
        1,
        "failed attempts rolled back their effect"
    );
    assert_eq!(
        count(&env.pool, "SELECT count(*) FROM inventory.outbox").await,
        1,
        "and their outbox rows"
    );
    assert_eq!(
        count(&env.pool, "SELECT count(*) FROM inventory.inbox").await,
        1
    );
    // The delivery was parked; tries after it (the two failures' successor included) came from
    // the parking lot, not from delay queues.
    let http = reqwest::Client::new();
    let series = |outcome: &str| {
        format!("shop_messages_total{{event=\"OrderConfirmed\",outcome=\"{outcome}\"}}")
    };
    assert_eq!(metric(&http, &probe.url, &series("parked")).await, 1);
    assert_eq!(metric(&http, &probe.url, &series("unparked")).await, 1);
    assert_eq!(metric(&http, &probe.url, "shop_retries_total").await, 0);
    assert_eq!(
        count(&env.pool, "SELECT count(*) FROM inventory.parked").await,
        0,
        "out of the parking lot"
    );

    probe.stop().await;
    publisher.close().await;
    spy.close().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_message_is_dead_lettered_with_its_reason_and_leaves_no_trace() {
    let env = Env::new().await;
    let spy = Spy::start(&env.namespace).await;
    let probe = start_probe(&env, 0).await;
    let publisher = TestPublisher::new(&env.namespace).await;

    let order_id = Uuid::now_v7();
    let poison = Envelope::new(
        &OrderCancelled {
            order_id,
            reason: "test".to_owned(),
        },
        None,
    );
    publisher
        .publish(OrderCancelled::ROUTING_KEY, &poison)
        .await;
    let dead = take_dead_letters(&env.namespace, "inventory", 1).await;
    let dead = &dead[0];
    assert_eq!(
        Envelope::from_json(&dead.body)
            .expect("the original body")
            .message_id,
        poison.message_id
    );
    assert!(
        dead.header(headers::DEAD_LETTER_REASON)
            .is_some_and(|r| r.contains("can never be handled"))
    );
    assert_eq!(
        dead.header(headers::ORIGINAL_ROUTING_KEY).as_deref(),
        Some(OrderCancelled::ROUTING_KEY)
    );

    // The consumer keeps going: the next message is handled.
    let fine = Envelope::new(&OrderConfirmed { order_id }, None);
    publisher.publish(OrderConfirmed::ROUTING_KEY, &fine).await;
    spy.wait_for::<StockReserved>(order_id).await;

    assert_eq!(
        count(&env.pool, "SELECT count(*) FROM inventory.effects").await,
        1,
        "only the good message had an effect"
    );
    assert_eq!(
        count(&env.pool, "SELECT count(*) FROM inventory.outbox").await,
        1
    );

    probe.stop().await;
    publisher.close().await;
    spy.close().await;
    env.cleanup().await;
}

// ---- The real services ---------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_message_delivered_twice_has_one_effect_and_one_outgoing_event() {
    let shop = Shop::start_only(&["payment"]).await;
    let publisher = TestPublisher::new(&shop.env.namespace).await;
    let order_id = Uuid::now_v7();
    let placed = Envelope::new(&order_placed(order_id, "MUG-001", 1), None);

    publisher.publish(OrderPlaced::ROUTING_KEY, &placed).await;
    publisher.publish(OrderPlaced::ROUTING_KEY, &placed).await;
    // Deliveries are handled concurrently: let the first one charge before the next message
    // arrives, so the charge is known to be caused by `placed`.
    let payment = shop.url("payment");
    eventually("first OrderPlaced applied", || async {
        metric(
            &shop.http,
            &payment,
            "shop_messages_total{event=\"OrderPlaced\",outcome=\"applied\"}",
        )
        .await
            == 1
    })
    .await;
    // Another OrderPlaced for the same order under a new message id: still one charge.
    let again = Envelope::new(&order_placed(order_id, "MUG-001", 1), None);
    publisher.publish(OrderPlaced::ROUTING_KEY, &again).await;

    eventually("duplicate absorbed", || async {
        metric(
            &shop.http,
            &payment,
            "shop_messages_total{event=\"OrderPlaced\",outcome=\"duplicate\"}",
        )
        .await
            == 1
            && metric(
                &shop.http,
                &payment,
                "shop_messages_total{event=\"OrderPlaced\",outcome=\"applied\"}",
            )
            .await
                == 2
    })
    .await;
    tokio::time::sleep(Duration::from_millis(700)).await;

    let completed: Vec<_> = shop
        .spy
        .for_order(order_id)
        .into_iter()
        .filter(|s| s.envelope.event_type == PaymentCompleted::TYPE)
        .collect();
    assert_eq!(completed.len(), 1, "one PaymentCompleted");
    assert_eq!(completed[0].envelope.causation_id, Some(placed.message_id));
    assert_eq!(
        shop.count("SELECT count(*) FROM payment.payments").await,
        1,
        "one charge"
    );
    assert_eq!(
        shop.count("SELECT count(*) FROM payment.inbox").await,
        2,
        "two distinct messages seen"
    );
    assert_eq!(shop.count("SELECT count(*) FROM payment.outbox").await, 1);
    assert_eq!(
        shop.count("SELECT sum(duplicates) FROM payment.inbox")
            .await,
        1,
        "the inbox counts what it absorbed"
    );
    publisher.close().await;
    shop.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_committed_while_the_relay_was_down_are_published_by_the_sweep() {
    let mut shop = Shop::start_only(&["payment"]).await;
    shop.stop_service("payment").await;

    // Committed while no relay ran (a crash right after commit looks the same).
    let order_id = Uuid::now_v7();
    let event = PaymentCompleted {
        order_id,
        payment_id: Uuid::now_v7(),
        amount_cents: 999,
    };
    let left_behind = insert_outbox_row(&shop.env.pool, "payment", &event).await;

    shop.start_service("payment").await;
    let seen = shop.spy.wait_for::<PaymentCompleted>(order_id).await;
    assert_eq!(
        seen.envelope.message_id, left_behind.message_id,
        "the same message id"
    );

    // A row no commit hands over (another instance's) is found by the periodic sweep.
    let other_order = Uuid::now_v7();
    let event = PaymentCompleted {
        order_id: other_order,
        payment_id: Uuid::now_v7(),
        amount_cents: 1,
    };
    let swept = insert_outbox_row(&shop.env.pool, "payment", &event).await;
    let seen = shop.spy.wait_for::<PaymentCompleted>(other_order).await;
    assert_eq!(seen.envelope.message_id, swept.message_id);

    eventually("rows marked sent", || async {
        shop.count("SELECT count(*) FROM payment.outbox WHERE sent_at IS NULL")
            .await
            == 0
    })
    .await;
    assert_eq!(shop.spy.all().len(), 2, "each row published once");
    shop.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_relays_on_one_outbox_publish_every_row_exactly_once() {
    let mut shop = Shop::start_only(&["payment"]).await;
    shop.start_service("payment").await;
    assert_eq!(shop.services.len(), 2, "two instances of payment");

    const ROWS: usize = 300;
    let mut expected = BTreeSet::new();
    for _ in 0..ROWS {
        let event = PaymentCompleted {
            order_id: Uuid::now_v7(),
            payment_id: Uuid::now_v7(),
            amount_cents: 5,
        };
        expected.insert(
            insert_outbox_row(&shop.env.pool, "payment", &event)
                .await
                .message_id,
        );
    }
    eventually("all rows published", || async {
        shop.spy.all().len() >= ROWS
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;

    let mut times_seen: BTreeMap<Uuid, usize> = BTreeMap::new();
    for seen in shop.spy.all() {
        *times_seen.entry(seen.envelope.message_id).or_default() += 1;
    }
    assert_eq!(
        times_seen.keys().copied().collect::<BTreeSet<_>>(),
        expected
    );
    assert!(
        times_seen.values().all(|&n| n == 1),
        "no row published twice"
    );
    assert_eq!(
        shop.count("SELECT count(*) FROM payment.outbox WHERE sent_at IS NULL")
            .await,
        0
    );
    shop.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_that_overtakes_its_prerequisite_is_deferred_not_dropped() {
    let shop = Shop::start_only(&["inventory"]).await;
    let publisher = TestPublisher::new(&shop.env.namespace).await;
    let order_id = Uuid::now_v7();

    // Paid before inventory heard what was ordered.
    let paid = Envelope::new(&payment_completed(order_id, 2500), None);
    publisher
        .publish(PaymentCompleted::ROUTING_KEY, &paid)
        .await;
    let inventory = shop.url("inventory");
    eventually("payment parked: in the parking lot, acked", || async {
        shop.count("SELECT count(*) FROM inventory.parked").await == 1
    })
    .await;
    assert_eq!(
        metric(
            &shop.http,
            &inventory,
            "shop_messages_total{event=\"PaymentCompleted\",outcome=\"parked\"}",
        )
        .await,
        1
    );
    assert_eq!(
        metric(&shop.http, &inventory, "shop_retries_total").await,
        0,
        "not in a delay queue"
    );

    // Meanwhile the queue is not blocked: another order goes through.
    let other = Uuid::now_v7();
    publisher
        .publish(
            OrderPlaced::ROUTING_KEY,
            &Envelope::new(&order_placed(other, "TEE-001", 1), None),
        )
        .await;
    publisher
        .publish(
            PaymentCompleted::ROUTING_KEY,
            &Envelope::new(&payment_completed(other, 1), None),
        )
        .await;
    shop.spy.wait_for::<StockReserved>(other).await;

    publisher
        .publish(
            OrderPlaced::ROUTING_KEY,
            &Envelope::new(&order_placed(order_id, "MUG-001", 2), None),
        )
        .await;
    let reserved = shop.spy.wait_for::<StockReserved>(order_id).await;
    assert_eq!(reserved.envelope.causation_id, Some(paid.message_id));
    let reserved: StockReserved = reserved.envelope.decode().expect("payload");
    assert_eq!(
        reserved.items,
        vec![shared_events::StockLine {
            sku: "MUG-001".to_owned(),
            quantity: 2
        }]
    );
    // Applied after the commit of OrderPlaced, in the transaction that took it out of the lot
    // (the other order's payment may have been parked for a moment too: every parked one is).
    let counted = |outcome: &'static str| {
        let http = &shop.http;
        let inventory = &inventory;
        async move {
            metric(
                http,
                inventory,
                &format!("shop_messages_total{{event=\"PaymentCompleted\",outcome=\"{outcome}\"}}"),
            )
            .await
        }
    };
    eventually("every parked payment applied", || async {
        counted("unparked").await == counted("parked").await
    })
    .await;
    assert_eq!(shop.count("SELECT count(*) FROM inventory.parked").await, 0);
    assert_eq!(
        metric(&shop.http, &inventory, "shop_retries_total").await,
        0
    );
    publisher.close().await;
    shop.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_parked_by_one_instance_is_freed_by_another_instances_commit() {
    // The parked sweep is a minute away, longer than the test waits: only the NOTIFY sent by
    // the other instance's commit can free the message in time. (The sweep itself is what
    // retries the probe's failing handler above: nothing else commits for that order.)
    let slow_sweep: fn(&mut service_kit::Config) =
        |config| config.retry_delays = shop_tests::SLOW_RETRY_DELAYS.to_vec();
    let mut shop = Shop::start_with(&["inventory"], slow_sweep).await;
    let publisher = TestPublisher::new(&shop.env.namespace).await;
    let order_id = Uuid::now_v7();

    let paid = Envelope::new(&payment_completed(order_id, 1250), None);
    publisher
        .publish(PaymentCompleted::ROUTING_KEY, &paid)
        .await;
    eventually("payment parked", || async {
        shop.count("SELECT count(*) FROM inventory.parked").await == 1
    })
    .await;
    // The instance that parked it goes; another, which never heard of it, commits the fact it
    // waits for.
    shop.stop_service("inventory").await;
    shop.start_service_with("inventory", slow_sweep).await;
    publisher
        .publish(
            OrderPlaced::ROUTING_KEY,
            &Envelope::new(&order_placed(order_id, "TEE-001", 1), None),
        )
        .await;
    let reserved = shop.spy.wait_for::<StockReserved>(order_id).await;
    assert_eq!(reserved.envelope.causation_id, Some(paid.message_id));
    assert_eq!(
        shop.count("SELECT count(*) FROM inventory.parked").await,
        0,
        "out of the lot"
    );
    assert_eq!(
        shop.count("SELECT count(*) FROM inventory.reservations WHERE status = 'reserved'")
            .await,
        1,
        "reserved once"
    );
    publisher.close().await;
    shop.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_are_grouped_by_cause_and_one_cause_is_redriven_and_recorded() {
    use service_kit::dead_letters::{self, Selection};
    let shop = Shop::start_with(&["inventory"], |config| config.max_attempts = 2).await;
    let publisher = TestPublisher::new(&shop.env.namespace).await;
    let amqp_url = shop_tests::amqp_url();
    let namespace = shop.env.namespace.clone();

    // One cause in three orders: paid, but the order never came within two tries.
    let orders: Vec<Uuid> = (0..3).map(|_| Uuid::now_v7()).collect();
    let mut paid = Vec::new();
    for order_id in &orders {
        let payment = Envelope::new(&payment_completed(*order_id, 2500), None);
        publisher
            .publish(PaymentCompleted::ROUTING_KEY, &payment)
            .await;
        paid.push(payment.message_id);
    }
    // Another, twice: a type inventory does not know.
    for _ in 0..2 {
        let mut unknown = Envelope::new(&order_placed(Uuid::now_v7(), "MUG-001", 1), None);
        unknown.event_type = "OrderTeleported".to_owned();
        publisher.publish(OrderPlaced::ROUTING_KEY, &unknown).await;
    }
    let letters = async || {
        dead_letters::list(&amqp_url, &namespace, "inventory")
            .await
            .expect("list")
    };
    eventually("five dead letters", || async { letters().await.len() == 5 }).await;

    let groups = dead_letters::group("inventory", &letters().await);
    let shape: Vec<(&str, usize)> = groups
        .iter()
        .map(|g| (g.event_type.as_str(), g.count))
        .collect();
    assert_eq!(
        shape,
        [(PaymentCompleted::TYPE, 3), ("OrderTeleported", 2)],
        "{groups:#?}"
    );
    let waited = &groups[0];
    assert!(
        waited.reason.contains("OrderPlaced not seen yet")
            && !waited.reason.contains(&orders[0].to_string()),
        "one reason for every order, its particulars taken out: {}",
        waited.reason
    );
    assert!(
        waited.first_seen.is_some() && waited.first_seen <= waited.last_seen,
        "{waited:?}"
    );

    // The orders arrive; the operator re-drives that cause, and only that cause.
    for order_id in &orders {
        publisher
            .publish(
                OrderPlaced::ROUTING_KEY,
                &Envelope::new(&order_placed(*order_id, "MUG-001", 1), None),
            )
            .await;
    }
    let selection = Selection::Cause(waited.cause.clone());
    let window = shop.env.config().dead_letter_max_age;
    let redriven = dead_letters::redrive(&amqp_url, &namespace, "inventory", &selection, window)
        .await
        .expect("redrive");
    assert_eq!(redriven.moved, 3);
    let mut moved = redriven.message_ids.clone();
    moved.sort();
    paid.sort();
    assert_eq!(moved, paid, "exactly the cause's messages");
    for order_id in &orders {
        shop.spy.wait_for::<StockReserved>(*order_id).await;
    }
    let left = dead_letters::group("inventory", &letters().await);
    assert_eq!(left.len(), 1);
    assert_eq!(
        (left[0].event_type.as_str(), left[0].count),
        ("OrderTeleported", 2)
    );

    dead_letters::record(&shop.env.pool, "inventory", "tester", &selection, &redriven)
        .await
        .expect("recorded");
    let history = dead_letters::history(&shop.env.pool, "inventory")
        .await
        .expect("history");
    assert_eq!(history.len(), 1);
    assert_eq!(history[0].redriven_by, "tester");
    assert_eq!(history[0].selection, format!("cause {}", waited.cause));
    let mut recorded = history[0].message_ids.clone();
    recorded.sort();
    assert_eq!(recorded, paid);
    publisher.close().await;
    shop.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_unsupported_messages_are_dead_lettered_and_the_consumer_goes_on() {
    let shop = Shop::start_only(&["payment"]).await;
    let publisher = TestPublisher::new(&shop.env.namespace).await;

    publisher
        .publish_raw(
            OrderPlaced::ROUTING_KEY,
            b"{ this is not json",
            Default::default(),
        )
        .await;
    let mut future_version = Envelope::new(&order_placed(Uuid::now_v7(), "MUG-001", 1), None);
    future_version.version = OrderPlaced::VERSION + 1;
    publisher
        .publish(OrderPlaced::ROUTING_KEY, &future_version)
        .await;
    let mut unknown_type = Envelope::new(&order_placed(Uuid::now_v7(), "MUG-001", 1), None);
    unknown_type.event_type = "OrderTeleported".to_owned();
    publisher
        .publish(OrderPlaced::ROUTING_KEY, &unknown_type)
        .await;
    // JSON, and nearly a CloudEvent, but of another spec version.
    let mut older_spec: serde_json::Value = serde_json::from_slice(
        &Envelope::new(&order_placed(Uuid::now_v7(), "MUG-001", 1), None).to_json(),
    )
    .expect("JSON");
    older_spec["specversion"] = json!("0.3");
    publisher
        .publish_raw(
            OrderPlaced::ROUTING_KEY,
            &serde_json::to_vec(&older_spec).expect("JSON"),
            Default::default(),
        )
        .await;

    let order_id = Uuid::now_v7();
    publisher
        .publish(
            OrderPlaced::ROUTING_KEY,
            &Envelope::new(&order_placed(order_id, "MUG-001", 1), None),
        )
        .await;
    shop.spy.wait_for::<PaymentCompleted>(order_id).await;

    let dead = take_dead_letters(&shop.env.namespace, "payment", 4).await;
    let reasons: Vec<String> = dead
        .iter()
        .filter_map(|d| d.header(headers::DEAD_LETTER_REASON))
        .collect();
    assert_eq!(reasons.len(), 4, "{reasons:?}");
    assert_eq!(
        reasons
            .iter()
            .filter(|r| r.contains("not a shop CloudEvent"))
            .count(),
        2,
        "not JSON, and not CloudEvents 1.0: {reasons:?}"
    );
    assert!(
        reasons.iter().any(|r| r.contains("specversion \"0.3\"")),
        "{reasons:?}"
    );
    assert!(
        reasons.iter().any(|r| r.contains("unsupported version 4")),
        "{reasons:?}"
    );
    assert!(
        reasons.iter().any(|r| r.contains("OrderTeleported")),
        "{reasons:?}"
    );
    assert_eq!(
        shop.count("SELECT count(*) FROM payment.payments").await,
        1,
        "only the good order was charged"
    );
    assert_eq!(
        json!(shop.count("SELECT count(*) FROM payment.inbox").await),
        json!(1)
    );
    publisher.close().await;
    shop.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_out_of_tries_is_dead_lettered_and_can_be_redriven() {
    let shop = Shop::start_with(&["inventory"], |config| config.max_attempts = 2).await;
    let publisher = TestPublisher::new(&shop.env.namespace).await;
    let amqp_url = shop_tests::amqp_url();
    let namespace = shop.env.namespace.clone();
    let order_id = Uuid::now_v7();

    // Paid, but OrderPlaced never comes within two tries: the payment is dead-lettered.
    let paid = Envelope::new(&payment_completed(order_id, 2500), None);
    publisher
        .publish(PaymentCompleted::ROUTING_KEY, &paid)
        .await;
    eventually("dead-lettered", || async {
        service_kit::dead_letters::list(&amqp_url, &namespace, "inventory")
            .await
            .is_ok_and(|letters| letters.len() == 1)
    })
    .await;
    let letters = service_kit::dead_letters::list(&amqp_url, &namespace, "inventory")
        .await
        .expect("list");
    let letter = &letters[0];
    assert_eq!(letter.message_id, Some(paid.message_id));
    assert_eq!(letter.order_id, Some(order_id));
    // Parked, it was tried again until it had waited as long as two tries' retry schedule.
    assert!(
        letter.attempts.is_some_and(|n| n >= 2),
        "{:?}",
        letter.attempts
    );
    assert_eq!(
        letter.original_routing_key.as_deref(),
        Some(PaymentCompleted::ROUTING_KEY)
    );
    assert!(
        letter.reason.contains("gave up after")
            && letter.reason.contains("OrderPlaced not seen yet"),
        "{}",
        letter.reason
    );
    // Listing leaves it there.
    assert_eq!(
        service_kit::dead_letters::list(&amqp_url, &namespace, "inventory")
            .await
            .expect("list")
            .len(),
        1
    );

    // The missing fact arrives; the operator re-drives the dead letter, and it goes through.
    publisher
        .publish(
            OrderPlaced::ROUTING_KEY,
            &Envelope::new(&order_placed(order_id, "MUG-001", 2), None),
        )
        .await;
    // Older than the operator's window (here: anything at all), it stays where it is.
    let refused = service_kit::dead_letters::redrive(
        &amqp_url,
        &namespace,
        "inventory",
        &service_kit::dead_letters::Selection::All,
        Duration::ZERO,
    )
    .await
    .expect("redrive");
    assert_eq!(refused.moved, 0);
    assert_eq!(refused.too_old.len(), 1);
    assert_eq!(refused.too_old[0].message_id, Some(paid.message_id));
    let window = shop.env.config().dead_letter_max_age;
    let redriven = service_kit::dead_letters::redrive(
        &amqp_url,
        &namespace,
        "inventory",
        &service_kit::dead_letters::Selection::All,
        window,
    )
    .await
    .expect("redrive");
    assert_eq!(redriven.moved, 1);
    assert!(redriven.too_old.is_empty());
    let reserved = shop.spy.wait_for::<StockReserved>(order_id).await;
    assert_eq!(reserved.envelope.causation_id, Some(paid.message_id));
    assert!(
        service_kit::dead_letters::list(&amqp_url, &namespace, "inventory")
            .await
            .expect("list")
            .is_empty()
    );
    publisher.close().await;
    shop.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sent_outbox_rows_and_inbox_ids_are_pruned_after_their_window_and_nothing_else() {
    let shop = Shop::start_with(&["payment"], |config| {
        config.outbox_retention = Duration::from_secs(3600);
        config.dead_letter_max_age = Duration::from_secs(60);
        config.inbox_retention = Duration::from_secs(2 * 3600);
        config.prune_interval = Duration::from_millis(200);
    })
    .await;
    let pool = &shop.env.pool;
    // Rows written while the service runs: an order paid, its event sent.
    let order_id = Uuid::now_v7();
    let publisher = TestPublisher::new(&shop.env.namespace).await;
    publisher
        .publish(
            OrderPlaced::ROUTING_KEY,
            &Envelope::new(&order_placed(order_id, "MUG-001", 1), None),
        )
        .await;
    shop.spy.wait_for::<PaymentCompleted>(order_id).await;
    eventually("the payment's event marked sent", || async {
        count(
            pool,
            "SELECT count(*) FROM payment.outbox WHERE sent_at IS NOT NULL",
        )
        .await
            == 1
    })
    .await;

    // Rows from long ago: sent and unsent outbox rows, inbox ids just inside and past the window.
    for age_hours in [2, 3] {
        let old = insert_outbox_row(pool, "payment", &payment_completed(Uuid::now_v7(), 100)).await;
        sqlx::query(
            "UPDATE payment.outbox SET created_at = now() - make_interval(hours => $2),
                    sent_at = now() - make_interval(hours => $2)
              WHERE message_id = $1",
        )
        .bind(old.message_id)
        .bind(age_hours)
        .execute(pool)
        .await
        .expect("age the row");
    }
    let unsent = insert_outbox_row(pool, "payment", &payment_completed(Uuid::now_v7(), 100)).await;
    sqlx::query(
        "UPDATE payment.outbox SET created_at = now() - interval '5 hours', publish_attempts = 1
          WHERE message_id = $1",
    )
    .bind(unsent.message_id)
    .execute(pool)
    .await
    .expect("age the unsent row");
    for (age, id) in [("1 hour", Uuid::now_v7()), ("3 hours", Uuid::now_v7())] {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "INSERT INTO payment.inbox (message_id, event_type, correlation_id, producer,
                                        occurred_at, received_at)
             VALUES ($1, 'OrderPlaced', $1, 'orders', now() - interval '{age}',
                     now() - interval '{age}')"
        )))
        .bind(id)
        .execute(pool)
        .await
        .expect("an old inbox id");
    }

    eventually("the old sent rows and the old inbox id pruned", || async {
        count(
            pool,
            "SELECT count(*) FROM payment.outbox WHERE sent_at < now() - interval '90 minutes'",
        )
        .await
            == 0
            && count(
                pool,
                "SELECT count(*) FROM payment.inbox WHERE received_at < now() - interval '2 hours'",
            )
            .await
                == 0
    })
    .await;
    // Kept: the recent sent row; a row created long ago but sent only now (the window runs
    // from sending: until then the relay owes it); the inbox id inside the window.
    let owed = format!(
        "SELECT count(*) FROM payment.outbox WHERE message_id = '{}' AND sent_at IS NOT NULL",
        unsent.message_id
    );
    eventually("the owed row sent", || async {
        count(pool, &owed).await == 1
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        count(pool, "SELECT count(*) FROM payment.outbox").await,
        2,
        "the recent row and the row sent only now are kept"
    );
    assert_eq!(count(pool, "SELECT count(*) FROM payment.inbox").await, 2);
    let pruned = |table: &'static str| {
        let (http, url) = (shop.http.clone(), shop.url("payment"));
        async move {
            metric(
                &http,
                &url,
                &format!("shop_rows_pruned_total{{table=\"{table}\"}}"),
            )
            .await
        }
    };
    assert_eq!((pruned("outbox").await, pruned("inbox").await), (2, 1));
    publisher.close().await;
    shop.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_the_database_cannot_store_is_dead_lettered_at_once_with_its_reason() {
    let shop = Shop::start_only(&["payment"]).await;
    let publisher = TestPublisher::new(&shop.env.namespace).await;
    let order_id = Uuid::now_v7();
    // A NUL in text: Postgres refuses it (SQLSTATE 22021) on every attempt alike.
    let mut placed = order_placed(order_id, "MUG-001", 1);
    placed.payment_method = "card\u{0}".to_owned();
    let unstorable = Envelope::new(&placed, None);
    publisher
        .publish(OrderPlaced::ROUTING_KEY, &unstorable)
        .await;

    let (amqp_url, namespace) = (shop_tests::amqp_url(), shop.env.namespace.clone());
    eventually("dead-lettered", || async {
        service_kit::dead_letters::list(&amqp_url, &namespace, "payment")
            .await
            .is_ok_and(|letters| letters.len() == 1)
    })
    .await;
    let letters = service_kit::dead_letters::list(&amqp_url, &namespace, "payment")
        .await
        .expect("list");
    assert_eq!(letters[0].message_id, Some(unstorable.message_id));
    assert!(
        letters[0].reason.contains("cannot store"),
        "{}",
        letters[0].reason
    );
    assert_eq!(letters[0].attempts, Some(1), "no retry was spent on it");
    assert_eq!(
        count(&shop.env.pool, "SELECT count(*) FROM payment.payments").await,
        0
    );
    assert_eq!(
        metric(&shop.http, &shop.url("payment"), "shop_retries_total").await,
        0
    );
    publisher.close().await;
    shop.stop().await;
}

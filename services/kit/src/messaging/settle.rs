//! Settling deliveries once their batch's transaction has ended: acks (one `multiple` ack for
//! the batch), a failed message's copy published to a delay queue or the dead-letter queue
//! (then its original acked), and a delivery handed back when its copy could not be published.

use std::time::Duration;

use lapin::{
    BasicProperties,
    message::Delivery,
    options::{BasicAckOptions, BasicNackOptions},
    types::AMQPValue,
};

use crate::{
    broker::{
        headers,
        publisher::{Outgoing, PublishError, Publisher},
        topology::{Topology, text},
    },
    messaging::{failure::Move, provenance::Vouched},
    runtime::{metrics::Metrics, telemetry::ErrorChain},
};

/// An ack or nack that takes longer went to a dead channel; the broker will redeliver.
pub(crate) const ACK_TIMEOUT: Duration = Duration::from_secs(5);

/// A failed message on its way to a delay queue or the dead-letter queue.
pub(crate) struct Failed<'a> {
    pub(crate) body: &'a [u8],
    pub(crate) properties: BasicProperties,
    /// How it was first published (a copy is published by this service).
    pub(crate) vouched: &'a Vouched,
    /// The try that failed.
    pub(crate) attempt: u32,
}

/// Publishes a copy of a failed message to a delay queue or the dead-letter queue, its
/// headers saying which try it was, why, and how it was first published (under which routing
/// key, by whom: the copy itself is published by this service).
pub(crate) async fn move_on(
    publisher: &Publisher,
    topology: &Topology,
    metrics: &Metrics,
    failed: Failed<'_>,
    destination: Move,
) -> Result<(), PublishError> {
    let Failed {
        body,
        properties,
        vouched,
        attempt,
    } = failed;
    let mut headers = properties.headers().clone().unwrap_or_default();
    headers.insert(
        headers::ORIGINAL_ROUTING_KEY.into(),
        text(&vouched.routing_key),
    );
    if let Some(original) = &vouched.publisher {
        headers.insert(headers::ORIGINAL_PUBLISHER.into(), text(original));
    }
    let (queue, metric) = match &destination {
        Move::Retry {
            next_attempt,
            delay_step,
            error,
        } => {
            tracing::warn!(%error, next_attempt, "handler failed; retrying later");
            headers.insert(
                headers::ATTEMPT.into(),
                AMQPValue::LongLongInt((*next_attempt).into()),
            );
            headers.insert(headers::LAST_ERROR.into(), text(error));
            (topology.retry_queue_for(*delay_step), "shop_retries_total")
        }
        Move::DeadLetter { reason, .. } => {
            tracing::error!(%reason, attempt, "dead-lettering message");
            headers.insert(
                headers::ATTEMPT.into(),
                AMQPValue::LongLongInt(attempt.into()),
            );
            headers.insert(headers::DEAD_LETTER_REASON.into(), text(reason));
            headers.insert(
                headers::DEAD_LETTERED_AT.into(),
                text(&chrono::Utc::now().to_rfc3339()),
            );
            (
                topology.dead_letter_queue.as_str(),
                "shop_dead_letters_total",
            )
        }
    };
    let copy = Outgoing {
        exchange: &topology.private_exchange,
        routing_key: queue,
        body,
        properties: properties.with_headers(headers),
    };
    publisher.publish(copy).await?;
    metrics.inc(metric, &[]);
    Ok(())
}

/// Settles a delivery after its move (or none): acked with the batch, or, when its copy could
/// not be published, handed back to the queue at once so nothing is lost.
pub(crate) async fn settle(
    delivery: Delivery,
    moved: Result<(), PublishError>,
    to_ack: &mut Option<Delivery>,
) {
    match moved {
        Ok(()) => {
            if to_ack
                .as_ref()
                .is_none_or(|last| last.delivery_tag < delivery.delivery_tag)
            {
                *to_ack = Some(delivery);
            }
        }
        Err(e) => requeue(&delivery, &e).await,
    }
}

/// Acks one delivery alone (its batch-mates are held, unacked).
pub(crate) async fn ack_alone(delivery: &Delivery) {
    let acked = tokio::time::timeout(ACK_TIMEOUT, delivery.acker.ack(BasicAckOptions::default()));
    if !matches!(acked.await, Ok(Ok(_))) {
        tracing::warn!("ack failed; the broker will redeliver");
    }
}

/// Acks `last` and every earlier delivery of the channel not yet acked or handed back: the
/// batch's, since the consumer takes one batch at a time and settles it whole.
pub(crate) async fn ack_up_to(last: &Delivery) {
    let multiple = BasicAckOptions { multiple: true };
    match tokio::time::timeout(ACK_TIMEOUT, last.acker.ack(multiple)).await {
        Ok(Ok(_)) => {}
        // The broker will redeliver them; the inbox makes that harmless.
        Ok(Err(e)) => tracing::warn!(error = %e, "ack failed; the batch will be redelivered"),
        Err(_) => tracing::warn!("ack timed out; the batch will be redelivered"),
    }
}

/// The copy could not be published: hand the original back so nothing is lost.
async fn requeue(delivery: &Delivery, error: &PublishError) {
    tracing::warn!(error = %ErrorChain(error), "could not move the message on; returning it to the queue");
    let requeue = BasicNackOptions {
        requeue: true,
        ..Default::default()
    };
    let nacked = tokio::time::timeout(ACK_TIMEOUT, delivery.acker.nack(requeue));
    if !matches!(nacked.await, Ok(Ok(_))) {
        tracing::warn!("nack failed; the broker will redeliver on reconnect");
    }
}

//! Stock decisions, free of I/O.

use std::collections::BTreeMap;

use shared_events::{OrderLine, StockLine};

/// The order's lines as quantities per SKU (a SKU listed twice counts once, summed).
pub fn quantities_by_sku(lines: &[OrderLine]) -> Vec<StockLine> {
    let mut by_sku: BTreeMap<&str, u32> = BTreeMap::new();
    for line in lines {
        *by_sku.entry(&line.sku).or_default() += line.quantity;
    }
    by_sku
        .into_iter()
        .map(|(sku, quantity)| StockLine {
            sku: sku.to_owned(),
            quantity,
        })
        .collect()
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shortage {
    pub sku: String,
    pub requested: u32,
    pub available: i64,
}

impl Shortage {
    pub fn reason(&self) -> String {
        format!(
            "insufficient stock for {}: requested {}, available {}",
            self.sku, self.requested, self.available
        )
    }
}

/// All or nothing: the order is reserved only if every line can be; a partial reservation is
/// never taken. `available` holds the current count of each SKU (absent = unknown = 0).
pub fn decide_reservation(
    wanted: &[StockLine],
    available: &BTreeMap<String, i64>,
) -> Result<(), Shortage> {
    for line in wanted {
        let have = available.get(&line.sku).copied().unwrap_or(0);
        if i64::from(line.quantity) > have {
            return Err(Shortage {
                sku: line.sku.clone(),
                requested: line.quantity,
                available: have,
            });
        }
    }
    Ok(())
}

/// A reservation's state, stored as the enum type `inventory.reservation_status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, sqlx::Type)]
// Named without its schema: the service's connections resolve names in their own schema.
#[sqlx(type_name = "reservation_status", rename_all = "snake_case")]
pub enum ReservationStatus {
    Reserved,
    Failed,
    Released,
    /// The order was cancelled before anything was reserved; nothing ever will be.
    Voided,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Release {
    /// Stock is held for the order: give it back.
    Due,
    /// The reservation failed: nothing is held.
    NothingHeld,
    AlreadyReleased,
    /// The failure arrived before the reservation was recorded: try again later.
    ReservationNotSeenYet,
}

pub fn decide_release(status: Option<ReservationStatus>) -> Release {
    match status {
        Some(ReservationStatus::Reserved) => Release::Due,
        Some(ReservationStatus::Failed | ReservationStatus::Voided) => Release::NothingHeld,
        Some(ReservationStatus::Released) => Release::AlreadyReleased,
        None => Release::ReservationNotSeenYet,
    }
}

/// Inventory's answer to the order's cancellation, whatever it has seen of the order so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Undo {
    /// Stock is held: give it back (StockReleased).
    Release,
    /// Nothing is held (refused, or not reserved yet): say so (ReservationVoided) and, if
    /// nothing was decided yet, record that nothing ever will be reserved.
    Void { record: bool },
    /// Already released or voided: that answer was given.
    AlreadyAnswered,
}

pub fn decide_undo(status: Option<ReservationStatus>) -> Undo {
    match status {
        Some(ReservationStatus::Reserved) => Undo::Release,
        Some(ReservationStatus::Failed) => Undo::Void { record: false },
        None => Undo::Void { record: true },
        Some(ReservationStatus::Released | ReservationStatus::Voided) => Undo::AlreadyAnswered,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(sku: &str, quantity: u32) -> StockLine {
        StockLine {
            sku: sku.to_owned(),
            quantity,
        }
    }

    fn stock(entries: &[(&str, i64)]) -> BTreeMap<String, i64> {
        entries.iter().map(|(s, n)| ((*s).to_owned(), *n)).collect()
    }

    #[test]
    fn reserves_when_every_line_fits_exactly() {
        let wanted = [line("MUG", 2), line("TEE", 5)];
        assert_eq!(
            decide_reservation(&wanted, &stock(&[("MUG", 2), ("TEE", 9)])),
            Ok(())
        );
    }

    #[test]
    fn one_short_line_fails_the_whole_order() {
        let wanted = [line("MUG", 2), line("TEE", 10)];
        let shortage = decide_reservation(&wanted, &stock(&[("MUG", 5), ("TEE", 9)]))
            .expect_err("TEE is short");
        assert_eq!(shortage.sku, "TEE");
        assert_eq!(shortage.available, 9);
        assert!(shortage.reason().contains("requested 10"));
    }

    #[test]
    fn an_unknown_sku_has_no_stock() {
        let shortage = decide_reservation(&[line("GHOST", 1)], &stock(&[])).expect_err("unknown");
        assert_eq!(shortage.available, 0);
    }

    #[test]
    fn repeated_skus_are_summed() {
        let lines = [
            OrderLine {
                sku: "B".into(),
                quantity: 1,
                unit_price_cents: 5,
            },
            OrderLine {
                sku: "A".into(),
                quantity: 2,
                unit_price_cents: 5,
            },
            OrderLine {
                sku: "B".into(),
                quantity: 3,
                unit_price_cents: 5,
            },
        ];
        assert_eq!(quantities_by_sku(&lines), vec![line("A", 2), line("B", 4)]);
    }

    #[test]
    fn only_held_stock_is_released() {
        assert_eq!(
            decide_release(Some(ReservationStatus::Reserved)),
            Release::Due
        );
        assert_eq!(
            decide_release(Some(ReservationStatus::Failed)),
            Release::NothingHeld
        );
        assert_eq!(
            decide_release(Some(ReservationStatus::Released)),
            Release::AlreadyReleased
        );
        assert_eq!(decide_release(None), Release::ReservationNotSeenYet);
    }

    #[test]
    fn a_cancellation_releases_held_stock_and_voids_everything_else_once() {
        assert_eq!(
            decide_undo(Some(ReservationStatus::Reserved)),
            Undo::Release
        );
        assert_eq!(
            decide_undo(Some(ReservationStatus::Failed)),
            Undo::Void { record: false }
        );
        assert_eq!(decide_undo(None), Undo::Void { record: true });
        for answered in [ReservationStatus::Released, ReservationStatus::Voided] {
            assert_eq!(decide_undo(Some(answered)), Undo::AlreadyAnswered);
        }
        assert_eq!(
            decide_release(Some(ReservationStatus::Voided)),
            Release::NothingHeld
        );
    }
}

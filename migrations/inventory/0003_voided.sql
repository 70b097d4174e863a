-- An order cancelled before inventory reserved anything: the row says so, so a late
-- PaymentCompleted never reserves for it.
ALTER TYPE inventory.reservation_status ADD VALUE 'voided';

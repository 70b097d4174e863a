-- An order cancelled before payment charged it: the row says so, so a late OrderPlaced never
-- charges it.
ALTER TYPE payment.payment_status ADD VALUE 'voided';

-- An order may also be cancelled by its customer or by its deadline.
ALTER TYPE orders.cancelled_by ADD VALUE 'CustomerRequest';
ALTER TYPE orders.cancelled_by ADD VALUE 'DeadlineExceeded';

-- The delivery worker walks the pending deliveries in due order and, for each, looks for
-- an earlier pending change of the same conversion to the same endpoint. Indexes on the
-- pending rows only: a claim then costs the batch, not the backlog, and delivered rows
-- (nearly all of them) weigh on neither index.
DROP INDEX callback_deliveries_due;
DROP INDEX callback_deliveries_order;
CREATE INDEX callback_deliveries_pending_due ON callback_deliveries(next_attempt_at, id) WHERE state = 'pending';
CREATE INDEX callback_deliveries_pending_order ON callback_deliveries(endpoint_id, conversion_id, version) WHERE state = 'pending';
-- The delivery log by conversion.
CREATE INDEX callback_deliveries_conversion ON callback_deliveries(conversion_id);

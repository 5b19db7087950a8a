-- The delivery worker claims per endpoint (issue 15): each enabled endpoint's first due
-- deliveries, in due order, up to what the endpoint has room for. Its index leads with
-- the endpoint, and replaces the one in due order across endpoints that no query uses
-- any more. (PostgreSQL's migration of the same name also sets a fillfactor and the C
-- collation on the ids; SQLite compares text byte by byte already.)
DROP INDEX callback_deliveries_pending_due;
CREATE INDEX callback_deliveries_pending_endpoint_due ON callback_deliveries(endpoint_id, next_attempt_at, id)
    WHERE state = 'pending';

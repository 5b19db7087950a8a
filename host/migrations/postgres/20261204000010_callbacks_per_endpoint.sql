-- The delivery worker claims per endpoint (issue 15): each enabled endpoint's first due
-- deliveries, in due order, up to what the endpoint has room for. Its index leads with
-- the endpoint, and replaces the one in due order across endpoints that no query uses
-- any more. The other indexes of callback_deliveries each serve a query: the primary
-- key (records, loads), (endpoint_id, change_id) (the outbox's ON CONFLICT), the
-- pending order per conversion (the claim's "no earlier pending change", hold_back),
-- conversion_id and created_at (the delivery log, replay by range).
DROP INDEX callback_deliveries_pending_due;
CREATE INDEX callback_deliveries_pending_endpoint_due ON callback_deliveries(endpoint_id, next_attempt_at, id)
    WHERE state = 'pending';

-- A claim writes only the lease columns, which no index holds: with room left on the
-- page the update is HOT (no index entry written). New pages keep 30 % free for that.
ALTER TABLE callback_deliveries SET (fillfactor = 70);

-- Ids are compared byte by byte: under the database's collation every comparison in
-- these indexes went through strcoll (the top of the server's profile under delivery
-- load). The ids are machine-made; their order is not shown to anyone by collation.
ALTER TABLE callback_deliveries DROP CONSTRAINT callback_deliveries_endpoint_id_fkey;
ALTER TABLE callback_endpoints ALTER COLUMN id TYPE TEXT COLLATE "C";
ALTER TABLE callback_deliveries
    ALTER COLUMN endpoint_id TYPE TEXT COLLATE "C",
    ALTER COLUMN conversion_id TYPE TEXT COLLATE "C",
    ALTER COLUMN waits_for TYPE TEXT COLLATE "C";
ALTER TABLE callback_deliveries ADD CONSTRAINT callback_deliveries_endpoint_id_fkey
    FOREIGN KEY (endpoint_id) REFERENCES callback_endpoints(id);

-- Seed 001: "A CREATED callback will be sent when a user clicks on a tracking link"
-- (issue 13, point 4). The PostgreSQL and SQLite migrations of this name have the same
-- shape.

-- Which states an endpoint receives: the states' names, comma-separated and in the
-- lifecycle's order (`CREATED,PENDING,COMPLETED`); NULL for every state, the default
-- (seed 001: cashback callbacks are always stateful).
ALTER TABLE callback_endpoints ADD COLUMN states TEXT;

-- What a change is about: a conversion, or a click (its CREATED). A click's change has no
-- conversion: its `conversion_id` is the key `click:<click id>`, which orders its
-- deliveries and makes it unique with version 1 (one CREATED per click, however often the
-- click is registered).
ALTER TABLE conversion_changes ADD COLUMN kind TEXT NOT NULL DEFAULT 'conversion'
    CHECK (kind IN ('conversion', 'click'));

-- The key (`click:<click id>`) of the deliveries this one comes after: a conversion's
-- delivery waits while its click's CREATED to the same endpoint is pending, so that a
-- partner never gets PENDING before the click's CREATED.
ALTER TABLE callback_deliveries ADD COLUMN waits_for TEXT;

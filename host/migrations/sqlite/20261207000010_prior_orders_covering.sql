-- The prior-orders count read with each event (`conversions/store.rs`, `read_for_event`)
-- filters on the user, the merchant, the status and `id <> this conversion`. The index
-- held the first three only, so every prior conversion of the pair cost a read of its
-- table page: a million-row import whose 1,000 shoppers had up to 1,000 orders each fell
-- from about 900 to about 100 rows/s, reading ~600 pages per row (docs/PERFORMANCE.md,
-- "File imports in pieces"). With `id` in it, the count is answered from the index alone.
DROP INDEX conversions_user_merchant;
CREATE INDEX conversions_user_merchant ON conversions (user_id, merchant_id, status, id);

-- How each conversion first reached us (postback, api_import, file), for delay analytics per
-- integration type (seed 000).
ALTER TABLE conversions ADD COLUMN reported_via TEXT NOT NULL DEFAULT 'postback';

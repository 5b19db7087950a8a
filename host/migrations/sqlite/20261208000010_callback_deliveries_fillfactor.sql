-- PostgreSQL's migration of this name gives callback_deliveries room on its pages for the
-- claim's HOT updates (fillfactor 40). SQLite has no fillfactor, and rewrites a row in
-- place: nothing to change here.
SELECT 1;

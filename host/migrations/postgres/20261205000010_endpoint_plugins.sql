-- Partner-callback plugins (contract 0.2.0): an endpoint may have a plugin that renders
-- its requests instead of the built-in template. Activated, swapped and rolled back
-- through the registry like rules and adapters (plugin_activations, target_kind
-- 'endpoint'); NULL: the built-in template. Read with the endpoint on every claim, so an
-- activation reaches every replica's next delivery.
ALTER TABLE callback_endpoints ADD COLUMN plugin_digest TEXT REFERENCES plugins(digest);
ALTER TABLE callback_endpoints ADD COLUMN plugin_config TEXT;

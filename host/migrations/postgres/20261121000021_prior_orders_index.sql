-- Every evaluation counts the user's earlier orders at the merchant (`context.prior-orders`):
-- answered from this index alone instead of reading each of the user's conversions.
CREATE INDEX conversions_user_merchant ON conversions (user_id, merchant_id, status);

-- 0002: keys older than the 24 h idempotency window are deleted in the
-- background; this index lets that sweep find them without a full scan.
CREATE INDEX idempotency_keys_created_at_idx ON idempotency_keys (created_at);

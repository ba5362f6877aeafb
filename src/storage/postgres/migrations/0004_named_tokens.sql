-- 0003: several named tokens per principal, with expiry, last use and rotation.
--
-- `name` stays the principal (an older binary during a rolling update keeps
-- working: its inserts get the token name `default`, its revoke removes all
-- of a principal's tokens). At most one current token per principal and
-- token name; a token a rotation replaced (`replaced_at` set) keeps its name
-- until it expires.
ALTER TABLE tokens
    ADD COLUMN token_name   text COLLATE "C" NOT NULL DEFAULT 'default',
    ADD COLUMN expires_at   timestamptz,
    ADD COLUMN last_used_at timestamptz,
    ADD COLUMN replaced_at  timestamptz;
ALTER TABLE tokens DROP CONSTRAINT tokens_name_key;
CREATE UNIQUE INDEX tokens_current_name ON tokens (name, token_name) WHERE replaced_at IS NULL;

-- Counts the writes that add messages to a conversation. A replica that remembers a
-- conversation's recent messages checks, when it next writes, that nobody else has written since.
-- Only changes matter, not the starting value, so existing rows start at 0 (with a constant
-- default, adding the column rewrites nothing).
ALTER TABLE conversations ADD COLUMN revision bigint NOT NULL DEFAULT 0;

-- Counts the writes that add messages to a conversation. A replica that remembers a
-- conversation's recent messages checks, when it next writes, that nobody else has written since.
ALTER TABLE conversations ADD COLUMN revision bigint NOT NULL DEFAULT 0;
UPDATE conversations c SET revision = (SELECT count(*) FROM messages m WHERE m.conversation_id = c.id);

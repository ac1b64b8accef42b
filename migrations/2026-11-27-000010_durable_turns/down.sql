UPDATE messages SET status = 'cancelled' WHERE status = 'interrupted';
ALTER TABLE messages DROP CONSTRAINT messages_status_check;
ALTER TABLE messages ADD CONSTRAINT messages_status_check
    CHECK (status IN ('complete', 'cancelled', 'awaiting_tool_results'));
ALTER TABLE tool_calls DROP COLUMN answer_index;
ALTER TABLE messages DROP COLUMN turn_id, DROP COLUMN turn_attempt, DROP COLUMN deltas;
DROP TABLE replicas;
DROP TABLE turns;

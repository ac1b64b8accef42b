UPDATE messages SET status = 'complete' WHERE status = 'awaiting_tool_results';
ALTER TABLE messages DROP CONSTRAINT messages_status_check;
ALTER TABLE messages ADD CONSTRAINT messages_status_check CHECK (status IN ('complete', 'cancelled'));
ALTER TABLE conversations
    DROP COLUMN awaiting_until, DROP COLUMN awaiting_calls, DROP COLUMN awaiting_message;

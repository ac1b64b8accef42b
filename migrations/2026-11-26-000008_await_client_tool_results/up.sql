-- A reply that called tools the client runs waits for their results: its conversation names the
-- message, the calls the client is to answer, and until when it waits, and takes no new user
-- message meanwhile. Catalog changes only; the new status check is validated by the next
-- migration without blocking writes.
ALTER TABLE conversations
    ADD COLUMN awaiting_message uuid,
    ADD COLUMN awaiting_calls text[],
    ADD COLUMN awaiting_until timestamptz;

ALTER TABLE messages DROP CONSTRAINT messages_status_check;
ALTER TABLE messages ADD CONSTRAINT messages_status_check
    CHECK (status IN ('complete', 'cancelled', 'awaiting_tool_results')) NOT VALID;

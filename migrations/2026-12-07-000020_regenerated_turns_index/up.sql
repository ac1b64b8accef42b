-- The turns that regenerated a message's reply, newest last: what ResumeTurn and CancelTurn find
-- by the message's id, and what an edit checks for a reply still being generated. Built without
-- blocking writes; it holds only the regenerations.
CREATE INDEX CONCURRENTLY turns_message_idx ON turns (message_id, created_at)
    WHERE message_id IS NOT NULL;

-- Regenerated replies stay as messages; their turns go.
DELETE FROM turns WHERE message_id IS NOT NULL;
ALTER TABLE turns DROP COLUMN message_id;

-- Validating reads the table but blocks no reads or writes. SET NOT NULL then finds the proof in
-- the valid constraint and skips its own scan, so its exclusive lock lasts a moment.
ALTER TABLE messages VALIDATE CONSTRAINT messages_sequence_present;
ALTER TABLE messages ALTER COLUMN sequence SET NOT NULL;
ALTER TABLE messages DROP CONSTRAINT messages_sequence_present;

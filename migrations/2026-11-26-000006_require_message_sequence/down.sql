ALTER TABLE messages ALTER COLUMN sequence DROP NOT NULL;
ALTER TABLE messages
    ADD CONSTRAINT messages_sequence_present CHECK (sequence IS NOT NULL) NOT VALID;

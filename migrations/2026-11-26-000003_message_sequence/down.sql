ALTER TABLE messages DROP CONSTRAINT IF EXISTS messages_sequence_present;
DROP TRIGGER messages_fill_sequence ON messages;
DROP FUNCTION messages_fill_sequence();
ALTER TABLE messages DROP COLUMN sequence;

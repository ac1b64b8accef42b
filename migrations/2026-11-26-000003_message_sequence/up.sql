-- A message's place in its conversation: the revision its write took the conversation to,
-- decided under the conversation's row lock in the transaction that stores it. Replicas'
-- clocks disagree, so `created_at` cannot order messages; this can.
--
-- Every step here only changes the catalog, so the table is locked for moments, not for as
-- long as it takes to read it. Numbering the messages already stored comes next, by itself.
ALTER TABLE messages ADD COLUMN sequence bigint;

-- Replicas of the previous release write messages without a sequence while a rolling update
-- replaces them. Their writes bump the conversation's revision in the same statement, and a
-- row-level BEFORE trigger sees that statement's earlier changes, so the revision read here is
-- the one their write took the conversation to: the number this release would have given.
CREATE FUNCTION messages_fill_sequence() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.sequence := (SELECT revision FROM conversations WHERE id = NEW.conversation_id);
    RETURN NEW;
END
$$;

CREATE TRIGGER messages_fill_sequence
    BEFORE INSERT ON messages
    FOR EACH ROW WHEN (NEW.sequence IS NULL)
    EXECUTE FUNCTION messages_fill_sequence();

-- Holds for every row written from now on; the rows already there are checked once numbered.
ALTER TABLE messages
    ADD CONSTRAINT messages_sequence_present CHECK (sequence IS NOT NULL) NOT VALID;

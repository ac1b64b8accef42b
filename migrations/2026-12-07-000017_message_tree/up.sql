-- A conversation becomes a tree: each message has a parent (none for a first message), and the
-- conversation has a current leaf, whose path from the root is the branch the client sees and
-- the model is shown.
--
-- - `messages.parent_id`, `messages.depth`: the message it follows, and how many come before it
--   on its branch (0 for a root).
-- - `conversations.leaf_id`, `leaf_depth`: the current leaf, and its depth.
-- - `conversations.leaf_jumps`: how many times the leaf moved other than by a message added
--   after it (an edit, a regenerated reply, a switch of branch). 0: the conversation is one line.
-- - `turns.leaf_jumps`: the conversation's when the turn started. A reply continues the leaf
--   only while the two agree; otherwise it follows its own turn's messages.
--
-- Catalog changes only: columns without a default, or with a constant one, rewrite nothing.
ALTER TABLE messages ADD COLUMN parent_id uuid, ADD COLUMN depth integer;
ALTER TABLE conversations
    ADD COLUMN leaf_id uuid,
    ADD COLUMN leaf_depth integer,
    ADD COLUMN leaf_jumps bigint NOT NULL DEFAULT 0;
ALTER TABLE turns ADD COLUMN leaf_jumps bigint;

-- Writers that know nothing of the tree (a release before this one, during a rolling update; a
-- tool; a hand-written fix) insert messages without a depth. Such a message continues the
-- conversation's leaf, or, while the stored messages are not numbered yet, the message before it
-- in the conversation's order; and becomes the leaf. The service writes every message with its
-- depth, so this costs its own writes nothing.
CREATE FUNCTION messages_follow_leaf() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    tip_id uuid;
    tip_depth integer;
BEGIN
    SELECT leaf_id, leaf_depth INTO tip_id, tip_depth
    FROM conversations WHERE id = NEW.conversation_id;
    IF tip_id IS NULL THEN
        -- Its conversation is not numbered yet: counted, since sequences may have gaps.
        SELECT id INTO tip_id
        FROM messages
        WHERE conversation_id = NEW.conversation_id AND sequence < NEW.sequence
        ORDER BY sequence DESC
        LIMIT 1;
        SELECT count(*) - 1 INTO tip_depth
        FROM messages
        WHERE conversation_id = NEW.conversation_id AND sequence < NEW.sequence;
    END IF;
    NEW.parent_id := tip_id;
    NEW.depth := CASE WHEN tip_id IS NULL THEN 0 ELSE tip_depth + 1 END;
    UPDATE conversations SET leaf_id = NEW.id, leaf_depth = NEW.depth
    WHERE id = NEW.conversation_id;
    RETURN NEW;
END
$$;

CREATE TRIGGER messages_follow_leaf
    BEFORE INSERT ON messages
    FOR EACH ROW WHEN (NEW.depth IS NULL)
    EXECUTE FUNCTION messages_follow_leaf();

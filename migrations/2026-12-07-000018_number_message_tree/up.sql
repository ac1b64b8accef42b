-- Gives the messages stored before the tree their place in it: every conversation so far is one
-- line, so a message's parent is the one before it in the conversation's order, and its depth is
-- how many come before it (sequences may have gaps). Then each conversation's leaf is its last
-- message. 5,000 rows a batch, in key order, each batch committed by itself; a batch that ends
-- inside a conversation hands its last message on to the next. Rows that a writer inserted
-- meanwhile were placed by the trigger and are left as they are.
-- One statement, so that it runs outside any transaction block and may commit.
DO $$
DECLARE
    after_conversation uuid := '00000000-0000-0000-0000-000000000000';
    after_sequence bigint := 0;
    carried_id uuid;
    carried_depth integer;
    last_conversation uuid;
BEGIN
    LOOP
        WITH batch AS (
            SELECT id, conversation_id, sequence, depth
            FROM messages
            WHERE (conversation_id, sequence) > (after_conversation, after_sequence)
            ORDER BY conversation_id, sequence
            LIMIT 5000
        ), placed AS (
            SELECT id, conversation_id,
                   lag(id) OVER line AS before_id,
                   (row_number() OVER line - 1)::integer AS rank
            FROM batch
            WINDOW line AS (PARTITION BY conversation_id ORDER BY sequence)
        )
        UPDATE messages AS m
        SET parent_id = CASE
                WHEN p.rank = 0 AND p.conversation_id = after_conversation THEN carried_id
                ELSE p.before_id
            END,
            depth = CASE
                WHEN p.conversation_id = after_conversation THEN carried_depth + 1 + p.rank
                ELSE p.rank
            END
        FROM placed AS p
        WHERE m.id = p.id AND m.depth IS NULL;

        -- The batch's last message: where the next batch starts, and what it continues.
        SELECT conversation_id, sequence, id, depth
        INTO last_conversation, after_sequence, carried_id, carried_depth
        FROM messages
        WHERE (conversation_id, sequence) > (after_conversation, after_sequence)
        ORDER BY conversation_id, sequence
        OFFSET 4999 LIMIT 1;
        EXIT WHEN last_conversation IS NULL;
        after_conversation := last_conversation;
        last_conversation := NULL;
        COMMIT;
    END LOOP;
    COMMIT;

    after_conversation := '00000000-0000-0000-0000-000000000000';
    LOOP
        WITH batch AS (
            SELECT id FROM conversations WHERE id > after_conversation ORDER BY id LIMIT 5000
        ), tipped AS (
            UPDATE conversations AS c
            SET (leaf_id, leaf_depth) = (
                SELECT m.id, m.depth FROM messages AS m
                WHERE m.conversation_id = c.id
                ORDER BY m.sequence DESC
                LIMIT 1
            )
            FROM batch
            WHERE c.id = batch.id AND c.leaf_id IS NULL
        )
        SELECT id INTO last_conversation FROM batch ORDER BY id DESC LIMIT 1;
        EXIT WHEN last_conversation IS NULL;
        after_conversation := last_conversation;
        last_conversation := NULL;
        COMMIT;
    END LOOP;
END
$$;

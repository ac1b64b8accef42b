-- Gives the messages stored before search their words, 5,000 at a time in key order, each batch
-- committed by itself: no row stays locked for longer than its batch, and the table need not
-- hold a second copy of every row at once. Rows written meanwhile got theirs from the trigger.
-- One statement, so that it runs outside any transaction block and may commit.
DO $$
DECLARE
    last_id uuid := '00000000-0000-0000-0000-000000000000';
BEGIN
    LOOP
        WITH batch AS (
            SELECT id FROM messages WHERE id > last_id ORDER BY id LIMIT 5000
        ), filled AS (
            UPDATE messages AS m SET search_vector = chat_search_vector(m.content)
            FROM batch WHERE m.id = batch.id AND m.search_vector IS NULL
        )
        SELECT id INTO last_id FROM batch ORDER BY id DESC LIMIT 1;
        EXIT WHEN last_id IS NULL;
        COMMIT;
    END LOOP;
END
$$;

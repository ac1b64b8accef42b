-- Numbers the messages stored before sequences existed, in the order they were listed in
-- (time, then id), just below the conversation's first numbered message, or up to its revision
-- if it has none. So the newest message's sequence is the conversation's revision, as for every
-- message written from now on. Numbers may be zero or negative; only their order matters.
--
-- One UPDATE of rows that nothing else ever writes: it takes row locks on them and the table
-- lock that every INSERT takes too, so reads and new messages go on while it runs. A message
-- written meanwhile was numbered at its write, above the revision this statement reads.
UPDATE messages AS m
SET sequence = numbered.sequence
FROM (
    SELECT old.id,
           COALESCE(first.sequence, c.revision + 1)
               - count(*) OVER (PARTITION BY old.conversation_id)
               + row_number() OVER (
                     PARTITION BY old.conversation_id ORDER BY old.created_at, old.id
                 )
               - 1 AS sequence
    FROM messages AS old
    JOIN conversations AS c ON c.id = old.conversation_id
    LEFT JOIN (
        SELECT conversation_id, min(sequence) AS sequence
        FROM messages
        WHERE sequence IS NOT NULL
        GROUP BY conversation_id
    ) AS first ON first.conversation_id = old.conversation_id
    WHERE old.sequence IS NULL
) AS numbered
WHERE m.id = numbered.id;

-- A conversation that has a title but no message yet was named by its client: a derived title
-- is only written with the first message. The model must not replace it when that message
-- comes. Conversations that have messages are past their first reply, and are never named again.
UPDATE conversations SET title_source = 'client' WHERE revision = 0 AND title <> '';

-- Checks the stored rows against the title source check while writes go on (SHARE UPDATE
-- EXCLUSIVE).
ALTER TABLE conversations VALIDATE CONSTRAINT conversations_title_source_check;

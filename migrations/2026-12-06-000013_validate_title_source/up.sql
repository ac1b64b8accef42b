-- Checks the stored rows against the title source check while writes go on (SHARE UPDATE
-- EXCLUSIVE).
ALTER TABLE conversations VALIDATE CONSTRAINT conversations_title_source_check;

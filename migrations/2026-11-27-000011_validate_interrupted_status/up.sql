-- Checks the stored rows against the new status check while writes go on (SHARE UPDATE
-- EXCLUSIVE).
ALTER TABLE messages VALIDATE CONSTRAINT messages_status_check;

-- Checks the stored rows against the checks of the previous migration while writes go on (SHARE
-- UPDATE EXCLUSIVE).
ALTER TABLE messages VALIDATE CONSTRAINT messages_valid;
ALTER TABLE turns VALIDATE CONSTRAINT turns_valid;
ALTER TABLE conversations VALIDATE CONSTRAINT conversations_valid;
ALTER TABLE usage_days VALIDATE CONSTRAINT usage_days_valid;

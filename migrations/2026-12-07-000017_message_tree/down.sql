DROP TRIGGER messages_follow_leaf ON messages;
DROP FUNCTION messages_follow_leaf();
ALTER TABLE turns DROP COLUMN leaf_jumps;
ALTER TABLE conversations DROP COLUMN leaf_jumps, DROP COLUMN leaf_depth, DROP COLUMN leaf_id;
ALTER TABLE messages DROP COLUMN depth, DROP COLUMN parent_id;

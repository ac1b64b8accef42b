DROP TABLE usage_days;
ALTER TABLE messages DROP COLUMN usage;

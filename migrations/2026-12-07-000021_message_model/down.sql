ALTER TABLE messages DROP COLUMN model;

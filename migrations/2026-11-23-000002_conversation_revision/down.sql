ALTER TABLE conversations DROP COLUMN revision;

-- Nothing to undo: the column goes with the migration that added it.
SELECT 1;

-- Nothing to undo: the columns go with the migration that added them.
SELECT 1;

-- Nothing to undo: a validated check stays valid.
SELECT 1;

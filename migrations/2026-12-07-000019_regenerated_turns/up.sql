-- A turn that regenerates a reply has an id of its own and names the user message it answers
-- here. A turn started by a user message keeps that message's id as its own and leaves this
-- null, as every turn written before did. Catalog change only: no row is rewritten.
ALTER TABLE turns ADD COLUMN message_id uuid;

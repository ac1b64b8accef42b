-- The catalog model that wrote an assistant's message, by the name clients chose it by. Null on
-- users' messages and on replies stored before models were recorded. Catalog change only: no row
-- is rewritten.
ALTER TABLE messages ADD COLUMN model text;

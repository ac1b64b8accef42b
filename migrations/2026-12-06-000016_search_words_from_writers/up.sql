-- The service computes a message's words in its own INSERT (`chat_search_vector`), which costs
-- less than a PL/pgSQL trigger call on every message of every turn. The trigger stays for every
-- other writer: a release before this one, a tool, a hand-written fix. It fills the words of a
-- row inserted without them, and computes them again whenever a message's text is written
-- (`UPDATE messages SET content = content` indexes a message anew).
--
-- Catalog changes only.
DROP TRIGGER messages_fill_search_vector ON messages;

CREATE TRIGGER messages_fill_search_vector
    BEFORE INSERT ON messages
    FOR EACH ROW WHEN (NEW.search_vector IS NULL)
    EXECUTE FUNCTION messages_fill_search_vector();

CREATE TRIGGER messages_refill_search_vector
    BEFORE UPDATE OF content ON messages
    FOR EACH ROW EXECUTE FUNCTION messages_fill_search_vector();

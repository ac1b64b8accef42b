DROP TRIGGER messages_refill_search_vector ON messages;
DROP TRIGGER messages_fill_search_vector ON messages;

CREATE TRIGGER messages_fill_search_vector
    BEFORE INSERT OR UPDATE OF content ON messages
    FOR EACH ROW EXECUTE FUNCTION messages_fill_search_vector();

ALTER TABLE conversations DROP COLUMN title_source;
DROP TRIGGER messages_fill_search_vector ON messages;
DROP FUNCTION messages_fill_search_vector();
ALTER TABLE messages DROP COLUMN search_vector;
DROP FUNCTION chat_search_vector(text);
DROP FUNCTION chat_search_config();

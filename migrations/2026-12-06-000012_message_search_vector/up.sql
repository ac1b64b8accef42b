-- Full-text search over a user's messages (SearchConversations). Each message keeps its text as a
-- tsvector, so that ranking and matching read a stored value instead of parsing the text again.
-- A trigger fills it on every write, whichever release or tool writes the row, in the text
-- search configuration the writing connection names in `chat.search_config` (the service sets
-- it from CHAT_SEARCH_CONFIG), or `simple` where none is named.
--
-- Catalog changes only: the column has no default, so adding it rewrites nothing. The messages
-- already stored get theirs by the next migrations, in batches, and the index after that.
ALTER TABLE messages ADD COLUMN search_vector tsvector;

-- The configuration this connection indexes and searches with.
CREATE FUNCTION chat_search_config() RETURNS regconfig LANGUAGE sql STABLE AS $$
    SELECT COALESCE(NULLIF(current_setting('chat.search_config', true), ''), 'simple')::regconfig
$$;

-- A message's words, as search reads them. Only the first 200,000 characters count: a tsvector
-- holds at most 1 MiB of words, and a longer text must not make its message unwritable.
CREATE FUNCTION chat_search_vector(content text) RETURNS tsvector LANGUAGE sql STABLE AS $$
    SELECT to_tsvector(chat_search_config(), left(content, 200000))
$$;

CREATE FUNCTION messages_fill_search_vector() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.search_vector := chat_search_vector(NEW.content);
    RETURN NEW;
END
$$;

CREATE TRIGGER messages_fill_search_vector
    BEFORE INSERT OR UPDATE OF content ON messages
    FOR EACH ROW EXECUTE FUNCTION messages_fill_search_vector();

-- Who named a conversation: derived from its first message, chosen by the client (at creation
-- or by UpdateConversation), or written by the model. Only a derived title may be replaced
-- by the model's. The constant default rewrites nothing; the check is validated next, without
-- blocking writes.
ALTER TABLE conversations ADD COLUMN title_source text NOT NULL DEFAULT 'derived';
ALTER TABLE conversations ADD CONSTRAINT conversations_title_source_check
    CHECK (title_source IN ('derived', 'client', 'model')) NOT VALID;

-- SearchConversations: the messages holding a query's words. Built without blocking writes.
CREATE INDEX CONCURRENTLY messages_search_idx ON messages USING gin (search_vector);

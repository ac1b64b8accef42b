DROP INDEX CONCURRENTLY messages_search_idx;

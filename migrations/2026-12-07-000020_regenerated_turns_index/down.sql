DROP INDEX CONCURRENTLY turns_message_idx;

-- Nothing orders messages by time any more.
DROP INDEX CONCURRENTLY messages_conversation_chronological_idx;

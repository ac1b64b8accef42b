-- GetConversation, ListMessages and the model's context: a conversation's messages in order.
-- Built without blocking writes; unique, because two messages never share a place.
CREATE UNIQUE INDEX CONCURRENTLY messages_conversation_sequence_idx
    ON messages (conversation_id, sequence);

ALTER TABLE usage_days
    ADD CONSTRAINT usage_days_calls_check CHECK (calls >= 0) NOT VALID,
    ADD CONSTRAINT usage_days_estimated_calls_check CHECK (estimated_calls >= 0) NOT VALID,
    ADD CONSTRAINT usage_days_input_tokens_check CHECK (input_tokens >= 0) NOT VALID,
    ADD CONSTRAINT usage_days_cached_input_tokens_check CHECK (cached_input_tokens >= 0) NOT VALID,
    ADD CONSTRAINT usage_days_output_tokens_check CHECK (output_tokens >= 0) NOT VALID,
    ADD CONSTRAINT usage_days_reasoning_tokens_check CHECK (reasoning_tokens >= 0) NOT VALID,
    ADD CONSTRAINT usage_days_cost_micros_check CHECK (cost_micros >= 0) NOT VALID;
ALTER TABLE usage_days DROP CONSTRAINT usage_days_valid;

ALTER TABLE conversations ADD CONSTRAINT conversations_title_source_check
    CHECK (title_source IN ('derived', 'client', 'model')) NOT VALID;
ALTER TABLE conversations DROP CONSTRAINT conversations_valid;

ALTER TABLE turns
    ADD CONSTRAINT turns_state_check
        CHECK (state IN ('generating', 'completed', 'cancelled', 'failed', 'interrupted')) NOT VALID,
    ADD CONSTRAINT turns_attempt_check CHECK (attempt >= 1) NOT VALID,
    ADD CONSTRAINT turns_request_key_check CHECK (request_key <> '') NOT VALID;
ALTER TABLE turns DROP CONSTRAINT turns_valid;

ALTER TABLE messages
    ADD CONSTRAINT messages_role_check
        CHECK (role IN ('user', 'assistant', 'system', 'tool')) NOT VALID,
    ADD CONSTRAINT messages_status_check
        CHECK (status IN ('complete', 'cancelled', 'awaiting_tool_results', 'interrupted')) NOT VALID;
ALTER TABLE messages DROP CONSTRAINT messages_valid;

DROP FUNCTION chat_valid_title_source(text);
DROP FUNCTION chat_valid_turn(text, integer, text);
DROP FUNCTION chat_valid_message(text, text);

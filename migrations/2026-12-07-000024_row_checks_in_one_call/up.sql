-- The checks on the rows every turn writes, one call per row instead of one expression per
-- column. PostgreSQL reads each check's expression back from the catalog and prepares it on
-- every statement that writes the table, so a turn paid for about twenty of them: a list of
-- allowed words cost about 10 µs a statement, a `>= 0` 1.5 to 4 µs, and one function call
-- holding all of a row's rules 5 to 8 µs (BENCHMARKS.md). The rules are the same. The new checks
-- hold for rows written from now on; the next migration checks the stored rows while writes go
-- on. Catalog changes only.

CREATE FUNCTION chat_valid_message(role text, status text) RETURNS boolean
    LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
BEGIN
    RETURN role IN ('user', 'assistant', 'system', 'tool')
       AND status IN ('complete', 'cancelled', 'awaiting_tool_results', 'interrupted');
END $$;

CREATE FUNCTION chat_valid_turn(state text, attempt integer, request_key text) RETURNS boolean
    LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
BEGIN
    RETURN state IN ('generating', 'completed', 'cancelled', 'failed', 'interrupted')
       AND attempt >= 1
       AND (request_key IS NULL OR request_key <> '');
END $$;

CREATE FUNCTION chat_valid_title_source(title_source text) RETURNS boolean
    LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
BEGIN
    RETURN title_source IN ('derived', 'client', 'model');
END $$;

-- In the order a turn's statements take the tables, so that a turn running meanwhile on
-- another replica waits for this migration rather than deadlocking with it.
ALTER TABLE conversations ADD CONSTRAINT conversations_valid
    CHECK (chat_valid_title_source(title_source)) NOT VALID;
ALTER TABLE conversations DROP CONSTRAINT conversations_title_source_check;

ALTER TABLE turns ADD CONSTRAINT turns_valid
    CHECK (chat_valid_turn(state, attempt, request_key)) NOT VALID;
ALTER TABLE turns DROP CONSTRAINT turns_state_check;
ALTER TABLE turns DROP CONSTRAINT turns_attempt_check;
ALTER TABLE turns DROP CONSTRAINT turns_request_key_check;

ALTER TABLE messages ADD CONSTRAINT messages_valid CHECK (chat_valid_message(role, status)) NOT VALID;
ALTER TABLE messages DROP CONSTRAINT messages_role_check;
ALTER TABLE messages DROP CONSTRAINT messages_status_check;

-- Counts: one expression, no call.
ALTER TABLE usage_days ADD CONSTRAINT usage_days_valid
    CHECK (LEAST(calls, estimated_calls, input_tokens, cached_input_tokens, output_tokens,
                 reasoning_tokens, cost_micros) >= 0) NOT VALID;
ALTER TABLE usage_days DROP CONSTRAINT usage_days_calls_check;
ALTER TABLE usage_days DROP CONSTRAINT usage_days_estimated_calls_check;
ALTER TABLE usage_days DROP CONSTRAINT usage_days_input_tokens_check;
ALTER TABLE usage_days DROP CONSTRAINT usage_days_cached_input_tokens_check;
ALTER TABLE usage_days DROP CONSTRAINT usage_days_output_tokens_check;
ALTER TABLE usage_days DROP CONSTRAINT usage_days_reasoning_tokens_check;
ALTER TABLE usage_days DROP CONSTRAINT usage_days_cost_micros_check;

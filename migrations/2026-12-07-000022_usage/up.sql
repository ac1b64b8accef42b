-- What each model call used, kept two ways, both written by the statement that stores its reply.
--
-- On the assistant's message the call wrote, as one object: its tokens as the provider reported
-- them (`input_tokens`, of which `cached_input_tokens`; `output_tokens`, of which
-- `reasoning_tokens`), whether the service `estimated` them instead, and what they cost at the
-- catalog's prices (`cost_micros`, or null without prices). Null on users' messages and on
-- replies stored before usage was recorded. Catalog change only: no row is rewritten.
ALTER TABLE messages ADD COLUMN usage jsonb;

-- Summed per user, day (UTC) and model, so that a user's spend in a period is read from a few
-- rows rather than summed over their messages, and outlives the conversations it was spent in.
-- `model` is '' for calls whose model is not known. Costs are in millionths of the unit the
-- catalog's prices are in.
CREATE TABLE usage_days (
    user_id             uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    day                 date NOT NULL,
    model               text NOT NULL,
    calls               bigint NOT NULL CHECK (calls >= 0),
    estimated_calls     bigint NOT NULL CHECK (estimated_calls >= 0),
    input_tokens        bigint NOT NULL CHECK (input_tokens >= 0),
    cached_input_tokens bigint NOT NULL CHECK (cached_input_tokens >= 0),
    output_tokens       bigint NOT NULL CHECK (output_tokens >= 0),
    reasoning_tokens    bigint NOT NULL CHECK (reasoning_tokens >= 0),
    cost_micros         bigint NOT NULL CHECK (cost_micros >= 0),
    PRIMARY KEY (user_id, day, model)
);

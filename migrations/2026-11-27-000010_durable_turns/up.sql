-- Each user message starts a turn: the assistant's reply to it, which may outlive the stream
-- that asked for it. The turn is what a client resumes, cancels or retries, on any replica.
CREATE TABLE turns (
    -- The id of the user message the turn answers.
    id              uuid PRIMARY KEY,
    user_id         uuid NOT NULL,
    conversation_id uuid NOT NULL REFERENCES conversations (id) ON DELETE CASCADE,
    -- The client's id for the request, when it gave one: a retry with the same id is the same
    -- turn. The hash of what was asked tells a retry from a different request reusing the id.
    request_key     text CHECK (request_key <> ''),
    request_hash    bytea,
    state           text NOT NULL DEFAULT 'generating'
                    CHECK (state IN ('generating', 'completed', 'cancelled', 'failed', 'interrupted')),
    -- Generating again after a failure starts a new attempt; its events are numbered afresh.
    attempt         integer NOT NULL DEFAULT 1 CHECK (attempt >= 1),
    -- The replica generating it, whose lease in `replicas` is the turn's.
    replica         uuid,
    -- How it ended: finish reason, model and usage, or the failure.
    outcome         jsonb,
    created_at      timestamptz NOT NULL,
    ended_at        timestamptz
);

-- One turn per request id and user, enforced here so that replicas racing on a retry make one.
CREATE UNIQUE INDEX turns_request_key_idx ON turns (user_id, request_key)
    WHERE request_key IS NOT NULL;
-- Deleting a conversation (or a user) deletes its turns.
CREATE INDEX turns_conversation_idx ON turns (conversation_id);
-- Turns still generating, by replica: what a lapsed lease leaves behind.
CREATE INDEX turns_generating_idx ON turns (replica) WHERE state = 'generating';

-- Replicas alive: each renews its lease while it runs.
CREATE TABLE replicas (
    id          uuid PRIMARY KEY,
    lease_until timestamptz NOT NULL
);

-- A reply's message names its turn and attempt, and keeps the length in bytes of each piece it
-- was streamed in, so that a finished turn replays exactly the events that were sent live.
ALTER TABLE messages
    ADD COLUMN turn_id uuid,
    ADD COLUMN turn_attempt integer,
    ADD COLUMN deltas integer[];

-- The order in which a message's tool calls were answered, as their results were sent.
ALTER TABLE tool_calls ADD COLUMN answer_index integer;

-- A reply cut off because its replica stopped is kept as interrupted. Catalog changes only; the
-- next migration validates the check without blocking writes.
ALTER TABLE messages DROP CONSTRAINT messages_status_check;
ALTER TABLE messages ADD CONSTRAINT messages_status_check
    CHECK (status IN ('complete', 'cancelled', 'awaiting_tool_results', 'interrupted')) NOT VALID;

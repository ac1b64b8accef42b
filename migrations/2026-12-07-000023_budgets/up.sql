-- Budgets: what a user may spend in a period, in tokens (input and output), in cost (millionths
-- of the unit of the catalog's prices), or both. A row here is the user's own budget and replaces
-- the service's default (CHAT_BUDGET_TOKENS, CHAT_BUDGET_COST) whole: a null limit is none.
CREATE TABLE user_budgets (
    user_id     uuid PRIMARY KEY REFERENCES users (id) ON DELETE CASCADE,
    tokens      bigint CHECK (tokens >= 0),
    cost_micros bigint CHECK (cost_micros >= 0),
    period      text NOT NULL CHECK (period IN ('day', 'week', 'month')),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

-- While a budget applies, a user's turns are generated one at a time, so that turns admitted at
-- once, on any replicas, cannot pass the budget together: the turn that holds the user's budget,
-- and when it took it. Written only for users under a budget. Catalog changes only.
ALTER TABLE users
    ADD COLUMN budget_turn uuid,
    ADD COLUMN budget_turn_at timestamptz;

ALTER TABLE users DROP COLUMN budget_turn, DROP COLUMN budget_turn_at;
DROP TABLE user_budgets;

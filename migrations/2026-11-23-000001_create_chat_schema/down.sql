DROP TABLE service_secrets;
DROP TABLE tool_calls;
DROP TABLE messages;
DROP TABLE conversations;
DROP TABLE users;

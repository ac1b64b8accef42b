//! The tables as the migrations create them, as diesel knows them. Written by hand;
//! tests/e2e/schema.rs renders the migrated database in this layout and fails, printing the
//! expected text, when the two differ.

diesel::table! {
    conversations (id) {
        id -> Uuid,
        user_id -> Uuid,
        title -> Text,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
        revision -> Int8,
        awaiting_message -> Nullable<Uuid>,
        awaiting_calls -> Nullable<Array<Text>>,
        awaiting_until -> Nullable<Timestamptz>,
        title_source -> Text,
        leaf_id -> Nullable<Uuid>,
        leaf_depth -> Nullable<Int4>,
        leaf_jumps -> Int8,
    }
}

diesel::table! {
    use diesel::sql_types::*;
    use crate::store::Tsvector;

    messages (id) {
        id -> Uuid,
        conversation_id -> Uuid,
        role -> Text,
        content -> Text,
        status -> Text,
        created_at -> Timestamptz,
        sequence -> Int8,
        turn_id -> Nullable<Uuid>,
        turn_attempt -> Nullable<Int4>,
        deltas -> Nullable<Array<Int4>>,
        search_vector -> Nullable<Tsvector>,
        parent_id -> Nullable<Uuid>,
        depth -> Nullable<Int4>,
        model -> Nullable<Text>,
        usage -> Nullable<Jsonb>,
    }
}

diesel::table! {
    replicas (id) {
        id -> Uuid,
        lease_until -> Timestamptz,
    }
}

diesel::table! {
    service_secrets (name) {
        name -> Text,
        secret -> Bytea,
        created_at -> Timestamptz,
    }
}

diesel::table! {
    tool_calls (id) {
        id -> Uuid,
        message_id -> Uuid,
        position -> Int4,
        provider_call_id -> Text,
        name -> Text,
        arguments -> Jsonb,
        result -> Nullable<Jsonb>,
        status -> Text,
        created_at -> Timestamptz,
        answer_index -> Nullable<Int4>,
    }
}

diesel::table! {
    turns (id) {
        id -> Uuid,
        user_id -> Uuid,
        conversation_id -> Uuid,
        request_key -> Nullable<Text>,
        request_hash -> Nullable<Bytea>,
        state -> Text,
        attempt -> Int4,
        replica -> Nullable<Uuid>,
        outcome -> Nullable<Jsonb>,
        created_at -> Timestamptz,
        ended_at -> Nullable<Timestamptz>,
        leaf_jumps -> Nullable<Int8>,
        message_id -> Nullable<Uuid>,
    }
}

diesel::table! {
    usage_days (user_id, day, model) {
        user_id -> Uuid,
        day -> Date,
        model -> Text,
        calls -> Int8,
        estimated_calls -> Int8,
        input_tokens -> Int8,
        cached_input_tokens -> Int8,
        output_tokens -> Int8,
        reasoning_tokens -> Int8,
        cost_micros -> Int8,
    }
}

diesel::table! {
    user_budgets (user_id) {
        user_id -> Uuid,
        tokens -> Nullable<Int8>,
        cost_micros -> Nullable<Int8>,
        period -> Text,
        updated_at -> Timestamptz,
    }
}

diesel::table! {
    users (id) {
        id -> Uuid,
        subject -> Text,
        created_at -> Timestamptz,
        budget_turn -> Nullable<Uuid>,
        budget_turn_at -> Nullable<Timestamptz>,
    }
}

diesel::joinable!(conversations -> users (user_id));
diesel::joinable!(messages -> conversations (conversation_id));
diesel::joinable!(tool_calls -> messages (message_id));
diesel::joinable!(turns -> conversations (conversation_id));
diesel::joinable!(usage_days -> users (user_id));
diesel::joinable!(user_budgets -> users (user_id));

diesel::allow_tables_to_appear_in_same_query!(
    conversations,
    messages,
    replicas,
    service_secrets,
    tool_calls,
    turns,
    usage_days,
    user_budgets,
    users,
);

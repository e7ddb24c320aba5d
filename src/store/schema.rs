// One schema for both backends; the migrations in migrations/{sqlite,postgres} must agree with it.

diesel::table! {
    agents (id) {
        id -> Text,
        name -> Text,
        department -> Nullable<Text>,
        status -> Text,
        policy -> Text,
        created_at -> BigInt,
        updated_at -> BigInt,
        currency -> Text,
        config_version -> BigInt,
        ledger_seq -> BigInt,
        funded -> BigInt,
        refunded -> BigInt,
        held -> BigInt,
        spent -> BigInt,
        chain_length -> BigInt,
        chain_head -> Nullable<Text>,
        deactivated_at -> Nullable<BigInt>,
        parent_id -> Nullable<Text>,
        children -> BigInt,
    }
}

diesel::table! {
    api_keys (id) {
        id -> Text,
        name -> Nullable<Text>,
        role -> Text,
        agent_id -> Nullable<Text>,
        key_hash -> Text,
        prefix -> Text,
        created_by -> Nullable<Text>,
        created_at -> BigInt,
        revoked_at -> Nullable<BigInt>,
    }
}

diesel::table! {
    cards (id) {
        id -> Text,
        agent_id -> Text,
        label -> Text,
        currency -> Text,
        last4 -> Text,
        exp_month -> Integer,
        exp_year -> Integer,
        expires_at -> Nullable<BigInt>,
        single_use -> Bool,
        status -> Text,
        processor -> Text,
        processor_card_id -> Text,
        policy -> Text,
        created_at -> BigInt,
        updated_at -> BigInt,
        trace_id -> Nullable<Text>,
        processor_managed -> Bool,
    }
}

diesel::table! {
    events (id) {
        id -> Text,
        agent_id -> Text,
        card_id -> Nullable<Text>,
        kind -> Text,
        actor -> Nullable<Text>,
        reason -> Nullable<Text>,
        data -> Nullable<Text>,
        created_at -> BigInt,
        chain_n -> BigInt,
    }
}

diesel::table! {
    authorizations (id) {
        id -> Text,
        source -> Text,
        external_id -> Text,
        agent_id -> Text,
        card_id -> Nullable<Text>,
        rail -> Text,
        status -> Text,
        reason -> Nullable<Text>,
        rule -> Nullable<Text>,
        amount -> BigInt,
        currency -> Text,
        cap_amount -> BigInt,
        cap_currency -> Text,
        card_amount -> BigInt,
        card_currency -> Text,
        fx_rate -> Nullable<Text>,
        fx_date -> Nullable<Text>,
        held -> BigInt,
        posted -> BigInt,
        counted -> BigInt,
        counted_card -> BigInt,
        refunded -> BigInt,
        merchant_id -> Nullable<Text>,
        merchant_name -> Text,
        mcc -> Nullable<Text>,
        country -> Nullable<Text>,
        trace_id -> Nullable<Text>,
        seq -> BigInt,
        authorized_at -> BigInt,
        updated_at -> BigInt,
        approval_id -> Nullable<Text>,
        fx_source -> Nullable<Text>,
        chain_n -> BigInt,
        recipient -> Nullable<Text>,
        recipient_named_by -> Nullable<Text>,
        max_amount -> Nullable<BigInt>,
    }
}

diesel::table! {
    approvals (id) {
        id -> Text,
        agent_id -> Text,
        card_id -> Nullable<Text>,
        authorization_id -> Text,
        rail -> Text,
        rule -> Text,
        single_use -> Bool,
        amount -> BigInt,
        currency -> Text,
        cap_amount -> BigInt,
        cap_currency -> Text,
        cap -> Nullable<BigInt>,
        spent -> Nullable<BigInt>,
        window_end_at -> Nullable<BigInt>,
        merchant_id -> Nullable<Text>,
        merchant_name -> Text,
        mcc -> Nullable<Text>,
        country -> Nullable<Text>,
        trace_id -> Nullable<Text>,
        deferred -> Nullable<Text>,
        status -> Text,
        expires_at -> BigInt,
        decided_by -> Nullable<Text>,
        decided_at -> Nullable<BigInt>,
        allowance_until -> Nullable<BigInt>,
        notify_status -> Text,
        notify_attempts -> Integer,
        notify_error -> Nullable<Text>,
        created_at -> BigInt,
        updated_at -> BigInt,
        deferred_result -> Nullable<Text>,
        purpose -> Nullable<Text>,
        hosts -> Nullable<Text>,
        merchants -> Nullable<Text>,
    }
}

diesel::table! {
    policy_versions (id) {
        id -> Text,
        agent_id -> Text,
        card_id -> Nullable<Text>,
        number -> Nullable<BigInt>,
        state -> Text,
        shadow -> Bool,
        policy -> Text,
        reason -> Nullable<Text>,
        created_by -> Nullable<Text>,
        created_at -> BigInt,
        decided_by -> Nullable<Text>,
        decided_at -> Nullable<BigInt>,
    }
}

diesel::table! {
    shadow_disagreements (id) {
        id -> Text,
        version_id -> Text,
        authorization_id -> Text,
        agent_id -> Text,
        live_reason -> Nullable<Text>,
        live_rule -> Nullable<Text>,
        shadow_reason -> Nullable<Text>,
        shadow_rule -> Nullable<Text>,
        created_at -> BigInt,
    }
}

diesel::table! {
    backtests (id) {
        id -> Text,
        spec -> Text,
        status -> Text,
        replayed -> BigInt,
        total -> BigInt,
        result -> Nullable<Text>,
        error -> Nullable<Text>,
        created_by -> Nullable<Text>,
        created_at -> BigInt,
        finished_at -> Nullable<BigInt>,
    }
}

diesel::table! {
    transfers (id) {
        id -> Text,
        external_id -> Text,
        agent_id -> Text,
        authorization_id -> Nullable<Text>,
        card_id -> Nullable<Text>,
        trace_id -> Nullable<Text>,
        kind -> Text,
        amount -> BigInt,
        currency -> Text,
        created_at -> BigInt,
        chain_n -> BigInt,
        actor -> Nullable<Text>,
        reason -> Nullable<Text>,
    }
}

diesel::table! {
    treasuries (currency) {
        currency -> Text,
        deposited -> BigInt,
        withdrawn -> BigInt,
        granted -> BigInt,
        returned -> BigInt,
        chain_length -> BigInt,
        chain_head -> Nullable<Text>,
    }
}

diesel::table! {
    treasury_transfers (id) {
        id -> Text,
        currency -> Text,
        external_id -> Text,
        kind -> Text,
        amount -> BigInt,
        agent_id -> Nullable<Text>,
        transfer_id -> Nullable<Text>,
        actor -> Text,
        reason -> Nullable<Text>,
        reference -> Nullable<Text>,
        created_at -> BigInt,
        chain_n -> BigInt,
    }
}

diesel::table! {
    chain_links (agent_id, n) {
        agent_id -> Text,
        n -> BigInt,
        kind -> Text,
        record_id -> Text,
        content_hash -> Text,
        hash -> Text,
    }
}

diesel::table! {
    audit_checkpoints (id) {
        id -> Text,
        created_at -> BigInt,
        heads -> Text,
        digest -> Text,
        signer -> Nullable<Text>,
        signature -> Nullable<Text>,
    }
}

diesel::table! {
    webhook_endpoints (id) {
        id -> Text,
        url -> Text,
        events -> Text,
        secret -> Text,
        description -> Nullable<Text>,
        created_by -> Nullable<Text>,
        created_at -> BigInt,
        deleted_at -> Nullable<BigInt>,
        format -> Text,
    }
}

diesel::table! {
    webhook_cursors (agent_id) {
        agent_id -> Text,
        n -> BigInt,
    }
}

diesel::table! {
    webhook_deliveries (id) {
        id -> Text,
        endpoint_id -> Text,
        event_id -> Text,
        event_type -> Text,
        payload -> Text,
        status -> Text,
        attempts -> Integer,
        next_attempt_at -> BigInt,
        last_error -> Nullable<Text>,
        created_at -> BigInt,
        delivered_at -> Nullable<BigInt>,
    }
}

diesel::table! {
    wallets (agent_id) {
        agent_id -> Text,
        address -> Text,
        sealed_key -> Text,
        created_at -> BigInt,
    }
}

diesel::table! {
    x402_payments (id) {
        id -> Text,
        agent_id -> Text,
        idempotency_key -> Text,
        request_hash -> Text,
        authorization_id -> Text,
        url -> Text,
        x402_version -> Integer,
        network -> Text,
        asset -> Text,
        pay_to -> Text,
        amount -> Text,
        payer -> Text,
        valid_before -> BigInt,
        header_name -> Text,
        header_value -> Text,
        status -> Text,
        transaction_hash -> Nullable<Text>,
        error -> Nullable<Text>,
        response_status -> Nullable<Integer>,
        response_headers -> Nullable<Text>,
        response_body -> Nullable<Binary>,
        created_at -> BigInt,
        updated_at -> BigInt,
        protocol -> Text,
    }
}

diesel::joinable!(cards -> agents (agent_id));
diesel::table! {
    chain_deposits (network, tx_hash, log_index) {
        network -> Text,
        tx_hash -> Text,
        log_index -> BigInt,
        block_number -> BigInt,
        block_hash -> Text,
        token -> Text,
        from_address -> Text,
        address -> Text,
        agent_id -> Text,
        value -> Text,
        amount -> BigInt,
        currency -> Text,
        transfer_id -> Nullable<Text>,
        treasury_transfer_id -> Nullable<Text>,
        created_at -> BigInt,
    }
}

diesel::table! {
    chain_cursors (network) {
        network -> Text,
        block_number -> BigInt,
        block_hash -> Text,
        updated_at -> BigInt,
    }
}

diesel::allow_tables_to_appear_in_same_query!(
    agents,
    api_keys,
    approvals,
    audit_checkpoints,
    backtests,
    chain_cursors,
    chain_deposits,
    chain_links,
    cards,
    events,
    authorizations,
    policy_versions,
    shadow_disagreements,
    transfers,
    treasuries,
    treasury_transfers,
    wallets,
    webhook_cursors,
    webhook_deliveries,
    webhook_endpoints,
    x402_payments
);

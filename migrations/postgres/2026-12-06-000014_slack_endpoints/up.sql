-- How an endpoint takes its deliveries: 'standard' (signed JSON) or 'slack' (an incoming webhook
-- that receives the alerts as messages).
ALTER TABLE webhook_endpoints ADD COLUMN format TEXT NOT NULL DEFAULT 'standard'
    CHECK (format IN ('standard', 'slack'));

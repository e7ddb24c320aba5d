DROP TABLE webhook_deliveries;
DROP TABLE webhook_cursors;
DROP TABLE webhook_endpoints;

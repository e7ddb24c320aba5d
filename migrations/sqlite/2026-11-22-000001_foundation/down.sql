DROP TABLE events; DROP TABLE cards; DROP TABLE api_keys; DROP TABLE agents;

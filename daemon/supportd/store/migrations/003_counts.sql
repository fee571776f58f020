-- Indexes for the counts in sd_notify STATUS, /metrics and /healthz: no full-table scans.
CREATE INDEX inbox_received ON inbox (received_at);
CREATE INDEX outbox_unsent ON outbox (state) WHERE state != 'sent';

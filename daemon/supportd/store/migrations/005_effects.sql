-- One table of effects: everything decided in a transaction and done outside it by a runner
-- (a mail to send, a timer to fire). `payload` is JSON; for mail, what the outbox renders and
-- composes when it sends (template, context, headers). A runner holds a row it claimed
-- (claimed_by) until lease_until; an expired lease lets another runner take it.
CREATE TABLE effects (
    id INTEGER PRIMARY KEY,
    kind TEXT NOT NULL,               -- mail | timer
    ticket_id INTEGER REFERENCES tickets (id),
    payload TEXT NOT NULL,
    due_at TEXT NOT NULL,             -- not before; after a failure, the next attempt
    state TEXT NOT NULL DEFAULT 'queued' CHECK (state IN ('queued', 'done', 'failed')),
    attempts INTEGER NOT NULL DEFAULT 0,
    claimed_by TEXT,
    lease_until TEXT,
    last_error TEXT,
    created_at TEXT NOT NULL,
    done_at TEXT
);
CREATE INDEX effects_due ON effects (kind, due_at) WHERE state = 'queued';
CREATE INDEX effects_ticket ON effects (ticket_id);
CREATE INDEX effects_unsent ON effects (kind, state) WHERE state != 'done';

-- Mails queued before this migration keep their rendered bytes (hex) and are sent as they are.
INSERT INTO effects (kind, ticket_id, payload, due_at, state, attempts, last_error, created_at,
                     done_at)
    SELECT 'mail', ticket_id,
           json_object('template', kind, 'automatic', json(CASE automatic WHEN 1 THEN 'true'
                       ELSE 'false' END), 'raw_hex', hex(raw),
                       'headers', json_object('from_addr', mail_from, 'to', rcpt_to,
                                              'message_id', message_id)),
           next_attempt_at, CASE state WHEN 'sent' THEN 'done' ELSE state END, attempts,
           last_error, created_at, sent_at
    FROM outbox ORDER BY id;
DROP TABLE outbox;

-- The mails as operators (and the old queries) know them: one row per mail.
CREATE VIEW outbox AS
    SELECT id, ticket_id, created_at, json_extract(payload, '$.template') AS kind,
           json_extract(payload, '$.automatic') AS automatic,
           json_extract(payload, '$.headers.from_addr') AS mail_from,
           json_extract(payload, '$.headers.to') AS rcpt_to,
           json_extract(payload, '$.headers.message_id') AS message_id,
           CASE state WHEN 'done' THEN 'sent' ELSE state END AS state, attempts,
           due_at AS next_attempt_at, last_error, done_at AS sent_at
    FROM effects WHERE kind = 'mail';

-- Inbox rows are claimed by the runner processing them, as effects are.
ALTER TABLE inbox ADD COLUMN claimed_by TEXT;
ALTER TABLE inbox ADD COLUMN lease_until TEXT;

-- The first schema: durable inbox, tickets, their messages and events, the outbox.
CREATE TABLE inbox (
    id INTEGER PRIMARY KEY,
    received_at TEXT NOT NULL,
    source TEXT NOT NULL,             -- smtp | lmtp | imap:<name> | http
    mail_from TEXT,                   -- envelope sender; '' is the null sender, NULL unknown
    rcpt_to TEXT NOT NULL,            -- JSON list of envelope recipients
    dedupe_key TEXT NOT NULL UNIQUE,  -- mid:<Message-ID> or sha256:<digest>
    raw BLOB NOT NULL,
    state TEXT NOT NULL DEFAULT 'new' CHECK (state IN ('new', 'done', 'failed')),
    error TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    ticket_id INTEGER
);
CREATE INDEX inbox_pending ON inbox (state, id) WHERE state != 'done';

CREATE TABLE tickets (
    id INTEGER PRIMARY KEY,
    subject TEXT NOT NULL,
    status TEXT NOT NULL,
    priority TEXT NOT NULL,
    group_name TEXT NOT NULL,
    assignee TEXT,
    requester TEXT NOT NULL,
    account TEXT,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE INDEX tickets_status ON tickets (status, id);
CREATE INDEX tickets_requester ON tickets (requester, id);

CREATE TABLE participants (
    ticket_id INTEGER NOT NULL REFERENCES tickets (id),
    email TEXT NOT NULL,
    role TEXT NOT NULL,               -- requester | cc
    PRIMARY KEY (ticket_id, email)
);

CREATE TABLE messages (
    id INTEGER PRIMARY KEY,
    ticket_id INTEGER NOT NULL REFERENCES tickets (id),
    inbox_id INTEGER REFERENCES inbox (id),
    outbox_id INTEGER,
    kind TEXT NOT NULL,               -- customer | agent | note | automatic | machine
    author TEXT NOT NULL,
    subject TEXT NOT NULL,
    body TEXT NOT NULL,
    created_at TEXT NOT NULL
);
CREATE INDEX messages_ticket ON messages (ticket_id, id);

CREATE TABLE message_ids (                -- every Message-ID stored or sent, in order
    message_id TEXT PRIMARY KEY,
    ticket_id INTEGER NOT NULL REFERENCES tickets (id)
);
CREATE INDEX message_ids_ticket ON message_ids (ticket_id);

CREATE TABLE attachments (
    id INTEGER PRIMARY KEY,
    message_id INTEGER NOT NULL REFERENCES messages (id),
    filename TEXT NOT NULL,
    content_type TEXT NOT NULL,
    size INTEGER NOT NULL,
    sha256 TEXT NOT NULL
);

CREATE TABLE events (
    id INTEGER PRIMARY KEY,
    ticket_id INTEGER NOT NULL REFERENCES tickets (id),
    at TEXT NOT NULL,
    actor TEXT NOT NULL,
    kind TEXT NOT NULL,
    detail TEXT NOT NULL
);
CREATE INDEX events_ticket ON events (ticket_id, id);

CREATE TABLE outbox (
    id INTEGER PRIMARY KEY,
    ticket_id INTEGER REFERENCES tickets (id),
    created_at TEXT NOT NULL,
    kind TEXT NOT NULL,               -- acknowledgement | new_ticket | relay | ...
    automatic INTEGER NOT NULL,       -- 1: counts toward the per-recipient hourly limit
    mail_from TEXT NOT NULL,
    rcpt_to TEXT NOT NULL,            -- one recipient per row
    message_id TEXT NOT NULL UNIQUE,
    raw BLOB NOT NULL,
    state TEXT NOT NULL DEFAULT 'queued' CHECK (state IN ('queued', 'sent', 'failed')),
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at TEXT NOT NULL,
    last_error TEXT,
    sent_at TEXT
);
CREATE INDEX outbox_due ON outbox (state, next_attempt_at) WHERE state = 'queued';
CREATE INDEX outbox_automatic ON outbox (rcpt_to, created_at) WHERE automatic = 1;

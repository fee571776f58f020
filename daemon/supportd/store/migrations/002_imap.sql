-- Where each IMAP watcher is: UIDs are only meaningful under one UIDVALIDITY (RFC 3501 §2.3.1.1).
CREATE TABLE imap_positions (
    mailbox TEXT PRIMARY KEY,         -- the [[imap]] name
    uidvalidity INTEGER NOT NULL,
    last_uid INTEGER NOT NULL         -- every UID up to this one is in the inbox and moved/flagged
) WITHOUT ROWID;

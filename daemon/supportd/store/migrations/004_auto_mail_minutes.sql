-- Automatic mails per recipient and minute, for the hourly limit: a sum over at most 61 rows,
-- where counting outbox rows took longer with every mail a busy sender had been sent.
CREATE TABLE auto_mail_minutes (
    rcpt_to TEXT NOT NULL,
    minute TEXT NOT NULL,             -- UTC 'YYYY-MM-DDTHH:MM', the start of a timestamp
    mails INTEGER NOT NULL,
    PRIMARY KEY (rcpt_to, minute)
) WITHOUT ROWID;
INSERT INTO auto_mail_minutes (rcpt_to, minute, mails)
    SELECT rcpt_to, substr(created_at, 1, 16), count(*) FROM outbox
    WHERE automatic = 1 AND created_at >= strftime('%Y-%m-%dT%H:%M', 'now', '-61 minutes')
    GROUP BY rcpt_to, substr(created_at, 1, 16);

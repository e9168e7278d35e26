-- What SQLite says its own way: claims as one UPDATE ... RETURNING (a write transaction holds the
-- database's write lock, so there is nothing to skip), JSON arrays through json_each, the schema.

-- name: claim_polls
-- Unlocked, unfinished jobs with a provider job id due by `due_by` (now, or the end of the budget's
-- window: the worker pools the chances of the jobs due within it, receiver/planner.py), leased in one
-- statement; served by the partial index receiver_jobs_due_poll.
UPDATE receiver_jobs SET locked_until = :lease
WHERE id IN (
    SELECT id FROM receiver_jobs
    WHERE completed_at IS NULL AND next_poll_at IS NOT NULL AND next_poll_at <= :due_by
      AND provider_job_id IS NOT NULL AND (locked_until IS NULL OR locked_until <= :now)
    ORDER BY next_poll_at LIMIT :limit
)
RETURNING *

-- name: release_polls
-- Claimed polls the worker did not make this round (the budget had no slot for them): due as before.
UPDATE receiver_jobs SET locked_until = NULL
WHERE id IN (SELECT value FROM json_each(:job_ids)) AND completed_at IS NULL

-- name: claim_chosen_polls
-- The jobs of `job_ids` (read unleased by `pending_polls`, chosen by the planner) that are still unleased
-- and open, leased. A job another process leased in between is skipped.
UPDATE receiver_jobs SET locked_until = :lease
WHERE id IN (SELECT value FROM json_each(:job_ids))
  AND completed_at IS NULL AND next_poll_at IS NOT NULL AND provider_job_id IS NOT NULL
  AND (locked_until IS NULL OR locked_until <= :now)
RETURNING *

-- name: claim_submits
-- Due jobs in `status` that have no provider job id, made `pending` again with the next look at `lease`
-- (a submit that outlives it lost its process), in one statement: `queued` ones to send, `pending`
-- ones whose submit lost its process.
UPDATE receiver_jobs SET status = 'pending', next_poll_at = :lease
WHERE id IN (
    SELECT id FROM receiver_jobs
    WHERE completed_at IS NULL AND status = :status AND provider_job_id IS NULL
      AND next_poll_at IS NOT NULL AND next_poll_at <= :now
    ORDER BY next_poll_at LIMIT :limit
)
RETURNING *

-- name: claim_deliveries
-- Due deliveries whose `after` handlers have finished, leased in one statement, with the job's event and
-- the reports of those handlers; of every job, or (`job_ids`, a JSON array) of those.
UPDATE receiver_deliveries SET locked_until = :lease
WHERE rowid IN (
    SELECT c.rowid FROM receiver_deliveries AS c
    WHERE c.status IN ('pending', 'retrying') AND c.next_attempt_at <= :now
      AND (:job_ids IS NULL OR c.job_id IN (SELECT value FROM json_each(:job_ids)))
      AND (c.locked_until IS NULL OR c.locked_until <= :now)
      AND NOT EXISTS (
          SELECT 1 FROM receiver_deliveries AS p, json_each(c.after) AS a
          WHERE p.job_id = c.job_id AND p.handler = a.value AND p.status IN ('pending', 'retrying')
      )
    ORDER BY c.next_attempt_at LIMIT :limit
)
RETURNING job_id, handler, attempts,
    (SELECT event FROM receiver_jobs AS j WHERE j.id = receiver_deliveries.job_id) AS event,
    (SELECT json_group_object(p.handler, json(p.report))
     FROM receiver_deliveries AS p, json_each(receiver_deliveries.after) AS a
     WHERE p.job_id = receiver_deliveries.job_id AND p.handler = a.value AND p.report IS NOT NULL) AS reports

-- name: next_due
-- Each branch is served by a partial index (due polls, due deliveries, deadlines, due budget events). Work another
-- process has claimed is due when its lease runs out, not before: a worker never spins on it. Nor on a
-- delivery that waits `after` another still owed: that one's own due time stands for both (whoever
-- finishes it goes on to the one waiting).
SELECT MIN(due) AS due FROM (
    SELECT MIN(CASE WHEN locked_until > next_poll_at THEN locked_until ELSE next_poll_at END) AS due
    FROM receiver_jobs
    WHERE completed_at IS NULL AND next_poll_at IS NOT NULL
    UNION ALL
    SELECT MIN(CASE WHEN locked_until > next_attempt_at THEN locked_until ELSE next_attempt_at END)
    FROM receiver_deliveries AS d WHERE d.status IN ('pending', 'retrying') AND (d.after = '[]' OR NOT EXISTS (
        SELECT 1 FROM receiver_deliveries AS p, json_each(d.after) AS a
        WHERE p.job_id = d.job_id AND p.handler = a.value AND p.status IN ('pending', 'retrying')
    ))
    UNION ALL
    SELECT MIN(deadline_at) FROM receiver_jobs WHERE completed_at IS NULL
    UNION ALL
    SELECT MIN(CASE WHEN locked_until > next_attempt_at THEN locked_until ELSE next_attempt_at END)
    FROM receiver_budget_deliveries WHERE status IN ('pending', 'retrying')
) AS candidates

-- name: claim_budget_deliveries
-- Due `budget` events, leased in one statement, each with its event.
UPDATE receiver_budget_deliveries SET locked_until = :lease
WHERE rowid IN (
    SELECT rowid FROM receiver_budget_deliveries
    WHERE status IN ('pending', 'retrying') AND next_attempt_at <= :now
      AND (locked_until IS NULL OR locked_until <= :now)
    ORDER BY next_attempt_at LIMIT :limit
)
RETURNING provider, day, level, handler, attempts,
    (SELECT event FROM receiver_budget_alerts AS a
     WHERE a.provider = receiver_budget_deliveries.provider AND a.day = receiver_budget_deliveries.day
       AND a.level = receiver_budget_deliveries.level) AS event

-- name: lock_job
-- The write transaction (BEGIN IMMEDIATE) already holds the database's write lock.
SELECT * FROM receiver_jobs WHERE id = :id

-- name: lock_budget_key
-- The write transaction (BEGIN IMMEDIATE) already holds the database's write lock.
SELECT blocked_until FROM receiver_budget_keys WHERE key = :key

-- name: job_deliveries
SELECT * FROM receiver_deliveries WHERE job_id IN (SELECT value FROM json_each(:job_ids)) ORDER BY seq

-- name: lock_schema
-- The write transaction (BEGIN IMMEDIATE) already keeps other processes' migrations out.
SELECT 1 AS locked

-- name: version_table
CREATE TABLE IF NOT EXISTS receiver_schema_version (
    version INTEGER PRIMARY KEY,
    applied_at TIMESTAMP TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP
)

-- name: schema_version
-- Databases from before the version table kept their version in user_version.
SELECT MAX(version) AS version FROM (
    SELECT MAX(version) AS version FROM receiver_schema_version
    UNION ALL
    SELECT user_version FROM pragma_user_version
) AS known

-- name: migration_1
-- The first schema, as receivers before the shared SQL made it.
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    provider TEXT NOT NULL,
    provider_job_id TEXT,
    model TEXT NOT NULL,
    status TEXT NOT NULL,
    request TEXT NOT NULL,
    metadata TEXT NOT NULL,
    output_urls TEXT NOT NULL DEFAULT '[]',
    error TEXT,
    progress INTEGER,
    created_at TEXT NOT NULL,
    submitted_at TEXT,
    completed_at TEXT,
    completed_via TEXT,
    deadline_at TEXT NOT NULL,
    next_poll_at TEXT,
    poll_count INTEGER NOT NULL DEFAULT 0,
    locked_until TEXT,
    event_id TEXT,
    event TEXT
);
CREATE INDEX IF NOT EXISTS jobs_due_poll ON jobs (next_poll_at) WHERE next_poll_at IS NOT NULL;
CREATE INDEX IF NOT EXISTS jobs_created ON jobs (created_at);
CREATE INDEX IF NOT EXISTS jobs_provider_job ON jobs (provider, provider_job_id);
CREATE TABLE IF NOT EXISTS deliveries (
    job_id TEXT NOT NULL REFERENCES jobs (id),
    handler TEXT NOT NULL,
    status TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    next_attempt_at TEXT,
    locked_until TEXT,
    after TEXT NOT NULL DEFAULT '[]',
    report TEXT,
    PRIMARY KEY (job_id, handler)
);
CREATE INDEX IF NOT EXISTS deliveries_due ON deliveries (next_attempt_at)
    WHERE status IN ('pending', 'retrying');

-- name: migration_2
-- The PostgreSQL schema in SQLite's words: the same table names, a `seq` for insertion order (the rowid,
-- copied by a trigger), partial indexes on open jobs for deadlines and due polls, ON DELETE CASCADE.
-- Declared types name what a TEXT column holds; they keep TEXT affinity. Rows keep their rowids.
CREATE TABLE receiver_jobs (
    seq INTEGER NOT NULL DEFAULT 0,
    id TEXT NOT NULL PRIMARY KEY,
    provider TEXT NOT NULL,
    provider_job_id TEXT,
    model TEXT NOT NULL,
    status TEXT NOT NULL,
    request JSON TEXT NOT NULL,
    metadata JSON TEXT NOT NULL,
    output_urls JSON TEXT NOT NULL DEFAULT '[]',
    error JSON TEXT,
    progress INTEGER,
    created_at TIMESTAMP TEXT NOT NULL,
    submitted_at TIMESTAMP TEXT,
    completed_at TIMESTAMP TEXT,
    completed_via TEXT,
    deadline_at TIMESTAMP TEXT NOT NULL,
    next_poll_at TIMESTAMP TEXT,
    poll_count INTEGER NOT NULL DEFAULT 0,
    locked_until TIMESTAMP TEXT,
    event_id TEXT,
    event JSON TEXT
);
INSERT INTO receiver_jobs (rowid, seq, id, provider, provider_job_id, model, status, request, metadata,
    output_urls, error, progress, created_at, submitted_at, completed_at, completed_via, deadline_at,
    next_poll_at, poll_count, locked_until, event_id, event)
SELECT rowid, rowid, id, provider, provider_job_id, model, status, request, metadata, output_urls, error,
    progress, created_at, submitted_at, completed_at, completed_via, deadline_at, next_poll_at, poll_count,
    locked_until, event_id, event
FROM jobs;
CREATE TABLE receiver_deliveries (
    seq INTEGER NOT NULL DEFAULT 0,
    job_id TEXT NOT NULL REFERENCES receiver_jobs (id) ON DELETE CASCADE,
    handler TEXT NOT NULL,
    status TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    next_attempt_at TIMESTAMP TEXT,
    locked_until TIMESTAMP TEXT,
    after JSON TEXT NOT NULL DEFAULT '[]',
    report JSON TEXT,
    PRIMARY KEY (job_id, handler)
);
INSERT INTO receiver_deliveries (rowid, seq, job_id, handler, status, attempts, last_error,
    next_attempt_at, locked_until, after, report)
SELECT rowid, rowid, job_id, handler, status, attempts, last_error, next_attempt_at, locked_until, after,
    report
FROM deliveries;
DROP TABLE deliveries;
DROP TABLE jobs;
CREATE TRIGGER receiver_jobs_seq AFTER INSERT ON receiver_jobs
BEGIN UPDATE receiver_jobs SET seq = NEW.rowid WHERE rowid = NEW.rowid; END;
CREATE TRIGGER receiver_deliveries_seq AFTER INSERT ON receiver_deliveries
BEGIN UPDATE receiver_deliveries SET seq = NEW.rowid WHERE rowid = NEW.rowid; END;
CREATE INDEX receiver_jobs_due_poll ON receiver_jobs (next_poll_at)
    WHERE completed_at IS NULL AND next_poll_at IS NOT NULL;
CREATE INDEX receiver_jobs_deadline ON receiver_jobs (deadline_at) WHERE completed_at IS NULL;
CREATE INDEX receiver_jobs_created ON receiver_jobs (created_at DESC, seq DESC);
CREATE INDEX receiver_jobs_provider_job ON receiver_jobs (provider, provider_job_id);
CREATE INDEX receiver_deliveries_due ON receiver_deliveries (next_attempt_at)
    WHERE status IN ('pending', 'retrying');
CREATE INDEX receiver_deliveries_dead ON receiver_deliveries (seq) WHERE status = 'dead';
PRAGMA user_version = 2;

-- name: migration_3
-- What a resubmit needs (the webhook URL as sent) and the 429 count of a queued submit's backoff.
ALTER TABLE receiver_jobs ADD COLUMN webhook_url TEXT;
ALTER TABLE receiver_jobs ADD COLUMN refusals INTEGER NOT NULL DEFAULT 0;

-- name: notify_wake
-- SQLite has no notices (its connector's `notifies` is false, so the store runs neither of these): the
-- workers of other processes on the file find new work when they next look.
SELECT :origin AS origin

-- name: listen_wake
SELECT 1 AS listening

-- name: migration_4
-- The rate budget shared by every process on the store.
CREATE TABLE receiver_budget_keys (
    key TEXT NOT NULL PRIMARY KEY,
    blocked_until TIMESTAMP TEXT
);
CREATE TABLE receiver_budget_requests (
    id TEXT NOT NULL PRIMARY KEY,
    key TEXT NOT NULL,
    started_at TIMESTAMP TEXT NOT NULL,
    ended_at TIMESTAMP TEXT  -- NULL while the request waits for its answer
);
CREATE INDEX receiver_budget_requests_key ON receiver_budget_requests (key);

-- name: migration_5
-- Failover: each provider a submit went to (provider, outcome, answer, time), and those still to try.
ALTER TABLE receiver_jobs ADD COLUMN attempts JSON TEXT NOT NULL DEFAULT '[]';
ALTER TABLE receiver_jobs ADD COLUMN fallbacks JSON TEXT NOT NULL DEFAULT '[]';

-- name: migration_7
-- Each finished delivery attempt, one JSON object a line (appended as text: the same statement on both
-- databases): when, how it ended, its error and the next attempt's time, for the dashboard's timeline.
ALTER TABLE receiver_deliveries ADD COLUMN history TEXT NOT NULL DEFAULT '';

-- name: advance_job
-- A report that does not end the job, by the rules of state.apply_update (the ranks are its _RANK):
-- the status moves forward only, the progress only up; a finished job, another provider job id, or a
-- report that changes nothing matches no row, so nothing is written. Columns: the status after, the
-- provider job id on record after, changed. The provider job id is not set here but by
-- adopt_provider_job_id when this returns none: SQLite rewrites the entries of every index on a
-- column the SET names, changed or not, and (provider, provider_job_id) made each report a third dearer.
UPDATE receiver_jobs SET
    status = CASE WHEN CAST(:rank AS INTEGER) > (CASE status WHEN 'running' THEN 2 WHEN 'submitted' THEN 1 ELSE 0 END)
        THEN CAST(:status AS TEXT) ELSE status END,
    progress = CASE WHEN CAST(:progress AS INTEGER) IS NULL THEN progress
        WHEN progress IS NULL OR progress < CAST(:progress AS INTEGER) THEN CAST(:progress AS INTEGER)
        ELSE progress END
WHERE id = :id AND status NOT IN ('succeeded', 'failed', 'canceled')
    AND (provider_job_id IS NULL OR CAST(:provider_job_id AS TEXT) IS NULL
        OR provider_job_id = CAST(:provider_job_id AS TEXT))
    AND (CAST(:rank AS INTEGER) > (CASE status WHEN 'running' THEN 2 WHEN 'submitted' THEN 1 ELSE 0 END)
        OR (CAST(:progress AS INTEGER) IS NOT NULL AND (progress IS NULL OR progress < CAST(:progress AS INTEGER)))
        OR (provider_job_id IS NULL AND CAST(:provider_job_id AS TEXT) IS NOT NULL))
RETURNING status, provider_job_id, 1 AS changed

-- name: advance_jobs
-- advance_job for many reports in one statement (`:reports`, a JSON list of objects with its
-- parameters; one report per job, see SQLStore.advance_many). SQLite has no UPDATE inside WITH, so
-- only the reports that changed their job have a row; the store answers the others with job_brief.
UPDATE receiver_jobs SET
    status = CASE WHEN r.rank > (CASE receiver_jobs.status WHEN 'running' THEN 2 WHEN 'submitted' THEN 1 ELSE 0 END)
        THEN r.status ELSE receiver_jobs.status END,
    progress = CASE WHEN r.progress IS NULL THEN receiver_jobs.progress
        WHEN receiver_jobs.progress IS NULL OR receiver_jobs.progress < r.progress THEN r.progress
        ELSE receiver_jobs.progress END
FROM (
    SELECT json_extract(value, '$.id') AS id, json_extract(value, '$.status') AS status,
        json_extract(value, '$.rank') AS rank, json_extract(value, '$.progress') AS progress,
        json_extract(value, '$.provider_job_id') AS provider_job_id
    FROM json_each(:reports)
) AS r
WHERE receiver_jobs.id = r.id AND receiver_jobs.status NOT IN ('succeeded', 'failed', 'canceled')
    AND (receiver_jobs.provider_job_id IS NULL OR r.provider_job_id IS NULL
        OR receiver_jobs.provider_job_id = r.provider_job_id)
    AND (r.rank > (CASE receiver_jobs.status WHEN 'running' THEN 2 WHEN 'submitted' THEN 1 ELSE 0 END)
        OR (r.progress IS NOT NULL AND (receiver_jobs.progress IS NULL OR receiver_jobs.progress < r.progress))
        OR (receiver_jobs.provider_job_id IS NULL AND r.provider_job_id IS NOT NULL))
RETURNING id, status, provider_job_id, 1 AS changed

-- name: budget_alert_by_event
-- The level noted with the `budget` event `:event_id` (a replay names the event by its id).
SELECT provider, day, level, event FROM receiver_budget_alerts WHERE json_extract(event, '$.id') = :event_id

-- name: migration_6
-- Costs: what each job cost as its provider reported it (net of refunds), and the daily budget's
-- alerts, one row per provider, UTC day and level, so that each is sent once by whichever process
-- inserts it.
ALTER TABLE receiver_jobs ADD COLUMN cost REAL;
CREATE TABLE receiver_budget_alerts (
    provider TEXT NOT NULL,
    day TEXT NOT NULL,
    level INTEGER NOT NULL,
    sent_at TIMESTAMP TEXT NOT NULL,
    PRIMARY KEY (provider, day, level)
);

-- name: migration_8
-- When each job was last looked at (the poll planner's history), and the recent successes the
-- completion-time model learns from.
ALTER TABLE receiver_jobs ADD COLUMN polled_at TIMESTAMP TEXT;
CREATE INDEX receiver_jobs_succeeded ON receiver_jobs (completed_at) WHERE status = 'succeeded';

-- name: migration_9
-- When the provider says each job ended (its `completedAt`): the completion-time model learns from it,
-- not from when a poll or a late webhook saw the end.
ALTER TABLE receiver_jobs ADD COLUMN finished_at TIMESTAMP TEXT;

-- name: migration_10
-- The `budget` events owed to handlers, a row per level reached and handler, like a job's deliveries:
-- the process that notes the level sends them at once; one it did not finish (it stopped, or the
-- handler failed) the worker sends again, retried as a job's event is.
ALTER TABLE receiver_budget_alerts ADD COLUMN event JSON TEXT;
CREATE TABLE receiver_budget_deliveries (
    provider TEXT NOT NULL,
    day TEXT NOT NULL,
    level INTEGER NOT NULL,
    handler TEXT NOT NULL,
    status TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    next_attempt_at TIMESTAMP TEXT,
    locked_until TIMESTAMP TEXT,
    PRIMARY KEY (provider, day, level, handler),
    FOREIGN KEY (provider, day, level) REFERENCES receiver_budget_alerts (provider, day, level)
        ON DELETE CASCADE
);
CREATE INDEX receiver_budget_deliveries_due ON receiver_budget_deliveries (next_attempt_at)
    WHERE status IN ('pending', 'retrying');

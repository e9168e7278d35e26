-- What PostgreSQL says its own way: claims with SKIP LOCKED, the row lock of `record`, the schema.

-- name: claim_polls
-- Unlocked, unfinished jobs with a provider job id due by `due_by` (now, or the end of the budget's
-- window: the worker pools the chances of the jobs due within it, receiver/planner.py), leased in one
-- statement; served by the partial index receiver_jobs_due_poll.
WITH candidate AS (
    SELECT id FROM receiver_jobs
    WHERE completed_at IS NULL AND next_poll_at IS NOT NULL AND next_poll_at <= :due_by
      AND provider_job_id IS NOT NULL AND (locked_until IS NULL OR locked_until <= :now)
    ORDER BY next_poll_at LIMIT :limit
    FOR UPDATE SKIP LOCKED
), claimed AS (
    UPDATE receiver_jobs AS j SET locked_until = :lease
    FROM candidate WHERE j.id = candidate.id
    RETURNING j.*
)
SELECT * FROM claimed ORDER BY next_poll_at, seq

-- name: release_polls
-- Claimed polls the worker did not make this round (the budget had no slot for them): due as before.
UPDATE receiver_jobs SET locked_until = NULL
WHERE id = ANY (ARRAY(SELECT jsonb_array_elements_text(:job_ids))) AND completed_at IS NULL

-- name: claim_chosen_polls
-- The jobs of `job_ids` (read unleased by `pending_polls`, chosen by the planner) that are still unleased
-- and open, leased. A job another process leased in between is skipped: a concurrent lease makes this
-- statement re-check the row once that one commits.
UPDATE receiver_jobs SET locked_until = :lease
WHERE id = ANY (ARRAY(SELECT jsonb_array_elements_text(:job_ids)))
  AND completed_at IS NULL AND next_poll_at IS NOT NULL AND provider_job_id IS NOT NULL
  AND (locked_until IS NULL OR locked_until <= :now)
RETURNING *

-- name: claim_submits
-- Due jobs in `status` that have no provider job id, made `pending` again with the next look at `lease`
-- (a submit that outlives it lost its process), in one statement: `queued` ones to send, `pending`
-- ones whose submit lost its process.
WITH candidate AS (
    SELECT id FROM receiver_jobs
    WHERE completed_at IS NULL AND status = :status AND provider_job_id IS NULL
      AND next_poll_at IS NOT NULL AND next_poll_at <= :now
    ORDER BY next_poll_at LIMIT :limit
    FOR UPDATE SKIP LOCKED
), claimed AS (
    UPDATE receiver_jobs AS j SET status = 'pending', next_poll_at = :lease
    FROM candidate WHERE j.id = candidate.id
    RETURNING j.*
)
SELECT * FROM claimed ORDER BY created_at, seq

-- name: claim_deliveries
-- Due deliveries whose `after` handlers have finished, leased in one statement, with the job's event and
-- the reports of those handlers (read from the statement's snapshot: it changes only leases); of every
-- job, or (`job_ids`, a JSON array) of those. `after ? handler`: the JSON array holds the handler's name.
WITH candidate AS (
    SELECT d.job_id, d.handler FROM receiver_deliveries AS d
    WHERE d.status IN ('pending', 'retrying') AND d.next_attempt_at <= :now
      AND (CAST(:job_ids AS jsonb) IS NULL OR d.job_id = ANY (ARRAY(SELECT jsonb_array_elements_text(:job_ids))))
      AND (d.locked_until IS NULL OR d.locked_until <= :now)
      AND NOT EXISTS (
          SELECT 1 FROM receiver_deliveries AS p
          WHERE p.job_id = d.job_id AND d.after ? p.handler AND p.status IN ('pending', 'retrying')
      )
    ORDER BY d.next_attempt_at LIMIT :limit
    FOR UPDATE OF d SKIP LOCKED
), claimed AS (
    UPDATE receiver_deliveries AS d SET locked_until = :lease
    FROM candidate WHERE d.job_id = candidate.job_id AND d.handler = candidate.handler
    RETURNING d.job_id, d.handler, d.attempts, d.after, d.next_attempt_at, d.seq
)
SELECT c.job_id, c.handler, c.attempts, j.event,
    (SELECT COALESCE(jsonb_object_agg(p.handler, p.report), '{}') FROM receiver_deliveries AS p
     WHERE p.job_id = c.job_id AND c.after ? p.handler AND p.report IS NOT NULL) AS reports
FROM claimed AS c JOIN receiver_jobs AS j ON j.id = c.job_id
ORDER BY c.next_attempt_at, c.seq

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
    FROM receiver_deliveries AS d WHERE d.status IN ('pending', 'retrying') AND (d.after = '[]'::jsonb OR NOT EXISTS (
        SELECT 1 FROM receiver_deliveries AS p
        WHERE p.job_id = d.job_id AND d.after ? p.handler AND p.status IN ('pending', 'retrying')
    ))
    UNION ALL
    SELECT MIN(deadline_at) FROM receiver_jobs WHERE completed_at IS NULL
    UNION ALL
    SELECT MIN(CASE WHEN locked_until > next_attempt_at THEN locked_until ELSE next_attempt_at END)
    FROM receiver_budget_deliveries WHERE status IN ('pending', 'retrying')
) AS candidates

-- name: claim_budget_deliveries
-- Due `budget` events, leased in one statement, each with its event.
WITH candidate AS (
    SELECT provider, day, level, handler FROM receiver_budget_deliveries
    WHERE status IN ('pending', 'retrying') AND next_attempt_at <= :now
      AND (locked_until IS NULL OR locked_until <= :now)
    ORDER BY next_attempt_at LIMIT :limit
    FOR UPDATE SKIP LOCKED
), claimed AS (
    UPDATE receiver_budget_deliveries AS d SET locked_until = :lease
    FROM candidate AS c
    WHERE d.provider = c.provider AND d.day = c.day AND d.level = c.level AND d.handler = c.handler
    RETURNING d.provider, d.day, d.level, d.handler, d.attempts, d.next_attempt_at
)
SELECT c.provider, c.day, c.level, c.handler, c.attempts, a.event
FROM claimed AS c JOIN receiver_budget_alerts AS a
    ON a.provider = c.provider AND a.day = c.day AND a.level = c.level
ORDER BY c.next_attempt_at

-- name: lock_job
SELECT * FROM receiver_jobs WHERE id = :id FOR UPDATE

-- name: lock_budget_key
-- Admissions for one key, from any process, one after the other.
SELECT blocked_until FROM receiver_budget_keys WHERE key = :key FOR UPDATE

-- name: job_deliveries
SELECT * FROM receiver_deliveries
WHERE job_id = ANY (ARRAY(SELECT jsonb_array_elements_text(:job_ids)))
ORDER BY seq

-- name: lock_schema
-- Replicas that start together migrate one after the other; the later ones find the work done.
SELECT pg_advisory_xact_lock(461380349543)  -- "kling"

-- name: version_table
CREATE TABLE IF NOT EXISTS receiver_schema_version (
    version integer PRIMARY KEY,
    applied_at timestamptz NOT NULL DEFAULT now()
)

-- name: schema_version
SELECT COALESCE(MAX(version), 0) AS version FROM receiver_schema_version

-- name: migration_1
-- Migration n brings the schema from version n-1 to n. Plain CREATE (no IF NOT EXISTS): a migration
-- that ran twice would fail loudly instead of hiding a broken lock.
CREATE TABLE receiver_jobs (
    seq bigint GENERATED ALWAYS AS IDENTITY,
    id text PRIMARY KEY,
    provider text NOT NULL,
    provider_job_id text,
    model text NOT NULL,
    status text NOT NULL,
    request jsonb NOT NULL,
    metadata jsonb NOT NULL,
    output_urls jsonb NOT NULL DEFAULT '[]',
    error jsonb,
    progress integer,
    created_at timestamptz NOT NULL,
    submitted_at timestamptz,
    completed_at timestamptz,
    completed_via text,
    deadline_at timestamptz NOT NULL,
    next_poll_at timestamptz,
    poll_count integer NOT NULL DEFAULT 0,
    locked_until timestamptz,
    event_id text,
    event json  -- json, not jsonb: re-sent as built, keys in their order
);
CREATE INDEX receiver_jobs_due_poll ON receiver_jobs (next_poll_at)
    WHERE completed_at IS NULL AND next_poll_at IS NOT NULL;
CREATE INDEX receiver_jobs_deadline ON receiver_jobs (deadline_at) WHERE completed_at IS NULL;
CREATE INDEX receiver_jobs_created ON receiver_jobs (created_at DESC, seq DESC);
CREATE INDEX receiver_jobs_provider_job ON receiver_jobs (provider, provider_job_id);
CREATE TABLE receiver_deliveries (
    seq bigint GENERATED ALWAYS AS IDENTITY,
    job_id text NOT NULL REFERENCES receiver_jobs (id) ON DELETE CASCADE,
    handler text NOT NULL,
    status text NOT NULL,
    attempts integer NOT NULL DEFAULT 0,
    last_error text,
    next_attempt_at timestamptz,
    locked_until timestamptz,
    after text[] NOT NULL DEFAULT '{}',
    report jsonb,
    PRIMARY KEY (job_id, handler)
);
CREATE INDEX receiver_deliveries_due ON receiver_deliveries (next_attempt_at)
    WHERE status IN ('pending', 'retrying');
CREATE INDEX receiver_deliveries_dead ON receiver_deliveries (seq) WHERE status = 'dead';

-- name: migration_2
-- `after` becomes a JSON array, as on SQLite, so both stores pass it the same way.
ALTER TABLE receiver_deliveries ALTER COLUMN after DROP DEFAULT;
ALTER TABLE receiver_deliveries ALTER COLUMN after TYPE jsonb USING to_jsonb(after);
ALTER TABLE receiver_deliveries ALTER COLUMN after SET DEFAULT '[]';

-- name: migration_3
-- What a resubmit needs (the webhook URL as sent) and the 429 count of a queued submit's backoff.
ALTER TABLE receiver_jobs ADD COLUMN webhook_url text;
ALTER TABLE receiver_jobs ADD COLUMN refusals integer NOT NULL DEFAULT 0;

-- name: notify_wake
-- Wakes the workers of the other processes on this schema when the transaction commits: work became due
-- now. The channel carries the schema, so deployments in other schemas of the database are not woken;
-- the payload names the store that wrote, whose own process was woken already.
SELECT pg_notify(left('receiver_wake:' || current_schema(), 63), :origin)

-- name: listen_wake
-- Run once on the listen connection (autocommit). LISTEN takes a name, not an expression: hence EXECUTE.
DO $$ BEGIN EXECUTE format('LISTEN %I', left('receiver_wake:' || current_schema(), 63)); END $$

-- name: migration_4
-- The rate budget shared by every process on the store.
CREATE TABLE receiver_budget_keys (
    key text PRIMARY KEY,
    blocked_until timestamptz
);
CREATE TABLE receiver_budget_requests (
    id text PRIMARY KEY,
    key text NOT NULL,
    started_at timestamptz NOT NULL,
    ended_at timestamptz  -- NULL while the request waits for its answer
);
CREATE INDEX receiver_budget_requests_key ON receiver_budget_requests (key);

-- name: migration_5
-- Failover: each provider a submit went to (provider, outcome, answer, time), and those still to try.
ALTER TABLE receiver_jobs ADD COLUMN attempts jsonb NOT NULL DEFAULT '[]';
ALTER TABLE receiver_jobs ADD COLUMN fallbacks jsonb NOT NULL DEFAULT '[]';

-- name: migration_7
-- Each finished delivery attempt, one JSON object a line (appended as text: the same statement on both
-- databases): when, how it ended, its error and the next attempt's time, for the dashboard's timeline.
ALTER TABLE receiver_deliveries ADD COLUMN history text NOT NULL DEFAULT '';

-- name: advance_job
-- A report that does not end the job, by the rules of state.apply_update (the ranks are its _RANK):
-- the status moves forward only, the progress only up, the provider job id is taken when none is on
-- record; a finished job, another provider job id, or a report that changes nothing matches no row,
-- so nothing is written. Columns: the status after, the provider job id on record after, changed.
-- One statement, so one round trip whether or not it changes the job.
WITH advanced AS (
    UPDATE receiver_jobs SET
        status = CASE WHEN CAST(:rank AS INTEGER) > (CASE status WHEN 'running' THEN 2 WHEN 'submitted' THEN 1 ELSE 0 END)
            THEN CAST(:status AS TEXT) ELSE status END,
        progress = CASE WHEN CAST(:progress AS INTEGER) IS NULL THEN progress
            WHEN progress IS NULL OR progress < CAST(:progress AS INTEGER) THEN CAST(:progress AS INTEGER)
            ELSE progress END,
        provider_job_id = COALESCE(provider_job_id, CAST(:provider_job_id AS TEXT))
    WHERE id = :id AND status NOT IN ('succeeded', 'failed', 'canceled')
        AND (provider_job_id IS NULL OR CAST(:provider_job_id AS TEXT) IS NULL
            OR provider_job_id = CAST(:provider_job_id AS TEXT))
        AND (CAST(:rank AS INTEGER) > (CASE status WHEN 'running' THEN 2 WHEN 'submitted' THEN 1 ELSE 0 END)
            OR (CAST(:progress AS INTEGER) IS NOT NULL AND (progress IS NULL OR progress < CAST(:progress AS INTEGER)))
            OR (provider_job_id IS NULL AND CAST(:provider_job_id AS TEXT) IS NOT NULL))
    RETURNING status, provider_job_id
)
SELECT COALESCE((SELECT status FROM advanced), j.status) AS status,
    COALESCE((SELECT provider_job_id FROM advanced), j.provider_job_id) AS provider_job_id,
    EXISTS (SELECT 1 FROM advanced) AS changed
FROM receiver_jobs AS j WHERE j.id = :id

-- name: advance_jobs
-- advance_job for many reports in one statement (`:reports`, a JSON list of objects with its
-- parameters; one report per job, see SQLStore.advance_many): a row for each report that names a
-- job, whether or not it changed it, so one round trip answers the group. The jobs it will change are
-- locked first, in the order of their ids: two groups that name the same jobs in another order wait
-- for each other instead of deadlocking (an UPDATE alone locks in its join's order). The ranks are
-- state.apply_update's _RANK.
WITH report AS (
    SELECT * FROM jsonb_to_recordset(CAST(:reports AS jsonb))
        AS r(id text, status text, rank integer, progress integer, provider_job_id text)
), locked AS (
    SELECT j.id FROM receiver_jobs AS j JOIN report AS r ON r.id = j.id
    WHERE j.status NOT IN ('succeeded', 'failed', 'canceled')
        AND (j.provider_job_id IS NULL OR r.provider_job_id IS NULL OR j.provider_job_id = r.provider_job_id)
        AND (r.rank > (CASE j.status WHEN 'running' THEN 2 WHEN 'submitted' THEN 1 ELSE 0 END)
            OR (r.progress IS NOT NULL AND (j.progress IS NULL OR j.progress < r.progress))
            OR (j.provider_job_id IS NULL AND r.provider_job_id IS NOT NULL))
    ORDER BY j.id
    FOR UPDATE OF j
), advanced AS (
    UPDATE receiver_jobs AS j SET
        status = CASE WHEN r.rank > (CASE j.status WHEN 'running' THEN 2 WHEN 'submitted' THEN 1 ELSE 0 END)
            THEN r.status ELSE j.status END,
        progress = CASE WHEN r.progress IS NULL THEN j.progress
            WHEN j.progress IS NULL OR j.progress < r.progress THEN r.progress
            ELSE j.progress END,
        provider_job_id = COALESCE(j.provider_job_id, r.provider_job_id)
    FROM report AS r, locked AS l
    WHERE j.id = r.id AND l.id = r.id AND j.status NOT IN ('succeeded', 'failed', 'canceled')
        AND (j.provider_job_id IS NULL OR r.provider_job_id IS NULL OR j.provider_job_id = r.provider_job_id)
        AND (r.rank > (CASE j.status WHEN 'running' THEN 2 WHEN 'submitted' THEN 1 ELSE 0 END)
            OR (r.progress IS NOT NULL AND (j.progress IS NULL OR j.progress < r.progress))
            OR (j.provider_job_id IS NULL AND r.provider_job_id IS NOT NULL))
    RETURNING j.id, j.status, j.provider_job_id
)
SELECT r.id, COALESCE(a.status, j.status) AS status,
    COALESCE(a.provider_job_id, j.provider_job_id) AS provider_job_id, a.id IS NOT NULL AS changed
FROM report AS r JOIN receiver_jobs AS j ON j.id = r.id LEFT JOIN advanced AS a ON a.id = r.id

-- name: budget_alert_by_event
-- The level noted with the `budget` event `:event_id` (a replay names the event by its id).
SELECT provider, day, level, event FROM receiver_budget_alerts WHERE event ->> 'id' = :event_id

-- name: migration_6
-- Costs: what each job cost as its provider reported it (net of refunds), and the daily budget's
-- alerts, one row per provider, UTC day and level, so that each is sent once by whichever process
-- inserts it.
ALTER TABLE receiver_jobs ADD COLUMN cost double precision;
CREATE TABLE receiver_budget_alerts (
    provider text NOT NULL,
    day text NOT NULL,
    level integer NOT NULL,
    sent_at timestamptz NOT NULL,
    PRIMARY KEY (provider, day, level)
);

-- name: migration_8
-- When each job was last looked at (the poll planner's history), and the recent successes the
-- completion-time model learns from.
ALTER TABLE receiver_jobs ADD COLUMN polled_at timestamptz;
CREATE INDEX receiver_jobs_succeeded ON receiver_jobs (completed_at) WHERE status = 'succeeded';

-- name: migration_9
-- When the provider says each job ended (its `completedAt`): the completion-time model learns from it,
-- not from when a poll or a late webhook saw the end.
ALTER TABLE receiver_jobs ADD COLUMN finished_at timestamptz;

-- name: migration_10
-- The `budget` events owed to handlers, a row per level reached and handler, like a job's deliveries:
-- the process that notes the level sends them at once; one it did not finish (it stopped, or the
-- handler failed) the worker sends again, retried as a job's event is.
ALTER TABLE receiver_budget_alerts ADD COLUMN event jsonb;
CREATE TABLE receiver_budget_deliveries (
    provider text NOT NULL,
    day text NOT NULL,
    level integer NOT NULL,
    handler text NOT NULL,
    status text NOT NULL,
    attempts integer NOT NULL DEFAULT 0,
    last_error text,
    next_attempt_at timestamptz,
    locked_until timestamptz,
    PRIMARY KEY (provider, day, level, handler),
    FOREIGN KEY (provider, day, level) REFERENCES receiver_budget_alerts (provider, day, level)
        ON DELETE CASCADE
);
CREATE INDEX receiver_budget_deliveries_due ON receiver_budget_deliveries (next_attempt_at)
    WHERE status IN ('pending', 'retrying');

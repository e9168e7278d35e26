-- Statements both databases run as written. Named blocks (`-- name: x`) with `:name` parameters, loaded
-- by receiver/store/queries.py; receiver/store/sqlstore.py is the only code that names them.
-- Times and JSON are passed as Python values: the connector stores them in its database's types.
-- `seq` is insertion order (an identity on PostgreSQL, the rowid copied by a trigger on SQLite).

-- name: insert_job
-- A job without a provider job id is looked at again at `next_poll_at`: a `pending` one there has lost
-- the process that was submitting it (see claim_submits).
INSERT INTO receiver_jobs (id, provider, provider_job_id, model, status, request, metadata, created_at,
    deadline_at, next_poll_at, webhook_url, attempts, fallbacks)
VALUES (:id, :provider, :provider_job_id, :model, :status, :request, :metadata, :created_at, :deadline_at,
    :next_poll_at, :webhook_url, :attempts, :fallbacks)
ON CONFLICT (id) DO NOTHING
RETURNING id

-- name: fail_over
-- A submit refused where another provider may take it: the job goes to the next one, still unsent.
UPDATE receiver_jobs SET provider = :provider, webhook_url = :webhook_url, fallbacks = :fallbacks,
    attempts = :attempts, refusals = 0
WHERE id = :id AND completed_at IS NULL AND provider_job_id IS NULL

-- name: note_attempts
UPDATE receiver_jobs SET attempts = :attempts WHERE id = :id

-- name: queue_job
-- The submit was held back (rate budget) or refused with 429 (`queued`), or its answer was lost
-- (`unknown`): the worker sends it at `at`.
UPDATE receiver_jobs SET status = :status, next_poll_at = :at, refusals = :refusals
WHERE id = :id AND completed_at IS NULL AND status = 'pending'

-- name: mark_submitted
-- A job an early webhook already ended keeps its status and gets no poll. NULLIF(x, x) is a NULL of the
-- column's type: PostgreSQL cannot type a CASE whose only other branch is a NULL parameter.
UPDATE receiver_jobs SET provider_job_id = :provider_job_id, submitted_at = :submitted_at,
    attempts = COALESCE(:attempts, attempts), cost = COALESCE(:cost, cost),
    status = CASE WHEN status IN ('pending', 'queued', 'unknown') THEN 'submitted' ELSE status END,
    next_poll_at = CASE WHEN completed_at IS NULL THEN :next_poll_at ELSE NULLIF(next_poll_at, next_poll_at) END
WHERE id = :id

-- name: record_progress
UPDATE receiver_jobs SET status = :status, progress = :progress, provider_job_id = :provider_job_id,
    cost = :cost
WHERE id = :id

-- name: advance_running
-- advance_job's commonest case at about half its cost (no CASE, no RETURNING, no indexed column in
-- the SET): a running job's progress going up on a `running` report that names the provider job id on
-- record. It matches no row in every other case, which advance_job then decides. Tried first only
-- where a statement costs no round trip (Connector.in_process: SQLite), as a miss would cost one.
UPDATE receiver_jobs SET progress = :progress
WHERE id = :id AND status = 'running' AND provider_job_id = :provider_job_id
    AND (progress IS NULL OR progress < :progress)

-- name: adopt_provider_job_id
-- A report's provider job id for a job that has none on record yet (see advance_job).
UPDATE receiver_jobs SET provider_job_id = :provider_job_id WHERE id = :id AND provider_job_id IS NULL

-- name: job_brief
-- What answers a report that changed nothing (see advance_job).
SELECT status, provider_job_id, 0 AS changed FROM receiver_jobs WHERE id = :id

-- name: record_end
UPDATE receiver_jobs SET status = :status, provider_job_id = :provider_job_id, output_urls = :output_urls,
    error = :error, progress = :progress, completed_at = :completed_at, completed_via = :completed_via,
    next_poll_at = NULL, locked_until = NULL, event_id = :event_id, event = :event, cost = :cost,
    finished_at = :finished_at
WHERE id = :id

-- name: insert_delivery
-- Leased (`locked_until`) to the process that recorded the end and runs it at once, or free to claim (NULL).
INSERT INTO receiver_deliveries (job_id, handler, status, attempts, next_attempt_at, after, locked_until)
VALUES (:job_id, :handler, 'pending', 0, :next_attempt_at, :after, :locked_until)

-- name: replay_delivery
INSERT INTO receiver_deliveries (job_id, handler, status, attempts, next_attempt_at, after)
VALUES (:job_id, :handler, 'pending', 0, :next_attempt_at, :after)
ON CONFLICT (job_id, handler) DO UPDATE SET status = 'pending', attempts = 0, last_error = NULL,
    next_attempt_at = excluded.next_attempt_at, locked_until = NULL

-- name: get_job
SELECT * FROM receiver_jobs WHERE id = :id

-- name: find_job
SELECT id FROM receiver_jobs WHERE provider = :provider AND provider_job_id = :provider_job_id

-- name: list_jobs
SELECT * FROM receiver_jobs WHERE status = COALESCE(:status, status)
ORDER BY created_at DESC, seq DESC LIMIT :limit

-- name: pending_polls
-- Unleased, unfinished jobs with a provider job id due by `due_by`, soonest first, read without a lease:
-- the planner pools their chances, and `claim_chosen_polls` leases only the ones it looks at. Served by
-- the partial index receiver_jobs_due_poll.
SELECT * FROM receiver_jobs
WHERE completed_at IS NULL AND next_poll_at IS NOT NULL AND next_poll_at <= :due_by
  AND provider_job_id IS NOT NULL AND (locked_until IS NULL OR locked_until <= :now)
ORDER BY next_poll_at, seq LIMIT :limit

-- name: schedule_poll
-- `polled_at`: when the look that this follows was sent (the planner measures chances from it).
UPDATE receiver_jobs
SET next_poll_at = CASE WHEN completed_at IS NULL THEN :next_poll_at ELSE NULLIF(next_poll_at, next_poll_at) END,
    poll_count = poll_count + 1, locked_until = NULL, polled_at = COALESCE(:polled_at, polled_at)
WHERE id = :id

-- name: completion_samples
-- The most recent successes, for the completion-time model; served by the partial index
-- receiver_jobs_succeeded, so the history's size does not matter.
SELECT provider, model, request, submitted_at, completed_at, finished_at FROM receiver_jobs
WHERE status = 'succeeded' AND submitted_at IS NOT NULL AND completed_at IS NOT NULL
ORDER BY completed_at DESC LIMIT :limit

-- name: running_samples
-- Jobs submitted and not finished, for the completion-time model (each took at least its age so far,
-- or until its last look); served by the partial index receiver_jobs_due_poll.
SELECT provider, model, request, submitted_at, polled_at FROM receiver_jobs
WHERE completed_at IS NULL AND next_poll_at IS NOT NULL AND submitted_at IS NOT NULL
ORDER BY next_poll_at LIMIT :limit

-- name: poll_soon
-- Only a job the provider has named: a pending job's next_poll_at is its submit's lease, and moving
-- it would make the worker resubmit while the first submit still waits for its answer.
UPDATE receiver_jobs SET next_poll_at = :at
WHERE id = :id AND completed_at IS NULL AND provider_job_id IS NOT NULL
  AND (next_poll_at IS NULL OR next_poll_at > :at)

-- name: job_exists
SELECT 1 AS found FROM receiver_jobs WHERE id = :id

-- name: overdue_jobs
-- Served by the partial index receiver_jobs_deadline.
SELECT id FROM receiver_jobs WHERE completed_at IS NULL AND deadline_at <= :now
ORDER BY deadline_at LIMIT :limit

-- name: finish_delivery
-- Only for the event the delivery was claimed with: a job the provider ended again (after our own
-- timeout or submit_unknown) reset its deliveries for a new event, which the old attempt must not close.
UPDATE receiver_deliveries SET status = :status, attempts = attempts + 1, last_error = :last_error,
    next_attempt_at = :next_attempt_at, locked_until = NULL, report = COALESCE(:report, report),
    history = history || CAST(:entry AS TEXT)
WHERE job_id = :job_id AND handler = :handler
  AND (CAST(:event_id AS TEXT) IS NULL
       OR CAST(:event_id AS TEXT) = (SELECT event_id FROM receiver_jobs WHERE id = :job_id))

-- name: job_event
SELECT event FROM receiver_jobs WHERE id = :id

-- name: delivery_handlers
SELECT handler FROM receiver_deliveries WHERE job_id = :job_id

-- name: dead_deliveries
SELECT job_id, handler, attempts, last_error FROM receiver_deliveries WHERE status = 'dead'
ORDER BY seq DESC LIMIT :limit

-- name: replay_budget_dead
UPDATE receiver_budget_deliveries SET status = 'pending', attempts = 0, last_error = NULL,
    next_attempt_at = :now, locked_until = NULL
WHERE status = 'dead'
RETURNING handler

-- name: dead_budget_deliveries
SELECT d.provider, d.day, d.level, d.handler, d.attempts, d.last_error, a.event
FROM receiver_budget_deliveries AS d
JOIN receiver_budget_alerts AS a ON a.provider = d.provider AND a.day = d.day AND a.level = d.level
WHERE d.status = 'dead' ORDER BY d.day DESC, d.provider, d.level, d.handler LIMIT :limit

-- name: replay_budget_delivery
-- A `budget` event due again for one handler from a first attempt, whatever became of it (delivered,
-- dead, or never owed to this handler, configured since).
INSERT INTO receiver_budget_deliveries (provider, day, level, handler, status, next_attempt_at)
VALUES (:provider, :day, :level, :handler, 'pending', :now)
ON CONFLICT (provider, day, level, handler) DO UPDATE SET status = 'pending', attempts = 0,
    last_error = NULL, next_attempt_at = :now, locked_until = NULL

-- name: counts
SELECT 'jobs' AS kind, status, COUNT(*) AS n FROM receiver_jobs GROUP BY status
UNION ALL
SELECT 'deliveries', status, COUNT(*) FROM receiver_deliveries GROUP BY status
UNION ALL
SELECT 'budget_deliveries', status, COUNT(*) FROM receiver_budget_deliveries GROUP BY status

-- name: record_version
INSERT INTO receiver_schema_version (version) VALUES (:version)

-- name: job_counts
SELECT provider, status, COUNT(*) AS n FROM receiver_jobs GROUP BY provider, status

-- name: ping
-- /healthz: the store answers.
SELECT 1 AS ok;

-- name: budget_key
-- The rate budget: a row per key (to lock, and to hold a block) and a row per request that still counts.
INSERT INTO receiver_budget_keys (key) VALUES (:key) ON CONFLICT (key) DO NOTHING

-- name: budget_forget
-- Requests that no longer count: answered a window ago, or in flight so long that their process died.
DELETE FROM receiver_budget_requests
WHERE key = :key AND (ended_at <= :ended_before OR (ended_at IS NULL AND started_at <= :started_before))

-- name: budget_count
SELECT COUNT(*) AS counting, MIN(ended_at) AS first_end FROM receiver_budget_requests WHERE key = :key

-- name: budget_start
INSERT INTO receiver_budget_requests (id, key, started_at) VALUES (:id, :key, :started_at)

-- name: budget_end
-- Also when the row was forgotten as stale (a request that outlived its bound): it counts again.
INSERT INTO receiver_budget_requests (id, key, started_at, ended_at) VALUES (:id, :key, :started_at, :ended_at)
ON CONFLICT (id) DO UPDATE SET ended_at = excluded.ended_at

-- name: budget_penalize
INSERT INTO receiver_budget_keys (key, blocked_until) VALUES (:key, :until)
ON CONFLICT (key) DO UPDATE SET blocked_until = CASE
    WHEN receiver_budget_keys.blocked_until > excluded.blocked_until THEN receiver_budget_keys.blocked_until
    ELSE excluded.blocked_until END

-- name: costs_since
-- Jobs with a cost created since `since`, for `receiver costs` and the metrics (served by
-- receiver_jobs_created).
SELECT provider, model, metadata, cost FROM receiver_jobs
WHERE created_at >= :since AND cost IS NOT NULL

-- name: spent_since
-- A provider's day so far, for its budget: what its jobs cost, and how many open ones have no cost yet.
SELECT COALESCE(SUM(cost), 0) AS spent,
    COALESCE(SUM(CASE WHEN cost IS NULL AND completed_at IS NULL THEN 1 ELSE 0 END), 0) AS open
FROM receiver_jobs WHERE provider = :provider AND created_at >= :since

-- name: last_cost
SELECT cost FROM receiver_jobs WHERE provider = :provider AND cost > 0
ORDER BY created_at DESC, seq DESC LIMIT 1

-- name: budget_alert
-- Inserted by one process only: the one that gets the row back owes the event to the handlers
-- (budget_owed, in the same transaction).
INSERT INTO receiver_budget_alerts (provider, day, level, sent_at, event)
VALUES (:provider, :day, :level, :now, :event)
ON CONFLICT (provider, day, level) DO NOTHING
RETURNING level

-- name: budget_owed
-- Leased to the process that noted the level, which sends it at once; the worker's when that lease ends.
INSERT INTO receiver_budget_deliveries (provider, day, level, handler, status, next_attempt_at, locked_until)
VALUES (:provider, :day, :level, :handler, 'pending', :now, :lease)

-- name: finish_budget_delivery
UPDATE receiver_budget_deliveries SET status = :status, attempts = attempts + 1, last_error = :last_error,
    next_attempt_at = :next_attempt_at, locked_until = NULL
WHERE provider = :provider AND day = :day AND level = :level AND handler = :handler

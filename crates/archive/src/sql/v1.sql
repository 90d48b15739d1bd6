-- Starling archive, schema version 1. Run by schema::migrate inside a transaction that
-- holds the archive's advisory lock; never edit once released (add a version instead).

-- Every publication, once per (channel, epoch, offset). Partitioned by UTC day on
-- published_at: partitions are created ahead of time and on demand by the sink, and
-- retention drops whole partitions.
CREATE TABLE IF NOT EXISTS starling_publications (
    channel      text        NOT NULL,
    namespace    text        NOT NULL,
    epoch        text        NOT NULL,
    "offset"     bigint      NOT NULL,
    published_at timestamptz NOT NULL,
    user_id      text,
    client_id    text,
    size         integer     NOT NULL,
    data         bytea       NOT NULL,
    node         text        NOT NULL
) PARTITION BY RANGE (published_at);

-- The dedupe key. A unique index on a partitioned table must contain the partition
-- column; a publication read again from the log carries the same time, so the key still
-- identifies it (INSERT ... ON CONFLICT DO NOTHING skips the copy).
CREATE UNIQUE INDEX IF NOT EXISTS starling_publications_key
    ON starling_publications (channel, epoch, "offset", published_at);

-- One covering index for every window query (traffic per namespace per minute/hour, top
-- channels, top publishers): a time range read as an index-only scan, never touching
-- the rows and their data.
CREATE INDEX IF NOT EXISTS starling_publications_time
    ON starling_publications (published_at) INCLUDE (namespace, channel, user_id, size);

-- Connection events, best effort (no dedupe). node_start is written by a node when it
-- starts (it has no connections then): the connection count of a node is the running sum
-- of its connects (+1) and disconnects (-1) since its last node_start.
CREATE TABLE IF NOT EXISTS starling_connection_events (
    at        timestamptz NOT NULL,
    node      text        NOT NULL,
    kind      text        NOT NULL
              CHECK (kind IN ('connect', 'disconnect', 'subscribe', 'unsubscribe', 'node_start')),
    user_id   text,
    client_id text,
    channel   text,
    code      integer
) PARTITION BY RANGE (at);

-- Events of a kind over a window (by close code; the connect/disconnect/node_start scan
-- of the connection count), index-only.
CREATE INDEX IF NOT EXISTS starling_connection_events_kind_time
    ON starling_connection_events (kind, at) INCLUDE (node, code);

-- Where each node's log has been archived up to; written in the same transaction as the
-- rows it covers.
CREATE TABLE IF NOT EXISTS starling_archive_cursor (
    node       text        PRIMARY KEY,
    log_id     text        NOT NULL,
    position   bigint      NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- Analytics. Buckets are aligned on UTC (date_bin from 2000-01-01 00:00 UTC), whatever
-- the session's TimeZone. Windows are [p_from, p_to).

CREATE OR REPLACE FUNCTION starling_traffic(p_from timestamptz, p_to timestamptz, p_bucket interval)
RETURNS TABLE (bucket timestamptz, namespace text, messages bigint, bytes bigint)
LANGUAGE sql STABLE AS $$
    SELECT date_bin(p_bucket, p.published_at, timestamptz '2000-01-01 00:00:00+00'),
           p.namespace, count(*), coalesce(sum(p.size), 0)::bigint
    FROM starling_publications p
    WHERE p.published_at >= p_from AND p.published_at < p_to
    GROUP BY 1, 2
    ORDER BY 1, 2
$$;

CREATE OR REPLACE FUNCTION starling_top_channels(p_from timestamptz, p_to timestamptz, p_limit bigint)
RETURNS TABLE (channel text, namespace text, messages bigint, bytes bigint)
LANGUAGE sql STABLE AS $$
    SELECT p.channel, p.namespace, count(*), coalesce(sum(p.size), 0)::bigint
    FROM starling_publications p
    WHERE p.published_at >= p_from AND p.published_at < p_to
    GROUP BY p.channel, p.namespace
    ORDER BY 3 DESC, 4 DESC, 1
    LIMIT p_limit
$$;

-- user_id NULL: publications without a publishing user (the HTTP API).
CREATE OR REPLACE FUNCTION starling_top_publishers(p_from timestamptz, p_to timestamptz, p_limit bigint)
RETURNS TABLE (user_id text, messages bigint, bytes bigint)
LANGUAGE sql STABLE AS $$
    SELECT p.user_id, count(*), coalesce(sum(p.size), 0)::bigint
    FROM starling_publications p
    WHERE p.published_at >= p_from AND p.published_at < p_to
    GROUP BY p.user_id
    ORDER BY 2 DESC, 3 DESC, 1 NULLS LAST
    LIMIT p_limit
$$;

-- code NULL: a connect, or a disconnect without a close code.
CREATE OR REPLACE FUNCTION starling_connection_events_by_code(p_from timestamptz, p_to timestamptz)
RETURNS TABLE (kind text, code integer, events bigint)
LANGUAGE sql STABLE AS $$
    SELECT e.kind, e.code, count(*)
    FROM starling_connection_events e
    WHERE e.kind IN ('connect', 'disconnect') AND e.at >= p_from AND e.at < p_to
    GROUP BY e.kind, e.code
    ORDER BY 1, 3 DESC, 2 NULLS FIRST
$$;

-- Connections open across all nodes: the peak within each bucket and the count at its
-- end. Per node, the count is the running sum of connects (+1) and disconnects (-1) since
-- the node's last node_start (reset to 0 there: a node that crashed wrote no
-- disconnects, its next start clears them). Each node's changes are merged into one
-- running total in time order; a zero-change tick at every bucket start carries the
-- count into buckets without events. Events are read from each node's last node_start
-- at or before the window (or from the oldest retained day). The window is widened to
-- whole buckets. Exact when no event was dropped and every node wrote node_start; a
-- dropped event shifts that node's count until its next start.
CREATE OR REPLACE FUNCTION starling_peak_connections(p_from timestamptz, p_to timestamptz, p_bucket interval)
RETURNS TABLE (bucket timestamptz, peak bigint, at_end bigint)
LANGUAGE sql STABLE AS $$
    WITH w AS (
        SELECT date_bin(p_bucket, p_from, timestamptz '2000-01-01 00:00:00+00') AS w_from
    ), starts AS (
        SELECT e.node, max(e.at) AS since
        FROM starling_connection_events e, w
        WHERE e.kind = 'node_start' AND e.at <= w.w_from
        GROUP BY e.node
    ), ev AS (
        SELECT e.at, e.node,
               CASE e.kind WHEN 'node_start' THEN 0 WHEN 'connect' THEN 1 ELSE 2 END AS ord,
               CASE e.kind WHEN 'connect' THEN 1 WHEN 'disconnect' THEN -1 ELSE 0 END AS step,
               CASE e.kind WHEN 'node_start' THEN 1 ELSE 0 END AS is_start
        FROM starling_connection_events e
        LEFT JOIN starts s ON s.node = e.node
        WHERE e.kind IN ('node_start', 'connect', 'disconnect')
          AND e.at >= coalesce(s.since, '-infinity'::timestamptz) AND e.at < p_to
    ), runs AS (
        SELECT ev.*, sum(is_start) OVER (PARTITION BY node ORDER BY at, ord ROWS UNBOUNDED PRECEDING) AS run
        FROM ev
    ), open AS (
        SELECT at, node, ord,
               sum(step) OVER (PARTITION BY node, run ORDER BY at, ord ROWS UNBOUNDED PRECEDING) AS n
        FROM runs
    ), deltas AS (
        SELECT at, node, ord,
               n - coalesce(lag(n) OVER (PARTITION BY node ORDER BY at, ord), 0) AS delta
        FROM open
        UNION ALL
        SELECT t, NULL::text, -1, 0::bigint
        FROM w, generate_series(w.w_from, p_to - interval '1 microsecond', p_bucket) AS t
    ), totals AS (
        SELECT at, (sum(delta) OVER (o ROWS UNBOUNDED PRECEDING))::bigint AS total,
               row_number() OVER o AS seq
        FROM deltas
        WINDOW o AS (ORDER BY at, ord, node NULLS FIRST)
    )
    SELECT date_bin(p_bucket, t.at, timestamptz '2000-01-01 00:00:00+00'),
           max(t.total), (array_agg(t.total ORDER BY t.seq DESC))[1]
    FROM totals t, w
    WHERE t.at >= w.w_from
    GROUP BY 1
    ORDER BY 1
$$;

-- The same questions as views over fixed recent windows, for a psql session
-- (SELECT * FROM starling_traffic_per_minute). The API calls the functions with its own
-- window.
CREATE OR REPLACE VIEW starling_traffic_per_minute AS
    SELECT * FROM starling_traffic(now() - interval '1 hour', now(), interval '1 minute');
CREATE OR REPLACE VIEW starling_traffic_per_hour AS
    SELECT * FROM starling_traffic(now() - interval '24 hours', now(), interval '1 hour');
CREATE OR REPLACE VIEW starling_top_channels_last_hour AS
    SELECT * FROM starling_top_channels(now() - interval '1 hour', now(), 100);
CREATE OR REPLACE VIEW starling_top_publishers_last_hour AS
    SELECT * FROM starling_top_publishers(now() - interval '1 hour', now(), 100);
CREATE OR REPLACE VIEW starling_connection_events_by_code_last_day AS
    SELECT * FROM starling_connection_events_by_code(now() - interval '24 hours', now());
CREATE OR REPLACE VIEW starling_peak_connections_per_minute AS
    SELECT * FROM starling_peak_connections(now() - interval '1 hour', now(), interval '1 minute');
